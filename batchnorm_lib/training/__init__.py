"""Training helpers for scripts and the ``train`` command: data, the loop, the curves."""

from batchnorm_lib.training.data import Dataset, load_digits
from batchnorm_lib.training.loop import EpochStats, RunResult, build_mlp, evaluate, train_run

__all__ = ["Dataset", "load_digits", "build_mlp", "evaluate", "train_run", "EpochStats",
           "RunResult"]
