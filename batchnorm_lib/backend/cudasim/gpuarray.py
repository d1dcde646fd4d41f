"""Simulated ``pycuda.gpuarray``: ``GPUArray`` over simulated device memory.

The data lives behind ``gpudata`` (a :class:`driver.DeviceAllocation` or a pool's allocation);
``get``/``set`` copy through the driver's memcpy, as pycuda's do. Arithmetic, comparisons,
``fill``, ``astype`` and the reductions run as CUDA kernels (``kernels/elementwise/elementwise.cu``)
through the simulated SourceModule, with pycuda's rules (:mod:`batchnorm_lib.backend.arraymath`).
Basic indexing returns strided views that share memory (``gpudata`` is then an address inside the
base allocation, which the view keeps alive through ``base``).
"""

import numpy as np

from batchnorm_lib.backend.arraymath import (ArrayMath, check_basic_index, check_computable,
                                             check_contiguous)
from batchnorm_lib.backend.cudasim import driver
from batchnorm_lib.kernels import elementwise


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


def _is_contiguous(shape, strides, itemsize, order):
    """numpy's rule: axes of length 1 do not count; an empty array is contiguous."""
    if 0 in shape:
        return True
    axes = zip(shape, strides) if order == "F" else zip(reversed(shape), reversed(strides))
    expected = itemsize
    for d, st in axes:
        if d != 1 and st != expected:
            return False
        expected *= d
    return True


class _Flags:
    def __init__(self, ary):
        self.c_contiguous = _is_contiguous(ary.shape, ary.strides, ary.itemsize, "C")
        self.f_contiguous = _is_contiguous(ary.shape, ary.strides, ary.itemsize, "F")
        self.forc = self.c_contiguous or self.f_contiguous

    def __getitem__(self, key):  # numpy's flags["C_CONTIGUOUS"] spelling
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous}[key]


class GPUArray(ArrayMath):
    backend_name = "cudasim"

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
        if strides is not None and tuple(strides) != c_strides and self.size > 1 \
                and gpudata is None:
            raise ValueError("the simulator allocates C-ordered arrays only (views may be strided)")
        self.strides = c_strides if strides is None else tuple(int(x) for x in strides)
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
        return _Flags(self)

    def _new(self, shape, dtype):
        return GPUArray(shape, dtype, allocator=self.allocator)

    def _extent(self):
        """(lo, hi): the byte range [ptr + lo, ptr + hi) the (possibly strided) view touches."""
        lo = hi = 0
        for d, st in zip(self.shape, self.strides):
            if st > 0:
                hi += (d - 1) * st
            else:
                lo += (d - 1) * st
        return lo, hi + self.itemsize

    def _host_window(self):
        """The bytes under a strided view, read from the device, and an ndarray over them with
        the view's shape and strides."""
        lo, hi = self._extent()
        buf = np.empty(hi - lo, np.uint8)
        driver.memcpy_dtoh(buf, self.ptr + lo)
        return buf, np.ndarray(self.shape, self.dtype, buffer=buf, offset=-lo,
                               strides=self.strides)

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
        if self.size and not self.flags.c_contiguous:
            # a strided view: read the bytes under it, write the elements, put them back
            buf, window = self._host_window()
            window[...] = ary.reshape(self.shape)
            driver.memcpy_htod(self.ptr + self._extent()[0], buf)
            return
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
        if self.size and not self.flags.c_contiguous:
            ary[...] = self._host_window()[1]
        elif self.size:
            driver.memcpy_dtoh(ary, self.gpudata)
        return ary

    def get_async(self, stream=None, ary=None):
        return self.get(ary)

    # -- construction ----------------------------------------------------------------------------
    def fill(self, value, stream=None):
        check_contiguous(self)
        if self.dtype in elementwise.DTYPES:
            elementwise.ops(self).fill(self, value)
        elif self.size:  # other dtypes (float16, bfloat16): a host pattern copied in
            host = np.full(self.shape, value, dtype=self.dtype)
            driver.memcpy_htod(self.gpudata, host)
        return self

    def copy(self):
        """A contiguous copy (of a strided view too)."""
        new = GPUArray(self.shape, self.dtype, allocator=self.allocator)
        if self.size and not self.flags.c_contiguous:
            new.set(self.get())
        elif self.size:
            driver.memcpy_dtod(new.gpudata, self.gpudata, self.nbytes)
        return new

    def reshape(self, *shape, **kwargs):
        order = kwargs.pop("order", "C")
        if kwargs:
            raise TypeError("unexpected keyword arguments %s" % list(kwargs))
        if order != "C":
            raise ValueError("only C order is supported")
        if not self.flags.c_contiguous:
            raise RuntimeError("only C-contiguous arrays may be reshaped in C order")
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
        check_contiguous(self)
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self.copy()
        for d in (self.dtype, dtype):
            if d != np.float16:
                check_computable(d, "astype")
        if {self.dtype, dtype} == {np.dtype(np.int32), np.dtype(np.float16)}:
            return self.astype(np.float32).astype(dtype)
        out = self._new(self.shape, dtype)
        elementwise.ops(self).convert(self, out)
        return out

    def transpose(self, axes=None):
        axes = tuple(range(self.ndim - 1, -1, -1)) if axes is None else tuple(axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError("axes don't match array")
        return GPUArray(tuple(self.shape[a] for a in axes), self.dtype, self.allocator,
                        base=self, gpudata=self._address(),
                        strides=tuple(self.strides[a] for a in axes))

    def _address(self):
        return None if self.gpudata is None else int(self.gpudata)

    # -- basic indexing: views, as pycuda's ---------------------------------------------------------
    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        check_basic_index(index)
        if sum(1 for e in index if e is Ellipsis) > 1:
            raise IndexError("more than one ellipsis not allowed in index")
        used = sum(1 for e in index if e is not None and e is not Ellipsis)
        if used > self.ndim:
            raise IndexError("too many indices: array is %d-dimensional, %d were indexed"
                             % (self.ndim, used))
        shape, strides, offset, axis = [], [], 0, 0
        for entry in index:
            if entry is Ellipsis:
                for _ in range(self.ndim - used):
                    shape.append(self.shape[axis])
                    strides.append(self.strides[axis])
                    axis += 1
            elif entry is None:
                shape.append(1)
                strides.append(0)
            elif isinstance(entry, slice):
                start, stop, step = entry.indices(self.shape[axis])
                count = len(range(start, stop, step))
                shape.append(count)
                strides.append(step * self.strides[axis])
                offset += start * self.strides[axis] if count else 0
                axis += 1
            else:
                i = int(entry)
                i += self.shape[axis] if i < 0 else 0
                if not 0 <= i < self.shape[axis]:
                    raise IndexError("index %d is out of bounds for axis %d with size %d"
                                     % (int(entry), axis, self.shape[axis]))
                offset += i * self.strides[axis]
                axis += 1
        shape += self.shape[axis:]
        strides += self.strides[axis:]
        base = self._address()
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        return GPUArray(tuple(shape), self.dtype, self.allocator, base=self,
                        gpudata=None if base is None or size == 0 else base + offset,
                        strides=tuple(strides)) if size else \
            GPUArray(tuple(shape), self.dtype, self.allocator)

    def __setitem__(self, index, value):
        target = self[index]
        if np.isscalar(value):
            target.fill(value)  # pycuda fills: a strided target raises RuntimeError there too
            return
        if isinstance(value, GPUArray):
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError("setitem: source is %s %s, target is %s %s"
                                 % (value.shape, value.dtype, target.shape, target.dtype))
            value = value.get()
        value = np.asarray(value)
        if value.shape != target.shape or value.dtype != target.dtype:
            raise ValueError("setitem: source is %s %s, target is %s %s"
                             % (value.shape, value.dtype, target.shape, target.dtype))
        target.set(value)

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
