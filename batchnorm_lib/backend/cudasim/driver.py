"""Simulated ``pycuda.driver``: one device, a context, host memory behind device pointers.

A device pointer is a real host address, so kernels compiled for the host dereference it directly.
Every allocation sits at the end of its own mapping with an inaccessible page after it (and one
before), so a kernel reading or writing past an array faults and the launch fails with "illegal
memory access" instead of silently touching a neighbour. Fresh allocations are filled with 0xff
bytes (NaN as float, -1 as integer) so reading memory nobody wrote shows up in results.

Only the part of pycuda's driver API that the CUDA backend uses is here, with pycuda's names and
call conventions; see docs/cudasim.md.
"""

import bisect
import ctypes
import mmap
import os
import platform
import threading
import time

import numpy as np

ALIGNMENT = 256  # cudaMalloc's alignment
PAGE = mmap.PAGESIZE
COMPUTE_CAPABILITY_ENV = "BATCHNORM_LIB_CUDASIM_CC"  # e.g. "7.0"; default 8.0


# -- errors: pycuda's hierarchy -----------------------------------------------------------------
class Error(Exception):
    pass


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class RuntimeError(Error):  # noqa: A001 - pycuda's name
    pass


class MemoryError(Error):  # noqa: A001 - pycuda's name
    pass


class CompileError(Error):
    def __init__(self, msg, command_line, stdout=None, stderr=None):
        self.msg = msg
        self.command_line = command_line
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self):
        result = self.msg
        if self.command_line:
            try:
                result += "\n[command: %s]" % " ".join(self.command_line)
            except TypeError:
                pass
        if self.stdout:
            result += "\n[stdout:\n%s]" % self.stdout
        if self.stderr:
            result += "\n[stderr:\n%s]" % self.stderr
        return result


# -- host memory with guard pages ---------------------------------------------------------------
_libc = None
_PROT_NONE, _PROT_RW = 0, 3


def _load_libc():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = libc
    return _libc


_MAP_FLAGS = 0x02 | 0x20  # MAP_PRIVATE | MAP_ANONYMOUS (Linux)


class _Registry:
    """Live allocations by address, to check the pointers handed to launches and copies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.starts = []
        self.sizes = {}

    def add(self, start, size):
        with self.lock:
            bisect.insort(self.starts, start)
            self.sizes[start] = size

    def remove(self, start):
        with self.lock:
            i = bisect.bisect_left(self.starts, start)
            if i < len(self.starts) and self.starts[i] == start:
                del self.starts[i]
            self.sizes.pop(start, None)

    def find(self, addr):
        """(start, size) of the live allocation holding addr (its end included), or None."""
        with self.lock:
            i = bisect.bisect_right(self.starts, addr) - 1
            if i < 0:
                return None
            start = self.starts[i]
            size = self.sizes[start]
            if addr <= start + size:
                return start, size
            return None

    @property
    def total(self):
        with self.lock:
            return sum(self.sizes.values())


registry = _Registry()


class _Block:
    """Raw simulated device memory: an address and what to unmap. No finalizer on purpose, so a
    pool holding blocks cannot see one freed by the garbage collector behind its back."""

    __slots__ = ("ptr", "size", "map", "maplen", "buf")

    def __init__(self, nbytes):
        nbytes = int(nbytes)
        if nbytes < 0:
            raise LogicError("cuMemAlloc failed: invalid argument (negative size %d)" % nbytes)
        rounded = max(ALIGNMENT, -(-nbytes // ALIGNMENT) * ALIGNMENT)
        data_pages = -(-rounded // PAGE)
        self.size = nbytes
        self.buf = None
        try:
            libc = _load_libc()
            maplen = (data_pages + 2) * PAGE
            base = libc.mmap(None, maplen, _PROT_RW, _MAP_FLAGS, -1, 0)
            if base in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap failed")
            libc.mprotect(base, PAGE, _PROT_NONE)
            libc.mprotect(base + (data_pages + 1) * PAGE, PAGE, _PROT_NONE)
            self.map, self.maplen = base, maplen
            self.ptr = base + PAGE + data_pages * PAGE - rounded
        except (OSError, AttributeError):  # no mmap through libc here: plain host memory
            self.map = None
            self.buf = np.empty(rounded + ALIGNMENT, np.uint8)
            addr = self.buf.ctypes.data
            self.ptr = -(-addr // ALIGNMENT) * ALIGNMENT
        ctypes.memset(self.ptr, 0xFF, rounded)
        registry.add(self.ptr, nbytes)
        instrument.mark_fresh(self.ptr)

    def release(self):
        if self.ptr is None:
            return
        registry.remove(self.ptr)
        instrument.mark_fresh(self.ptr)
        self.ptr = None
        if self.map is not None:
            _load_libc().munmap(self.map, self.maplen)
            self.map = None
        self.buf = None


class DeviceAllocation:
    """pycuda's ``DeviceAllocation``: ``int()`` is the device address; ``free()`` releases it, and
    so does garbage collection."""

    __slots__ = ("_block", "__weakref__")

    def __init__(self, nbytes):
        self._block = _Block(nbytes)

    def __int__(self):
        ptr = self._block.ptr
        if ptr is None:
            raise LogicError("the device allocation was freed")
        return ptr

    __index__ = __int__

    def free(self):
        self._block.release()

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass

    def __repr__(self):
        return "<DeviceAllocation 0x%x, %d bytes>" % (self._block.ptr or 0, self._block.size)


def mem_alloc(nbytes):
    return DeviceAllocation(nbytes)


def mem_get_info():
    total = Device(0).total_memory()
    return max(0, total - registry.total), total


def _address(dest):
    if isinstance(dest, (int, np.integer)):
        return int(dest)
    gpudata = getattr(dest, "gpudata", None)
    if gpudata is not None:
        return int(gpudata)
    return int(dest)


def _check_range(addr, nbytes, what):
    if nbytes == 0:
        return
    found = registry.find(addr)
    if found is None:
        raise LogicError("%s failed: invalid argument (0x%x is not in any live device allocation)"
                         % (what, addr))
    start, size = found
    if addr + nbytes > start + size:
        raise LogicError("%s failed: invalid argument (%d bytes at 0x%x run %d bytes past the end "
                         "of a %d-byte allocation)"
                         % (what, nbytes, addr, addr + nbytes - start - size, size))


def _host_buffer(ary, writable):
    if isinstance(ary, np.ndarray):
        # viewed as bytes without a buffer format, as pycuda does, so dtypes that the buffer
        # protocol cannot describe (ml_dtypes' bfloat16) copy too
        if not ary.flags.c_contiguous:
            raise ValueError("host buffer must be contiguous")
        if writable and not ary.flags.writeable:
            raise ValueError("host buffer is read-only")
        return ary.reshape(-1).view(np.uint8) if ary.nbytes else np.empty(0, np.uint8)
    mv = memoryview(ary)
    if not mv.c_contiguous:
        raise ValueError("host buffer must be contiguous")
    if writable and mv.readonly:
        raise ValueError("host buffer is read-only")
    return np.frombuffer(mv, dtype=np.uint8) if mv.nbytes else np.empty(0, np.uint8)


def memcpy_htod(dest, src):
    buf = _host_buffer(src, False)
    addr = _address(dest)
    _check_range(addr, buf.nbytes, "cuMemcpyHtoD")
    if buf.nbytes:
        ctypes.memmove(addr, buf.ctypes.data, buf.nbytes)
        instrument.mark_written(addr, buf.nbytes)


def memcpy_dtoh(dest, src):
    buf = _host_buffer(dest, True)
    addr = _address(src)
    _check_range(addr, buf.nbytes, "cuMemcpyDtoH")
    if buf.nbytes:
        ctypes.memmove(buf.ctypes.data, addr, buf.nbytes)


def memcpy_dtod(dest, src, size):
    size = int(size)
    d, s = _address(dest), _address(src)
    _check_range(d, size, "cuMemcpyDtoD")
    _check_range(s, size, "cuMemcpyDtoD")
    if size:
        ctypes.memmove(d, s, size)
        instrument.mark_written(d, size)


def memcpy_htod_async(dest, src, stream=None):
    memcpy_htod(dest, src)


def memcpy_dtoh_async(dest, src, stream=None):
    memcpy_dtoh(dest, src)


def memcpy_dtod_async(dest, src, size, stream=None):
    memcpy_dtod(dest, src, size)


def _memset(dest, value, count, width, what):
    addr = _address(dest)
    count = int(count)
    _check_range(addr, count * width, what)
    if count:
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[width]
        view = np.ctypeslib.as_array((ctypes.c_uint8 * (count * width)).from_address(addr))
        view.view(dtype)[:] = dtype(int(value) & ((1 << (8 * width)) - 1))
        instrument.mark_written(addr, count * width)


def memset_d8(dest, data, count):
    _memset(dest, data, count, 1, "cuMemsetD8")


def memset_d16(dest, data, count):
    _memset(dest, data, count, 2, "cuMemsetD16")


def memset_d32(dest, data, count):
    _memset(dest, data, count, 4, "cuMemsetD32")


# -- device and context -------------------------------------------------------------------------
_initialized = False


def init(flags=0):
    global _initialized
    _initialized = True


def _require_init():
    if not _initialized:
        raise LogicError("cuInit has not been called")


class device_attribute:  # noqa: N801 - pycuda's name
    MAX_THREADS_PER_BLOCK = 1
    MAX_BLOCK_DIM_X = 2
    MAX_BLOCK_DIM_Y = 3
    MAX_BLOCK_DIM_Z = 4
    MAX_GRID_DIM_X = 5
    MAX_GRID_DIM_Y = 6
    MAX_GRID_DIM_Z = 7
    MAX_SHARED_MEMORY_PER_BLOCK = 8
    TOTAL_CONSTANT_MEMORY = 9
    WARP_SIZE = 10
    MULTIPROCESSOR_COUNT = 16
    COMPUTE_CAPABILITY_MAJOR = 75
    COMPUTE_CAPABILITY_MINOR = 76


MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2 ** 31 - 1, 65535, 65535)
MAX_SHARED_PER_BLOCK = 48 * 1024


def compute_capability():
    text = os.environ.get(COMPUTE_CAPABILITY_ENV, "8.0")
    try:
        major, minor = (int(p) for p in text.split("."))
    except ValueError:
        raise LogicError("%s=%r: expected MAJOR.MINOR, e.g. 8.0" % (COMPUTE_CAPABILITY_ENV, text))
    return major, minor


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "the host CPU"


class Device:
    def __init__(self, ordinal):
        _require_init()
        if ordinal != 0:
            raise LogicError("cuDeviceGet failed: invalid device ordinal %r (the simulator has one "
                             "device)" % (ordinal,))
        self.ordinal = 0

    @staticmethod
    def count():
        _require_init()
        return 1

    def name(self):
        return "CUDA simulator on %s" % _cpu_model()

    def compute_capability(self):
        return compute_capability()

    def total_memory(self):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 16 << 30

    def pci_bus_id(self):
        return "0000:00:00.0"

    def get_attribute(self, attr):
        cc = compute_capability()
        values = {
            device_attribute.MAX_THREADS_PER_BLOCK: MAX_THREADS_PER_BLOCK,
            device_attribute.MAX_BLOCK_DIM_X: MAX_BLOCK_DIM[0],
            device_attribute.MAX_BLOCK_DIM_Y: MAX_BLOCK_DIM[1],
            device_attribute.MAX_BLOCK_DIM_Z: MAX_BLOCK_DIM[2],
            device_attribute.MAX_GRID_DIM_X: MAX_GRID_DIM[0],
            device_attribute.MAX_GRID_DIM_Y: MAX_GRID_DIM[1],
            device_attribute.MAX_GRID_DIM_Z: MAX_GRID_DIM[2],
            device_attribute.MAX_SHARED_MEMORY_PER_BLOCK: MAX_SHARED_PER_BLOCK,
            device_attribute.TOTAL_CONSTANT_MEMORY: 64 * 1024,
            device_attribute.WARP_SIZE: 32,
            device_attribute.MULTIPROCESSOR_COUNT: 1,
            device_attribute.COMPUTE_CAPABILITY_MAJOR: cc[0],
            device_attribute.COMPUTE_CAPABILITY_MINOR: cc[1],
        }
        try:
            return values[attr]
        except KeyError:
            raise LogicError("cuDeviceGetAttribute: attribute %r is not simulated" % (attr,))

    def retain_primary_context(self):
        return Context(self)

    def make_context(self, flags=0):
        ctx = Context(self)
        ctx.push()
        return ctx

    def __eq__(self, other):
        return isinstance(other, Device)

    def __hash__(self):
        return 0


_context_stack = []


class Context:
    def __init__(self, device):
        self._device = device

    def push(self):
        _context_stack.append(self)

    @staticmethod
    def pop():
        if not _context_stack:
            raise LogicError("cuCtxPopCurrent failed: no context is current")
        _context_stack.pop()

    def detach(self):
        if self in _context_stack:
            _context_stack.remove(self)

    @staticmethod
    def synchronize():
        """Launches run to completion before they return: nothing is ever pending."""

    @staticmethod
    def get_current():
        return _context_stack[-1] if _context_stack else None

    @staticmethod
    def get_device():
        return Device(0)


class Stream:
    def __init__(self, flags=0):
        pass

    def synchronize(self):
        pass

    def is_done(self):
        return True


class Event:
    def __init__(self, flags=0):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()
        return self

    def synchronize(self):
        return self

    def query(self):
        return True

    def time_since(self, other):
        return (self._t - other._t) * 1e3

    def time_till(self, other):
        return (other._t - self._t) * 1e3


# which device bytes were written, for the sanitizer's uninitialized-load check
from batchnorm_lib.backend.cudasim import instrument  # noqa: E402
