"""docs/porting.md's PuzzleLib-style script runs unchanged on every backend."""

import doctest
import os

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "porting.md")


def test_porting_script_runs_unchanged(backend):
    failed, attempted = doctest.testfile(DOC, module_relative=False, verbose=False,
                                         optionflags=doctest.ELLIPSIS, report=True)
    assert attempted > 20 and failed == 0
