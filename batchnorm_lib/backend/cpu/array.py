"""A host array that behaves like pycuda's ``GPUArray``.

It owns its memory: ``to_gpu`` and ``set`` copy in, ``get`` copies out, so the caller's ndarray
is never silently shared. ``reshape``/``ravel``, basic indexing (``a[i]``, ``a[i:j:k]``, ``...``,
``None``) and ``transpose``/``T`` return views of the same buffer, as on the GPU; arithmetic
follows pycuda's rules (:mod:`batchnorm_lib.backend.arraymath`).
"""

import ctypes

import numpy as np

from batchnorm_lib.backend.arraymath import (ArrayMath, check_basic_index, check_computable,
                                             check_contiguous)
from batchnorm_lib.backend.cpu.pool import POOL


def _shape_tuple(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(map(int, shape))


class GPUArray(ArrayMath):
    # _ary: the backing ndarray, never rebound (views are new arrays); _addr: kernel_address's
    # answer, worked out on first use (numpy's ndarray.ctypes costs microseconds a call)
    __slots__ = ("_ary", "_addr", "__weakref__")
    backend_name = "cpu"
    allocator = None

    def __init__(self, shape, dtype=np.float32, allocator=None, _ary=None):
        if _ary is None:
            _ary = POOL.empty(_shape_tuple(shape), dtype)
        self._ary = _ary
        self._addr = None

    def _new(self, shape, dtype):
        return GPUArray(shape, dtype)

    # -- pycuda's surface ------------------------------------------------------------------
    @property
    def shape(self):
        return self._ary.shape

    @property
    def dtype(self):
        return self._ary.dtype

    @property
    def size(self):
        return self._ary.size

    @property
    def nbytes(self):
        return self._ary.nbytes

    @property
    def ndim(self):
        return self._ary.ndim

    @property
    def itemsize(self):
        return self._ary.itemsize

    @property
    def strides(self):
        return self._ary.strides

    @property
    def flags(self):
        """numpy's flags of the buffer (``c_contiguous``, ``f_contiguous``, ``forc``), as pycuda's."""
        return self._ary.flags

    @property
    def ptr(self):
        """Address of the first element (pycuda's ``ptr``)."""
        return self._ary.ctypes.data

    def get(self, ary=None, pagelocked=False, async_=False, stream=None):
        """Copy to a new host ndarray (or into ``ary``) and return it."""
        if ary is None:
            return self._ary.copy()
        if ary.shape != self.shape or ary.dtype != self.dtype:
            raise ValueError("get: destination is %s %s, array is %s %s"
                             % (ary.shape, ary.dtype, self.shape, self.dtype))
        np.copyto(ary, self._ary)
        return ary

    def set(self, ary, async_=False, stream=None):
        """Copy a host array of the same size and dtype into this array (a view too)."""
        ary = np.asarray(ary)
        if ary.size != self.size or ary.dtype != self.dtype:
            raise ValueError("set: source is %s %s, array is %s %s"
                             % (ary.shape, ary.dtype, self.shape, self.dtype))
        np.copyto(self._ary, ary.reshape(self.shape))

    def fill(self, value, stream=None):
        check_contiguous(self)
        self._ary.fill(value)
        return self

    def copy(self):
        """A contiguous copy (of a view too)."""
        out = GPUArray(self.shape, self.dtype)
        np.copyto(out._ary, self._ary)
        return out

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise ValueError("only C order is supported")
        check_contiguous(self)
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        if not self.flags.c_contiguous:
            raise RuntimeError("only C-contiguous arrays may be reshaped in C order")
        return GPUArray(None, _ary=self._ary.reshape(shape))

    def ravel(self):
        return self.reshape(-1)

    def view(self, dtype=None):
        return GPUArray(None, _ary=self._ary.view(self.dtype if dtype is None else dtype))

    def astype(self, dtype, stream=None):
        check_contiguous(self)
        dtype = np.dtype(dtype)
        if dtype != self.dtype:
            for d in (self.dtype, dtype):
                if d != np.float16:
                    check_computable(d, "astype")
        out = GPUArray(self.shape, dtype)
        with np.errstate(all="ignore"):
            np.copyto(out._ary, self._ary, casting="unsafe")
        return out

    def transpose(self, axes=None):
        return GPUArray(None, _ary=self._ary.transpose(axes))

    def __getitem__(self, index):
        check_basic_index(index)
        return GPUArray(None, _ary=self._ary[index])

    def __setitem__(self, index, value):
        check_basic_index(index)
        target = GPUArray(None, _ary=self._ary[index])
        if np.isscalar(value):
            target.fill(value)  # pycuda fills: a strided target raises RuntimeError there too
            return
        src = value._ary if isinstance(value, GPUArray) else np.asarray(value)
        if src.shape != target.shape or src.dtype != target.dtype:
            raise ValueError("setitem: source is %s %s, target is %s %s"
                             % (src.shape, src.dtype, target.shape, target.dtype))
        target._ary[...] = src

    def __len__(self):
        return len(self._ary)

    def __str__(self):
        return str(self._ary)

    def __repr__(self):
        return repr(self._ary)


def as_ndarray(a):
    """The backing ndarray of a CPU array (no copy); for kernels only."""
    return a._ary


def kernel_address(a):
    """The address of a CPU array's first element if compiled kernels can take the array as a
    dense float32 buffer (C-contiguous, float32, not empty), else 0; for kernels only. Cached on
    the array: an array keeps its buffer, dtype and shape for life."""
    addr = a._addr
    if addr is None:
        ary = a._ary
        addr = 0
        if ary.dtype == np.float32 and ary.flags.c_contiguous and ary.size > 0:
            try:  # a third of ndarray.ctypes's time
                addr = ctypes.addressof(ctypes.c_char.from_buffer(ary))
            except (TypeError, ValueError):  # a read-only buffer
                addr = ary.ctypes.data
        a._addr = addr
    return addr


def to_gpu(ary, allocator=None):
    ary = np.asarray(ary)
    out = GPUArray(ary.shape, ary.dtype)
    np.copyto(out._ary, ary)
    return out


def empty(shape, dtype=np.float32, allocator=None, order="C"):
    if order != "C":
        raise ValueError("only C order is supported")
    return GPUArray(shape, dtype)


def zeros(shape, dtype=np.float32, allocator=None, order="C"):
    return empty(shape, dtype, allocator, order).fill(0)
