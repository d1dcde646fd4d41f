"""Simulated ``pycuda.gpuarray``: ``GPUArray`` over simulated device memory.

The data lives behind ``gpudata`` (a :class:`driver.DeviceAllocation` or a pool's allocation);
``get``/``set`` copy through the driver's memcpy, as pycuda's do. Arithmetic operators are not
simulated (the backends launch their own kernels).
"""

import numpy as np

from batchnorm_lib.backend.cudasim import driver


def _shape_tuple(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _c_strides(shape, itemsize):
    strides, acc = [], itemsize
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


class GPUArray:
    def __init__(self, shape, dtype, allocator=None, base=None, gpudata=None, strides=None,
                 order="C"):
        if order != "C":
            raise ValueError("the simulator's GPUArray is C-ordered only")
        self.shape = _shape_tuple(shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self.nbytes = self.size * self.dtype.itemsize
        self.mem_size = self.size
        c_strides = _c_strides(self.shape, self.dtype.itemsize)
        if strides is not None and tuple(strides) != c_strides and self.size > 1:
            raise ValueError("the simulator's GPUArray is contiguous only")
        self.strides = c_strides
        self.allocator = allocator if allocator is not None else driver.mem_alloc
        self.base = base
        if gpudata is None:
            self.gpudata = self.allocator(self.nbytes) if self.size else None
        else:
            self.gpudata = gpudata

    # -- properties ------------------------------------------------------------------------------
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def ptr(self):
        if self.gpudata is None:
            raise AttributeError("a zero-size GPUArray has no device pointer (gpudata is None)")
        return int(self.gpudata)

    @property
    def flags(self):
        class _Flags:
            c_contiguous = True
            f_contiguous = self.ndim <= 1
            forc = True
        return _Flags()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    # -- transfers -------------------------------------------------------------------------------
    def set(self, ary, async_=False, stream=None):
        ary = np.asarray(ary)
        if ary.size != self.size:
            raise ValueError("ary and self must be the same size")
        if ary.dtype != self.dtype:
            raise ValueError("ary and self must have the same dtype")
        ary = np.ascontiguousarray(ary)
        if self.size:
            driver.memcpy_htod(self.gpudata, ary)

    def set_async(self, ary, stream=None):
        return self.set(ary)

    def get(self, ary=None, pagelocked=False, async_=False, stream=None):
        if ary is None:
            ary = np.empty(self.shape, self.dtype)
        else:
            if ary.size != self.size:
                raise ValueError("self and ary must be the same size")
            if ary.shape != self.shape:
                ary = ary.reshape(self.shape)
            if ary.dtype != self.dtype:
                raise TypeError("self and ary must have the same dtype")
            if not ary.flags.c_contiguous:
                raise ValueError("ary must be contiguous")
        if self.size:
            driver.memcpy_dtoh(ary, self.gpudata)
        return ary

    def get_async(self, stream=None, ary=None):
        return self.get(ary)

    # -- construction ----------------------------------------------------------------------------
    def fill(self, value, stream=None):
        if self.size:
            host = np.full(self.shape, value, dtype=self.dtype)
            driver.memcpy_htod(self.gpudata, host)
        return self

    def copy(self):
        new = GPUArray(self.shape, self.dtype, allocator=self.allocator)
        if self.size:
            driver.memcpy_dtod(new.gpudata, self.gpudata, self.nbytes)
        return new

    def reshape(self, *shape, **kwargs):
        order = kwargs.pop("order", "C")
        if kwargs:
            raise TypeError("unexpected keyword arguments %s" % list(kwargs))
        if order != "C":
            raise ValueError("only C order is supported")
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = _shape_tuple(shape)
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if shape.count(-1) > 1 or known == 0 or self.size % known:
                raise ValueError("cannot reshape array of size %d into shape %s" % (self.size, shape))
            shape = tuple(self.size // known if d == -1 else d for d in shape)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError("total size of new array must be unchanged")
        if shape == self.shape:
            return self
        return GPUArray(shape, self.dtype, allocator=self.allocator, base=self,
                        gpudata=self.gpudata)

    def ravel(self):
        return self.reshape(self.size)

    def view(self, dtype=None):
        if dtype is None:
            return GPUArray(self.shape, self.dtype, self.allocator, base=self, gpudata=self.gpudata)
        dtype = np.dtype(dtype)
        last = self.shape[-1] * self.dtype.itemsize if self.shape else self.dtype.itemsize
        if last % dtype.itemsize:
            raise ValueError("new type not compatible with array")
        shape = self.shape[:-1] + (last // dtype.itemsize,) if self.shape else (1,)
        return GPUArray(shape, dtype, self.allocator, base=self, gpudata=self.gpudata)

    def astype(self, dtype, stream=None):
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self.copy()
        return to_gpu(self.get().astype(dtype), allocator=self.allocator)

    # -- printing: pycuda prints the data -----------------------------------------------------------
    def __str__(self):
        return str(self.get())

    def __repr__(self):
        return repr(self.get())


def to_gpu(ary, allocator=None):
    ary = np.asarray(ary)
    result = GPUArray(ary.shape, ary.dtype, allocator)
    result.set(ary)
    return result


def empty(shape, dtype, allocator=None, order="C"):
    return GPUArray(shape, dtype, allocator, order=order)


def zeros(shape, dtype=np.float64, allocator=None, order="C"):
    result = GPUArray(shape, dtype, allocator, order=order)
    if result.size:
        driver.memset_d8(result.gpudata, 0, result.nbytes)
    return result


def empty_like(other):
    return GPUArray(other.shape, other.dtype, other.allocator)


def zeros_like(other):
    return zeros(other.shape, other.dtype, other.allocator)
