"""CPU backend: a numpy-backed array with pycuda's GPUArray surface."""

import numpy as np

from batchnorm_lib.backend.cpu.array import (GPUArray, as_ndarray, empty, kernel_address, to_gpu,
                                             zeros)

NAME = "cpu"

__all__ = ["NAME", "GPUArray", "as_ndarray", "empty", "kernel_address", "to_gpu", "zeros", "probe",
           "device_name", "supported_dtypes"]


def probe():
    return True, ""


def device_name():
    import platform

    return "CPU (%s, %d cores)" % (platform.machine() or "unknown", _cpu_count())


def _cpu_count():
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def supported_dtypes():
    return (np.dtype(np.float32),)
