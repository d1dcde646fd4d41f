"""Batch normalization on the CUDA backends (``cuda`` and ``cudasim``): the kernel contract of
:mod:`batchnorm_lib.kernels`, launched from ``kernels/norm/batchnorm.cu``.

Each call takes the active backend's runtime (``config.backend_module().runtime()``), so both
backends can be used in one process; each compiles the sources once, on first use (the active one
when this module is imported). Nothing here copies data to or from the host: workspaces come from
the backend's memory pool and every arithmetic step runs in the kernels.

Reductions run as two launches: a (C, nsplit) grid of Welford (or sum) partials (for spatial size
1, a (ceil(C / 32), nsplit) grid of 32-channel column blocks), then one warp per channel merging
them in a fixed order. nsplit depends only on the shape, so results are bitwise
repeatable and equal across devices.

Numerics: threads accumulate in float32, partials merge in compensated float32 (float-float) within a
block and in float64 per channel (the finalize kernels, the only ones using float64); the factors
(normalize factor, dx coefficients, inference factor) are computed once in float64. See
docs/numerics.md.
"""

import numpy as np

from batchnorm_lib import config
from batchnorm_lib.backend.cuda.core import BLOCK

TARGET_BLOCKS = 1024  # reduction blocks to aim for over all channels: enough to fill a large GPU
MIN_PACKS_PER_THREAD = 8  # do not split a channel below this much work per thread (a full unrolled step)
MAX_BLOCK_ELEMENTS = 1 << 23  # per-block element counts stay exact in the kernels' float counters
MAX_GRID_Y = 65535
ELEMENTWISE_BLOCKS = 4096  # grid-stride elementwise kernels: blocks at most
# packs each elementwise thread takes (the kernels load up to 8 before using any: bn::channel_stream);
# fewer would leave every thread a single load in flight
ELEMENTWISE_PACKS_PER_THREAD = 8
WARPS_PER_BLOCK = BLOCK // 32
STATS_PARTIAL = 7  # floats per block partial of the statistics (bn::kPartial)
SUM_PARTIAL = 6  # floats per block partial of the backward sums (bn::kSumPartial)

_SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _runtime():
    return config.backend_module().runtime()


def _ptr(a):
    return np.uintp(int(a.ptr))


def _ncs(shape):
    """(N, C, *spatial) -> (N, C, S)."""
    if len(shape) < 2:
        raise ValueError("batch-norm data needs at least 2 axes (N, C), got shape %s" % (shape,))
    s = 1
    for d in shape[2:]:
        s *= int(d)
    return int(shape[0]), int(shape[1]), s


def _suffix(rt, dtype, *others):
    dtype = np.dtype(dtype)
    for o in others:
        if o is not None and np.dtype(o.dtype) != dtype:
            raise TypeError("batch-norm arrays mix dtypes %s and %s" % (dtype, o.dtype))
    if dtype not in rt.supported_dtypes() or dtype.name not in _SUFFIX:
        raise TypeError("dtype %s is not supported on the %s backend" % (dtype, rt.name))
    return _SUFFIX[dtype.name]


def _vector(s, dtype, *arrays):
    """'_vec' (16-byte packs) when every data pointer is 16-byte aligned and rows are whole
    packs."""
    width = 16 // np.dtype(dtype).itemsize
    if s % width == 0 and all(int(a.ptr) % 16 == 0 for a in arrays if a is not None):
        return "_vec", width
    return "", 1


def _splits(blocks_per_split, work, elements):
    """Blocks per channel group: enough to fill the device, at least MIN_PACKS_PER_THREAD loads per
    thread, and few enough elements per block for exact float counts. Shapes alone decide it."""
    by_work = max(1, work // (BLOCK * MIN_PACKS_PER_THREAD))
    nsplit = min(-(-TARGET_BLOCKS // blocks_per_split), by_work)
    nsplit = max(nsplit, -(-elements // MAX_BLOCK_ELEMENTS))
    if nsplit > MAX_GRID_Y:
        raise ValueError("a channel of %d elements is too large for the CUDA kernels" % elements)
    return nsplit


def _reduction(kernel, suffix, n, c, s, vec, width):
    """(entry name, grid, nsplit, shape args) of a two-phase reduction's first launch. Spatial size
    1 takes the column kernels (32 channels per block, coalesced across channels)."""
    if s == 1:
        nsplit = _splits(-(-c // 32), n * 32, n)
        return (kernel + "_cols_" + suffix, (-(-c // 32), nsplit), nsplit,
                (np.int64(n), np.int32(c)))
    nsplit = _splits(c, n * (s // width), n * s)
    return (kernel + "_" + suffix + vec, (c, nsplit), nsplit,
            (np.int64(n), np.int32(c), np.int64(s)))


def _elementwise_grid(total_packs, per_thread=ELEMENTWISE_PACKS_PER_THREAD):
    return (max(1, min(-(-total_packs // (BLOCK * per_thread)), ELEMENTWISE_BLOCKS)),)


def _channel_grid(c):
    return (-(-c // WARPS_PER_BLOCK),)


def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar):
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return
    vec, width = _vector(s, x.dtype, x, out)
    name, grid, nsplit, reduce_args = _reduction("bn_stats_partial", suffix, n, c, s, vec, width)
    part = rt.empty((c * nsplit * STATS_PARTIAL,), np.float32)
    a = rt.empty((c,), np.float32)
    rt.launch(name, grid, (_ptr(x), _ptr(part)) + reduce_args)
    rt.launch("bn_stats_finalize", _channel_grid(c),
              (_ptr(part), np.int32(c), np.int32(nsplit), np.float64(eps), np.float64(factor),
               _ptr(scale), _ptr(savemean), _ptr(saveinvvar), _ptr(a), _ptr(run_mean),
               _ptr(run_var)))
    _normalize(rt, suffix + vec, x, out, savemean, a, bias, n, c, s, width)


def _normalize(rt, kind, x, out, mean, a, bias, n, c, s, width):
    rt.launch("bn_normalize_" + kind, _elementwise_grid(n * c * (s // width)),
              (_ptr(x), _ptr(out), _ptr(mean), _ptr(a), _ptr(bias), np.int64(n), np.int32(c),
               np.int64(s)))


def _channel_factor(rt, scale, run_var, eps, c):
    """a = scale / sqrt(run_var + eps) per channel, in float64 rounded once (a workspace)."""
    a = rt.empty((c,), np.float32)
    rt.launch("bn_channel_factor", (-(-c // BLOCK),),
              (_ptr(scale), _ptr(run_var), np.float64(eps), _ptr(a), np.int32(c)))
    return a


def forward_infer(x, scale, bias, run_mean, run_var, eps, out):
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return
    vec, width = _vector(s, x.dtype, x, out)
    a = _channel_factor(rt, scale, run_var, eps, c)
    _normalize(rt, suffix + vec, x, out, run_mean, a, bias, n, c, s, width)


def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias):
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, dy, dx)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return
    vec, width = _vector(s, x.dtype, x, dy, dx)
    name, grid, nsplit, reduce_args = _reduction("bn_backward_partial", suffix, n, c, s, vec, width)
    part = rt.empty((c * nsplit * SUM_PARTIAL,), np.float32)
    coef = rt.empty((c * 3,), np.float32)
    rt.launch(name, grid, (_ptr(x), _ptr(dy), _ptr(savemean), _ptr(part)) + reduce_args)
    rt.launch("bn_backward_finalize", _channel_grid(c),
              (_ptr(part), np.int32(c), np.int32(nsplit), np.int64(n * s), _ptr(scale),
               _ptr(saveinvvar), _ptr(dscale), _ptr(dbias), _ptr(coef)))
    if dx is not None:
        rt.launch("bn_backward_train_" + suffix + vec, _elementwise_grid(n * c * (s // width)),
                  (_ptr(x), _ptr(dy), _ptr(savemean), _ptr(coef), _ptr(dx), np.int64(n),
                   np.int32(c), np.int64(s)))


def backward_infer(dy, scale, run_var, eps, dx):
    rt = _runtime()
    suffix = _suffix(rt, dy.dtype, dx)
    n, c, s = _ncs(dy.shape)
    if n * s < 1:
        return
    vec, width = _vector(s, dy.dtype, dy, dx)
    k = _channel_factor(rt, scale, run_var, eps, c)
    rt.launch("bn_backward_infer_" + suffix + vec, _elementwise_grid(n * c * (s // width)),
              (_ptr(dy), _ptr(k), _ptr(dx), np.int64(n), np.int32(c), np.int64(s)))


def axpby(x, y, alpha, beta):
    rt = _runtime()
    if np.dtype(x.dtype) != np.float32 or np.dtype(y.dtype) != np.float32 or x.size != y.size:
        raise TypeError("axpby takes two float32 arrays of one size, got %s %s and %s %s"
                        % (x.dtype, x.shape, y.dtype, y.shape))
    if y.size == 0:
        return
    rt.launch("bn_axpby", _elementwise_grid(y.size, 1),
              (_ptr(x), _ptr(y), np.float32(alpha), np.float32(beta), np.int64(y.size)))


def _compile_active():
    """Compile for the active backend when it is one of ours (the once-per-process compile)."""
    try:
        name = config.get_backend()
    except config.BackendError:
        return
    from batchnorm_lib import kernels

    if name in kernels._IMPL_FOR_BACKEND and kernels.implementation("norm", name).__name__ == __name__:
        _runtime().compile()


_compile_active()
