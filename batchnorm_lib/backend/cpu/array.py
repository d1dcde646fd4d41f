"""A host array that behaves like pycuda's ``GPUArray``.

It owns its memory: ``to_gpu`` and ``set`` copy in, ``get`` copies out, so the caller's ndarray
is never silently shared. ``reshape``/``ravel`` return views of the same buffer, as on the GPU.
"""

import numpy as np

from batchnorm_lib.backend.cpu.pool import POOL


def _shape_tuple(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


class GPUArray:
    __slots__ = ("_ary", "__weakref__")

    def __init__(self, shape, dtype=np.float32, _ary=None):
        if _ary is None:
            _ary = POOL.empty(_shape_tuple(shape), dtype)
        self._ary = _ary

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
    def strides(self):
        return self._ary.strides

    @property
    def flags(self):
        """numpy's flags of the buffer (``c_contiguous``, ``f_contiguous``), as pycuda's."""
        return self._ary.flags

    @property
    def ptr(self):
        """Address of the first element (pycuda's ``ptr``)."""
        return self._ary.ctypes.data

    def get(self, ary=None):
        """Copy to a new host ndarray (or into ``ary``) and return it."""
        if ary is None:
            return self._ary.copy()
        if ary.shape != self.shape or ary.dtype != self.dtype:
            raise ValueError("get: destination is %s %s, array is %s %s"
                             % (ary.shape, ary.dtype, self.shape, self.dtype))
        np.copyto(ary, self._ary)
        return ary

    def set(self, ary):
        """Copy a host array of the same shape and dtype into this array."""
        ary = np.asarray(ary)
        if ary.size != self.size or ary.dtype != self.dtype:
            raise ValueError("set: source is %s %s, array is %s %s"
                             % (ary.shape, ary.dtype, self.shape, self.dtype))
        np.copyto(self._ary, ary.reshape(self.shape))

    def fill(self, value):
        self._ary.fill(value)
        return self

    def copy(self):
        out = GPUArray(self.shape, self.dtype)
        np.copyto(out._ary, self._ary)
        return out

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise ValueError("only C order is supported")
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        return GPUArray(None, _ary=self._ary.reshape(shape))

    def ravel(self):
        return GPUArray(None, _ary=self._ary.reshape(-1))

    def astype(self, dtype):
        return GPUArray(None, _ary=self._ary.astype(dtype))

    def __len__(self):
        return len(self._ary)

    def __str__(self):
        return str(self._ary)

    def __repr__(self):
        return repr(self._ary)


def as_ndarray(a):
    """The backing ndarray of a CPU array (no copy); for kernels only."""
    return a._ary


def to_gpu(ary):
    ary = np.asarray(ary)
    out = GPUArray(ary.shape, ary.dtype)
    np.copyto(out._ary, ary)
    return out


def empty(shape, dtype=np.float32):
    return GPUArray(_shape_tuple(shape), dtype)


def zeros(shape, dtype=np.float32):
    return GPUArray(_shape_tuple(shape), dtype).fill(0)
