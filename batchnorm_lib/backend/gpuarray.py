"""PuzzleLib-style gpuarray shim: ``from batchnorm_lib.backend import gpuarray``.

Every call forwards to the active backend (see :mod:`batchnorm_lib.config`), so the same script runs
on the GPU and on the CPU. ``gpuarray.GPUArray`` is the active backend's array class.
"""

import numpy as np

from batchnorm_lib import config


def to_gpu(ary):
    """Copy a numpy array (or anything ``np.asarray`` takes) into a new device array."""
    return config.backend_module().to_gpu(ary)


def empty(shape, dtype=np.float32):
    return config.backend_module().empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    return config.backend_module().zeros(shape, dtype)


def is_array(obj):
    """True when ``obj`` is an array of the active backend."""
    return isinstance(obj, config.backend_module().GPUArray)


def __getattr__(name):
    if name == "GPUArray":
        return config.backend_module().GPUArray
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
