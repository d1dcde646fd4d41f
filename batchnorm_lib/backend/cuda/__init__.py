"""CUDA backend: pycuda's primary context of the chosen device (``BATCHNORM_LIB_DEVICE``, default
0), a pycuda ``DeviceMemoryPool`` as the allocator, and pycuda ``GPUArray`` arrays, so users' pycuda
arrays and ours mix freely. pycuda is imported only on first use: importing this package never fails
without it, and ``probe()`` says why the backend cannot work.
"""

import os
import types

from batchnorm_lib.backend.cuda.core import CudaBackend, KernelCompileError, backend_functions

NAME = "cuda"

__all__ = ["NAME", "GPUArray", "to_gpu", "empty", "zeros", "probe", "device_name",
           "supported_dtypes", "kernel_report", "runtime", "KernelCompileError"]

_runtime = None


def _pycuda_cache_dir():
    """The directory pycuda's compiler caches binaries in (its own rules), or None when disabled."""
    if "PYCUDA_DISABLE_CACHE" in os.environ:
        return None
    if "PYCUDA_CACHE_DIR" in os.environ:
        return os.environ["PYCUDA_CACHE_DIR"]
    try:
        import platformdirs
    except ImportError:
        return None
    return os.path.join(platformdirs.user_cache_dir("pycuda", "pycuda"), "compiler-cache-v1")


def _pycuda_api():
    import pycuda.compiler
    import pycuda.driver
    import pycuda.gpuarray
    import pycuda.tools

    return types.SimpleNamespace(driver=pycuda.driver, compiler=pycuda.compiler,
                                 gpuarray=pycuda.gpuarray, tools=pycuda.tools,
                                 compile_cache_dir=_pycuda_cache_dir)


def runtime():
    """The process's CudaBackend on real pycuda (built on first use; raises ImportError without
    pycuda)."""
    global _runtime
    if _runtime is None:
        _runtime = CudaBackend(_pycuda_api(), NAME)
    return _runtime


def probe():
    try:
        rt = runtime()
    except ImportError as e:
        return False, "pycuda is not importable (%s)" % e
    except OSError as e:  # a missing libcuda can surface as OSError
        return False, "pycuda cannot load the CUDA driver (%s)" % e
    try:
        rt.start()
    except Exception as e:
        return False, "no usable CUDA device (%s: %s)" % (type(e).__name__, e)
    return True, ""


def __getattr__(name):
    if name == "GPUArray":
        import pycuda.gpuarray

        return pycuda.gpuarray.GPUArray
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


to_gpu, empty, zeros, device_name, supported_dtypes, kernel_report = backend_functions(runtime)
