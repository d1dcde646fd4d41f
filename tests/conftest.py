"""Every test that takes the ``backend`` fixture runs once per backend; a backend that cannot work
here is skipped with its reason shown (``pytest -rs``)."""

import contextlib

import numpy as np
import pytest

from batchnorm_lib import config

TOLERANCES = {  # (rtol, atol) of float32 results against the float64 reference
    "float32": (2e-5, 2e-5),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}


@contextlib.contextmanager
def active_backend(name):
    """Make ``name`` the active backend for the block (skipping the test, with the reason, when it
    cannot work here), then restore the previous one."""
    ok, reason = config.probe(name)
    if not ok:
        pytest.skip("backend %s unavailable: %s" % (name, reason))
    previous = config.get_backend()
    config.set_backend(name)
    try:
        yield name
    finally:
        config.set_backend(previous)


@pytest.fixture(params=config.BACKENDS)
def backend(request):
    with active_backend(request.param) as name:
        yield name


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


# Backends, and the CPU backend's two kernel paths separately: the ``where`` fixture
WHERE = ["cpu-native", "cpu-numpy", "cudasim", "cuda"]


def _where(param):
    from batchnorm_lib.kernels.norm import cpu as cpu_kernels
    from batchnorm_lib.kernels.norm import cpu_native

    backend, _, path = param.partition("-")
    if path == "native" and not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    with active_backend(backend):
        previous = cpu_kernels.active_path()
        if path:
            cpu_kernels.use(path, quiet=True)
        try:
            yield param
        finally:
            cpu_kernels.use(previous, quiet=True)


@pytest.fixture(params=WHERE)
def where(request):
    """A backend, and for ``cpu`` one of its two kernel paths."""
    yield from _where(request.param)


@pytest.fixture(params=WHERE[:2])
def cpu_where(request):
    """One of the CPU backend's two kernel paths."""
    yield from _where(request.param)


def to_gpu_misaligned(a, misaligned=True):
    """``a`` on the active backend; with ``misaligned``, starting one element past a 16-byte
    aligned allocation (the kernels' unpacked paths)."""
    from batchnorm_lib.backend import gpuarray

    if not misaligned:
        return gpuarray.to_gpu(a)
    whole = gpuarray.to_gpu(np.concatenate([np.zeros(1, a.dtype), a.ravel()]))
    return whole[1:].reshape(a.shape)


# The documentation's examples run as doctests (pyproject: --doctest-glob=*.md, testpaths tests and
# docs). A page whose examples import an optional dependency that is not installed is skipped with
# the extra that brings it, as the tests here skip their PyTorch and MPI cases; CI installs every
# extra, so there they all run. (A hook here, not a docs/conftest.py: the tests import this module
# as `conftest`, and a second conftest module would take that name.)
OPTIONAL_IMPORTS = {"torch": "torch", "mpi4py": "mpi"}  # module -> the extra that installs it


def pytest_collection_modifyitems(config, items):
    import importlib.util
    import re

    pattern = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.MULTILINE)
    for item in items:
        dtest = getattr(item, "dtest", None)
        if dtest is None:
            continue
        for example in dtest.examples:
            missing = [m for m in pattern.findall(example.source)
                       if m in OPTIONAL_IMPORTS and importlib.util.find_spec(m) is None]
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason="%s: its examples import %s (pip install -e \".[%s]\")"
                    % (dtest.name, missing[0], OPTIONAL_IMPORTS[missing[0]])))
                break
