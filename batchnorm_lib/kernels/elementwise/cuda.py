"""The shim's elementwise arithmetic as CUDA kernels (``kernels/elementwise/elementwise.cu``).

Serves the ``cudasim`` arrays: compiled once per process through the runtime's ``functions_of``
(the compiler and options of every other kernel) and launched with BLOCK threads per block. The
contract is in :mod:`batchnorm_lib.kernels.elementwise`.
"""

import numpy as np

from batchnorm_lib import config
from batchnorm_lib.backend.cuda.core import BLOCK
from batchnorm_lib.kernels.elementwise import COMPARISONS, REDUCTIONS

SOURCE = "elementwise/elementwise.cu"
MAX_BLOCKS = 1024  # elementwise grid cap (grid-stride loops cover the rest) and reduction width
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32", np.dtype(np.float16): "f16"}
_SCALAR = {"f32": np.float32, "i32": np.int32}


def _launch(z, name, grid, args):
    rt = config.backend_module(getattr(z, "backend_name", None)).runtime()
    fn = rt.functions_of(SOURCE)[name]
    fn(*args, block=(BLOCK, 1, 1), grid=(grid, 1, 1), shared=0)
    if rt.sync_each_launch:
        rt.api.driver.Context.synchronize()


def _grid(n):
    return max(1, min(-(-int(n) // BLOCK), MAX_BLOCKS))


def _p(a):
    if not a.flags.c_contiguous:  # arraymath refuses views first; this guards the kernels
        raise RuntimeError("only contiguous arrays may be used as arguments to this operation")
    return np.uintp(a.ptr)


def _run(kind, z, arrays, scalars=(), ints=()):
    """Launch ``ew_<kind>_<T>(arrays..., z, scalars..., ints..., n)``."""
    t = _SUFFIX[z.dtype]
    args = [_p(a) for a in arrays] + [_p(z)] + [_SCALAR[t](s) for s in scalars]
    args += [np.int32(i) for i in ints] + [np.int64(z.size)]
    if z.size:
        _launch(z, "ew_%s_%s" % (kind, t), _grid(z.size), args)


def _is_array(y):
    return not np.isscalar(y)


def axpbyz(a, x, b, y, z):
    _run("axpbyz", z, (x, y), (a, b))


def axpbz(a, x, b, z):
    _run("axpbz", z, (x,), (a, b))


def mul(x, y, z):
    _run("mul", z, (x, y))


def div(x, y, z):
    _run("div", z, (x, y))


def rdiv(a, x, z):
    _run("rdiv", z, (x,), (a,))


def pow(x, y, z):
    if _is_array(y):
        _run("pow", z, (x, y))
    else:
        _run("pows", z, (x,), (y,))


def rpow(a, x, z):
    _run("rpow", z, (x,), (a,))


def abs(x, z):
    _run("abs", z, (x,))


def compare(op, x, y, z):
    code = COMPARISONS.index(op)
    if _is_array(y):
        _run("cmp", z, (x, y), (), (code,))
    else:
        _run("cmps", z, (x,), (y,), (code,))


def maxmin(isMax, x, y, z):
    _run("maxmin", z, (x, y), (), (1 if isMax else 0,))


def if_positive(c, a, b, z):
    _run("ifpos", z, (c, a, b))


def fill(z, v):
    t = _SUFFIX[z.dtype]
    if z.size:
        _launch(z, "ew_fill_%s" % t, _grid(z.size), (_p(z), _SCALAR[t](v), np.int64(z.size)))


def arange(z, start, step):
    t = _SUFFIX[z.dtype]
    if z.size:
        _launch(z, "ew_arange_%s" % t, _grid(z.size),
                (_p(z), _SCALAR[t](start), _SCALAR[t](step), np.int64(z.size)))


def reduce(op, x, y, out):
    """Two launches: per-block partials, then one block over the partials (fixed order)."""
    t = _SUFFIX[out.dtype]
    code = np.int32(REDUCTIONS.index(op))
    name = "ew_reduce_%s" % t
    blocks = _grid(x.size)
    partial = type(out)((blocks,), out.dtype, allocator=out.allocator)
    _launch(out, name, blocks, (_p(x), _p(y if y is not None else x), _p(partial), code,
                                np.int64(x.size)))
    # the second pass only combines: dot's products are already in the partials
    second = np.int32(REDUCTIONS.index("sum") if op == "dot" else code)
    _launch(out, name, 1, (_p(partial), _p(partial), _p(out), second, np.int64(blocks)))


def convert(x, z):
    if z.size:
        _launch(z, "ew_convert_%s_%s" % (_SUFFIX[x.dtype], _SUFFIX[z.dtype]), _grid(z.size),
                (_p(x), _p(z), np.int64(z.size)))
