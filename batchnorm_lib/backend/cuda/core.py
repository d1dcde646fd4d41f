"""The CUDA backend's logic, written against a pycuda-like namespace.

:class:`CudaBackend` takes ``api``, a namespace with ``driver``, ``compiler``, ``gpuarray`` and
``tools`` attributes behaving like the pycuda modules of those names, and uses only this surface of
them: ``driver.init/Device/Context.synchronize/Error``, ``Device(i).name/compute_capability/
total_memory/retain_primary_context``, ``compiler.SourceModule(...)/CompileError``,
``module.get_function``, ``function(*numpy_scalars, block=, grid=, shared=0)``,
``gpuarray.GPUArray/to_gpu/empty/zeros(..., allocator=)`` and ``tools.DeviceMemoryPool``.
``batchnorm_lib.backend.cuda`` builds one from real pycuda; the ``cudasim`` backend builds one from
its simulator, so the same code runs on both.

Every backend package whose kernels are :mod:`batchnorm_lib.kernels.cuda` exports ``runtime()``,
returning its (single, lazily built) :class:`CudaBackend`.
"""

import atexit
import os
import re
import threading
import time

import numpy as np

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "kernels")
SOURCES = ("norm/batchnorm.cu",)  # relative to KERNEL_DIR; each compiles with its folder included
BLOCK = 256  # threads per block of every kernel (bn::kBlock in bn_common.cuh)
# -fmad=false: nvcc contracts nothing, so every a * b + c rounds twice on the GPU as on the host
# build of cudasim; kernels write fmaf where a fused multiply-add is meant (docs/cuda.md).
# scripts/check_kernels.sh compiles with the same options.
NVCC_OPTIONS = ("-std=c++17", "-fmad=false")

DEVICE_ENV = "BATCHNORM_LIB_DEVICE"  # device ordinal, default 0
SYNC_ENV = "BATCHNORM_LIB_CUDA_SYNC"  # "1": synchronize after every launch (debugging)

_ENTRY = re.compile(r'^extern "C" __global__ void (\w+)\(', re.M)


class KernelCompileError(RuntimeError):
    """nvcc refused a kernel source; the message carries nvcc's log."""


def bfloat16_dtype():
    """numpy's bfloat16 dtype from ``ml_dtypes`` when that package is installed, else None."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


class CudaBackend:
    def __init__(self, api, name, device_index=None):
        self.api = api
        self.name = name
        if device_index is None:
            device_index = int(os.environ.get(DEVICE_ENV, "0"))
        self.device_index = device_index
        self.sync_each_launch = os.environ.get(SYNC_ENV, "") not in ("", "0")
        self._device = None
        self._context = None
        self._pool = None
        self._functions = None
        self._extra_functions = {}
        self._compile_note = None
        self._dtypes = None
        self._lock = threading.RLock()

    # -- device and context ------------------------------------------------------------------------
    def start(self):
        """Initialise the driver and make the chosen device's primary context current (once)."""
        with self._lock:
            if self._context is not None:
                return
            drv = self.api.driver
            drv.init()
            count = drv.Device.count()
            if count == 0:
                raise RuntimeError("the CUDA driver reports no device")
            if not 0 <= self.device_index < count:
                raise RuntimeError("%s=%d, but there are %d CUDA devices"
                                   % (DEVICE_ENV, self.device_index, count))
            device = drv.Device(self.device_index)
            context = device.retain_primary_context()
            context.push()
            self._device, self._context = device, context
            self._pool = self.api.tools.DeviceMemoryPool()
            atexit.register(self._finish)

    def _finish(self):
        pool, context = self._pool, self._context
        self._context = None
        self._functions = None
        for method in ("stop_holding", "free_held"):  # pycuda's pool releases memory it keeps
            if hasattr(pool, method):
                try:
                    getattr(pool, method)()
                except Exception:
                    pass
        if context is not None:
            try:
                context.pop()
            except Exception:
                pass

    @property
    def device(self):
        self.start()
        return self._device

    def device_name(self):
        dev = self.device
        major, minor = dev.compute_capability()
        return "%s (compute capability %d.%d, %.1f GiB, device %d)" % (
            dev.name(), major, minor, dev.total_memory() / 2.0 ** 30, self.device_index)

    def arch(self):
        return "sm_%d%d" % self.device.compute_capability()

    def supported_dtypes(self):
        if self._dtypes is None:  # asked on every launch: work it out once
            dtypes = [np.dtype(np.float32), np.dtype(np.float16)]
            bf16 = bfloat16_dtype()
            if bf16 is not None and self.device.compute_capability() >= (8, 0):
                dtypes.append(bf16)
            self._dtypes = tuple(dtypes)
        return self._dtypes

    def synchronize(self):
        self.start()
        self.api.driver.Context.synchronize()

    def free_held(self):
        """Give the memory pool's idle blocks back to the driver (e.g. before another library
        allocates on the same device)."""
        if self._pool is not None:
            self._pool.free_held()

    # -- arrays ------------------------------------------------------------------------------------
    @property
    def allocator(self):
        self.start()
        return self._pool.allocate

    def to_gpu(self, ary):
        host = np.ascontiguousarray(ary)
        return self.api.gpuarray.to_gpu(host, allocator=self.allocator)

    def empty(self, shape, dtype=np.float32):
        return self.api.gpuarray.empty(_shape(shape), np.dtype(dtype), allocator=self.allocator)

    def zeros(self, shape, dtype=np.float32):
        return self.api.gpuarray.zeros(_shape(shape), np.dtype(dtype), allocator=self.allocator)

    # -- kernels -----------------------------------------------------------------------------------
    def compile(self):
        """Compile the kernel sources for this device (once per process) and look up every entry."""
        with self._lock:
            if self._functions is not None:
                return self._functions
            self.start()
            arch = self.arch()
            cache_dir = _cache_dir(self.api)
            before = _listing(cache_dir)
            functions = {}
            start = time.perf_counter()
            for name in SOURCES:
                path = os.path.join(KERNEL_DIR, name)
                with open(path) as f:
                    source = f.read()
                module = self.source_module(name, source, arch, os.path.dirname(path))
                for entry in _ENTRY.findall(source):
                    functions[entry] = module.get_function(entry)
            seconds = time.perf_counter() - start
            self._compile_note = "%d kernels from %s for %s in %.2f s; %s" % (
                len(functions), ", ".join(SOURCES), arch, seconds,
                _cache_note(cache_dir, before, _listing(cache_dir)))
            self._functions = functions
            return functions

    def functions_of(self, filename):
        """Entries of ``kernels/<filename>`` (a source outside the batch-norm set, e.g.
        ``dense/dense.cu``),
        compiled once per process for this device."""
        with self._lock:
            if filename not in self._extra_functions:
                self.start()
                path = os.path.join(KERNEL_DIR, filename)
                with open(path) as f:
                    source = f.read()
                module = self.source_module(filename, source, self.arch(), os.path.dirname(path))
                self._extra_functions[filename] = {
                    entry: module.get_function(entry) for entry in _ENTRY.findall(source)}
            return self._extra_functions[filename]

    def source_module(self, name, source, arch, include_dir=KERNEL_DIR):
        compiler = self.api.compiler
        compile_error = getattr(compiler, "CompileError", None) or self.api.driver.CompileError
        try:
            return compiler.SourceModule(source, options=list(NVCC_OPTIONS), no_extern_c=True,
                                         arch=arch, include_dirs=[include_dir])
        except compile_error as e:
            log = "\n".join(str(part) for part in (getattr(e, "stderr", None),
                                                    getattr(e, "stdout", None)) if part)
            raise KernelCompileError("compiling %s for %s failed: %s\n%s"
                                     % (name, arch, e, log or "(nvcc printed nothing)")) from e

    def launch(self, name, grid, args, tiles=None):
        """Run kernel ``name`` on ``grid`` blocks of BLOCK threads; ``args`` are numpy scalars.
        ``tiles``: for a grid of resident blocks walking a larger piece of work, how many blocks'
        worth of it (the performance model's waves; the launch itself does not need it)."""
        function = (self._functions or self.compile())[name]
        function(*args, block=(BLOCK, 1, 1), grid=tuple(grid) + (1,) * (3 - len(grid)), shared=0)
        if self.sync_each_launch:
            self.api.driver.Context.synchronize()

    def kernel_report(self):
        try:
            self.compile()
        except Exception as e:  # info prints why rather than failing
            return "CUDA kernels (%s backend): not compiled: %s" % (self.name, e)
        return "CUDA kernels (%s backend): %s" % (self.name, self._compile_note)


def backend_functions(runtime):
    """The functions a backend package exports (to_gpu, empty, zeros, device_name,
    supported_dtypes, kernel_report), each forwarding to the CudaBackend that ``runtime()``
    returns; shared by the cuda and cudasim packages."""
    def to_gpu(ary):
        return runtime().to_gpu(ary)

    def empty(shape, dtype=None):
        return runtime().empty(shape, dtype or "float32")

    def zeros(shape, dtype=None):
        return runtime().zeros(shape, dtype or "float32")

    def device_name():
        return runtime().device_name()

    def supported_dtypes():
        return runtime().supported_dtypes()

    def kernel_report():
        return runtime().kernel_report()

    return to_gpu, empty, zeros, device_name, supported_dtypes, kernel_report


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _cache_dir(api):
    """Where the compiler caches binaries, if the api says (``api.compile_cache_dir()``)."""
    find = getattr(api, "compile_cache_dir", None)
    return find() if find is not None else None


def _listing(path):
    if not path or not os.path.isdir(path):
        return None
    return set(os.listdir(path))


def _cache_note(path, before, after):
    if not path:
        return "compile cache not in use"
    if after is None:
        return "compile cache %s not present" % path
    if after - (before or set()):
        return "compile cache miss (compiled; result stored in %s)" % path
    return "compile cache hit (%s)" % path
