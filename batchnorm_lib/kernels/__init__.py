"""The arithmetic of every module, one package per operation.

Each operation package holds its CUDA source, its CPU source and its dispatch side by side:

``norm/``
    the normalization engine: ``batchnorm.cu`` (+ ``bn_common.cuh``, the Welford and reduction
    helpers) for CUDA, ``bn_cpu.c`` (C/OpenMP) and ``cpu_numpy.py`` for the CPU, ``cuda.py`` and
    ``cpu.py`` launching them; the contract is in :mod:`batchnorm_lib.kernels.norm`. Statistics
    per contiguous row (LayerNorm, InstanceNorm2D, GroupNorm): ``per_row.cu``, ``per_row_cpu.c``;
    rows x channels data ((N, C) and channels last): ``rows_channels.cu``, ``rows_channels_cpu.c``;
    the single-read training kernels for tensors that fit on chip: ``persistent.cu``.
``dense/``
    Linear, activations, costs and optimizer updates: ``dense.cu``, ``cuda.py``, ``cpu.py``; the
    contract is in :mod:`batchnorm_lib.kernels.dense`.
``elementwise/``
    the gpuarray shim's arithmetic, comparisons and reductions: ``elementwise.cu`` (run on the
    ``cudasim`` arrays), ``cpu.py`` (numpy); the contract is in
    :mod:`batchnorm_lib.kernels.elementwise`.

``<operation>.ops()`` returns the implementation module for the active backend; modules call only
that, never a backend directly.
"""

import importlib
import sys

from batchnorm_lib import config

# The implementation module, inside an operation package, that serves each backend.
_IMPL_FOR_BACKEND = {"cpu": "cpu", "cuda": "cuda", "cudasim": "cuda"}


def implementation(operation, backend=None):
    """The implementation module of ``operation`` (a package name under ``kernels/``) for
    ``backend`` (default: the active one)."""
    name = "batchnorm_lib.kernels.%s.%s" % (operation,
                                            _IMPL_FOR_BACKEND[backend or config.get_backend()])
    return sys.modules.get(name) or importlib.import_module(name)  # (every kernel call asks)


from batchnorm_lib.kernels import dense, norm  # noqa: E402  (the operation packages)
