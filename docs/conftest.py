"""The documentation's examples run as doctests (pytest's ``--doctest-glob=*.md``). A page whose
examples import an optional dependency that is not installed is skipped with the extra that brings
it (``pytest -rs`` shows the reason), as the tests in ``tests/`` skip their PyTorch and MPI cases;
CI installs every extra, so there they all run."""

import importlib.util
import re

import pytest

# optional module -> the extra that installs it
OPTIONAL = {"torch": "torch", "mpi4py": "mpi"}
IMPORT = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.MULTILINE)


def pytest_runtest_setup(item):
    dtest = getattr(item, "dtest", None)
    if dtest is None:
        return
    for example in dtest.examples:
        for module in IMPORT.findall(example.source):
            if module in OPTIONAL and importlib.util.find_spec(module) is None:
                pytest.skip("%s: its examples import %s (pip install -e \".[%s]\")"
                            % (dtest.name, module, OPTIONAL[module]))
