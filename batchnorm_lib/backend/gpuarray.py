"""PuzzleLib-style gpuarray shim: ``from batchnorm_lib.backend import gpuarray``.

Every call forwards to the active backend (see :mod:`batchnorm_lib.config`), so the same script runs
on the GPU and on the CPU. ``gpuarray.GPUArray`` is the active backend's array class: pycuda's own
on ``cuda``; on ``cpu`` and ``cudasim`` an array with the part of pycuda's surface that training
code uses (arithmetic, comparisons, basic-indexing views, ``astype``, ``.T``, ...), following
pycuda's rules (:mod:`batchnorm_lib.backend.arraymath`). The functions below are pycuda's
``gpuarray`` functions plus PuzzleLib's ``dtypesSupported`` and ``memoryPool``.
"""

import builtins

import numpy as np

from batchnorm_lib import config


def _backend():
    return config.backend_module()


def _pycuda_gpuarray():
    """pycuda's gpuarray module on the cuda backend, else None."""
    if config.get_backend() != "cuda":
        return None
    return _backend().runtime().api.gpuarray


class _MemoryPool:
    """PuzzleLib's ``gpuarray.memoryPool``: the active backend's pool. Pass it as ``allocator=``
    (as PuzzleLib code does); ``allocate(nbytes)`` and ``freeHeld()`` are pycuda's pool calls."""

    def allocate(self, nbytes):
        if config.get_backend() == "cpu":
            raise ValueError("the cpu backend allocates arrays, not raw device memory")
        return _backend().runtime().allocator(nbytes)

    __call__ = allocate

    def freeHeld(self):
        if config.get_backend() == "cpu":
            from batchnorm_lib.backend.cpu.pool import POOL

            POOL.free_held()
        else:
            _backend().runtime().free_held()

    def __repr__(self):
        return "<gpuarray.memoryPool of the %r backend>" % config.get_backend()


memoryPool = _MemoryPool()


def _allocated(make, allocator, *args):
    """``make(*args)`` on the backend's pool, or with a caller's pycuda-style allocator on the
    CUDA backends (the cpu backend allocates from its own pool whatever is passed)."""
    if allocator is None or allocator is memoryPool or config.get_backend() == "cpu":
        return make(*args)
    return getattr(_backend().runtime().api.gpuarray, make.__name__)(*args, allocator=allocator)


def to_gpu(ary, allocator=None):
    """Copy a numpy array (or anything ``np.asarray`` takes) into a new device array."""
    return _allocated(_backend().to_gpu, allocator, np.ascontiguousarray(ary))


def empty(shape, dtype=np.float32, allocator=None, order="C"):
    if order != "C":
        raise ValueError("only C order is supported")
    return _allocated(_backend().empty, allocator, shape, np.dtype(dtype))


def zeros(shape, dtype=np.float32, allocator=None, order="C"):
    if order != "C":
        raise ValueError("only C order is supported")
    return _allocated(_backend().zeros, allocator, shape, np.dtype(dtype))


def _check(ary, what):
    if not is_array(ary):
        raise TypeError("%s takes an array of the active %r backend, got %s"
                        % (what, config.get_backend(), type(ary).__name__))


def empty_like(other, dtype=None):
    _check(other, "empty_like")
    return empty(other.shape, other.dtype if dtype is None else dtype)


def zeros_like(other, dtype=None):
    _check(other, "zeros_like")
    return zeros(other.shape, other.dtype if dtype is None else dtype)


def ones_like(other, dtype=None):
    _check(other, "ones_like")
    return empty(other.shape, other.dtype if dtype is None else dtype).fill(1)


def arange(*args, dtype=None):
    """``arange([start,] stop[, step], dtype=None)`` as pycuda's: ``ceil((stop - start) / step)``
    values ``start + i * step`` (dtype numpy's for the arguments unless given)."""
    pycuda = _pycuda_gpuarray()
    if pycuda is not None:
        return pycuda.arange(*args, dtype=dtype, allocator=_backend().runtime().allocator)
    if not 1 <= len(args) <= 3:
        raise ValueError("arange takes 1 to 3 positional arguments")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else \
        (args[0], args[1], 1) if len(args) == 2 else args
    dtype = np.array([start, stop, step]).dtype if dtype is None else np.dtype(dtype)
    if step == 0:
        raise ValueError("arange: step must not be zero")
    from batchnorm_lib.backend import arraymath

    arraymath.check_computable(dtype, "arange")
    count = builtins.max(0, int(np.ceil((stop - start) / step)))
    return arraymath.arange_into(empty((count,), dtype), start, step)


def _math():
    from batchnorm_lib.backend import arraymath

    return arraymath


def sum(a, dtype=None):
    """The sum of every element as a 0-d array (pycuda's ``gpuarray.sum``)."""
    _check(a, "sum")
    pycuda = _pycuda_gpuarray()
    if pycuda is not None:
        return pycuda.sum(a, dtype=dtype)
    return _math().reduction("sum", a, dtype=dtype)


def dot(a, b, dtype=None):
    """``sum(a * b)`` of two arrays of one shape, as a 0-d array (pycuda's ``gpuarray.dot``)."""
    _check(a, "dot")
    _check(b, "dot")
    pycuda = _pycuda_gpuarray()
    if pycuda is not None:
        return pycuda.dot(a, b, dtype=dtype)
    return _math().reduction("dot", a, b)


def _extreme(a, b, isMax):
    name = "maximum" if isMax else "minimum"
    _check(a, name)
    pycuda = _pycuda_gpuarray()
    if b is None:
        if pycuda is not None:
            return pycuda.max(a) if isMax else pycuda.min(a)
        return _math().reduction("max" if isMax else "min", a)
    _check(b, name)
    if pycuda is not None:
        return pycuda.maximum(a, b) if isMax else pycuda.minimum(a, b)
    return _math().maxmin(a, b, isMax)


def maximum(a, b=None):
    """pycuda's ``maximum(a, b)``: elementwise; PuzzleLib's ``maximum(a)``: the largest element
    (a 0-d array)."""
    return _extreme(a, b, True)


def minimum(a, b=None):
    """pycuda's ``minimum(a, b)``: elementwise; PuzzleLib's ``minimum(a)``: the smallest element
    (a 0-d array)."""
    return _extreme(a, b, False)


def max(a):
    return maximum(a)


def min(a):
    return minimum(a)


def if_positive(criterion, then_, else_):
    """``then_`` where ``criterion > 0``, else ``else_`` (pycuda's ``gpuarray.if_positive``)."""
    for v in (criterion, then_, else_):
        _check(v, "if_positive")
    pycuda = _pycuda_gpuarray()
    if pycuda is not None:
        return pycuda.if_positive(criterion, then_, else_)
    return _math().if_positive(criterion, then_, else_)


def dtypesSupported():
    """PuzzleLib's list of ``(dtype, atol)`` pairs every module takes on the active backend:
    float32 (atol 1e-5) everywhere, float16 (atol 1e-2) on the CUDA backends (``cuda``,
    ``cudasim``), where the batch norms compute in it and the other modules convert at their
    boundaries, keeping parameters and arithmetic in float32."""
    dtypes = [(np.float32, 1e-5)]
    if np.dtype(np.float16) in _backend().supported_dtypes() and config.get_backend() != "cpu":
        dtypes.append((np.float16, 1e-2))
    return dtypes


def is_array(obj):
    """True when ``obj`` is an array of the active backend."""
    return isinstance(obj, _backend().GPUArray)


def __getattr__(name):
    if name == "GPUArray":
        return _backend().GPUArray
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
