"""cudasim backend: the CUDA backend's own code and .cu kernels, run on the CPU.

A simulated pycuda (``driver``, ``compiler``, ``gpuarray``, ``tools`` in this package) stands in
for the real one, and :class:`~batchnorm_lib.backend.cuda.core.CudaBackend` runs over it
unchanged: launch configuration, argument packing and the two-phase reductions are the CUDA
backend's, the kernels are the same sources compiled with the host C++ compiler against
``cudasim_runtime.h``. Select it with ``BATCHNORM_LIB_BACKEND=cudasim``; see docs/cudasim.md.
"""

import types

from batchnorm_lib.backend.cuda.core import backend_functions
from batchnorm_lib.backend.cudasim import compiler, driver, gpuarray, tools
from batchnorm_lib.backend.cudasim.instrument import profile

NAME = "cudasim"

__all__ = ["NAME", "GPUArray", "to_gpu", "empty", "zeros", "probe", "device_name",
           "supported_dtypes", "kernel_report", "runtime", "api", "profile"]

GPUArray = gpuarray.GPUArray

api = types.SimpleNamespace(driver=driver, compiler=compiler, gpuarray=gpuarray, tools=tools,
                            compile_cache_dir=compiler.cache_dir)

_runtime = None
_probe_result = None

_PROBE_SOURCE = r"""
extern "C" __global__ void cudasim_probe(int* out)
{
    __shared__ int s[64];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    int v = s[63 - threadIdx.x];
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
"""


def runtime():
    """The process's CudaBackend over the simulated pycuda (built on first use)."""
    global _runtime
    if _runtime is None:
        from batchnorm_lib.backend.cuda.core import CudaBackend

        _runtime = CudaBackend(api, NAME)
    return _runtime


def _self_test():
    import numpy as np

    driver.init()
    mod = compiler.SourceModule(_PROBE_SOURCE, no_extern_c=True)
    out = gpuarray.zeros(64, np.int32)
    mod.get_function("cudasim_probe")(out.gpudata, block=(64, 1, 1), grid=(1, 1))
    v = 63 - np.arange(64)
    expected = v + v[np.arange(64) ^ 1]
    if not np.array_equal(out.get(), expected):
        raise RuntimeError("the simulator's self-test kernel computed a wrong result")


def probe():
    """(ok, reason): a host C++ compiler and the CUDA headers are present and a tiny kernel with a
    barrier and a shuffle builds and runs."""
    global _probe_result
    if _probe_result is None:
        if compiler.find_cxx() is None:
            _probe_result = (False, "no host C++ compiler (g++, c++ or clang++; or set CXX)")
        elif compiler.find_cuda_include() is None:
            _probe_result = (False, "the CUDA toolkit headers (cuda_fp16.h) were not found; set "
                                    "CUDA_HOME")
        else:
            try:
                _self_test()
                runtime().start()
                _probe_result = (True, "")
            except Exception as e:  # report, do not raise: probe says why
                _probe_result = (False, "the simulator does not work here (%s: %s)"
                                 % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
    return _probe_result


to_gpu, empty, zeros, device_name, supported_dtypes, kernel_report = backend_functions(runtime)
