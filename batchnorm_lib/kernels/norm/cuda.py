"""Batch normalization on the CUDA backends (``cuda`` and ``cudasim``): the kernel contract of
:mod:`batchnorm_lib.kernels`, launched from ``kernels/norm/batchnorm.cu``.

Each call takes the active backend's runtime (``config.backend_module().runtime()``), so both
backends can be used in one process; each compiles the sources once, on first use (the active one
when this module is imported). Nothing here copies data to or from the host: workspaces come from
the backend's memory pool and every arithmetic step runs in the kernels.

Reductions run in one launch: C x nsplit tiles of Welford (or sum) partials, walked by a grid of
the blocks the device holds at once (for spatial size 1, a (ceil(C / 32), nsplit) grid of
32-channel column blocks), and the last tile of each channel group to finish (an integer counter
per group) merges the group's partials, one warp per channel, in a fixed order. nsplit depends only
on the shape, and a tile's partial not on the block computing it, so results are bitwise
repeatable and equal across devices. A training pass is two launches (reduction, then the elementwise pass), an NCHW
inference pass one (forward or backward: the kernel computes its channels' factors). Where a
tensor fits on chip, the training passes instead run as one single-read launch of
``kernels/norm/persistent.cu`` (see the end of this module; rows x channels data: the
``rc_persist_*`` entries of ``rows_channels.cu``), split by what the device holds at once: bitwise
repeatable on one device, equal to the two-pass results to rounding.

Numerics: threads accumulate in float32, partials merge in compensated float32 (float-float) within a
block and in float64 per channel (the reductions' last blocks and the
inference kernels' factors, the only code using float64); the factors (normalize factor, dx
coefficients, inference factor) are computed once per channel (per block, in the inference kernels)
in float64. See docs/numerics.md.
"""

import collections
import functools
import os
import weakref

import numpy as np

from batchnorm_lib import config
from batchnorm_lib.backend.cuda.core import BLOCK

TARGET_BLOCKS = 1024  # reduction blocks to aim for over all channels: enough to fill a large GPU
# NCHW reduction tiles to aim for over all channels: the grid holds only the blocks the device
# keeps resident at once (an H100 about 660 of these) and each walks every gridDim-th tile, so with
# several tiles per block the last ones end within a small tile's time of each other, where 1024
# one-tile blocks ran 1.3-1.9 waves
TARGET_TILES = 8192
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


_COUNTERS = weakref.WeakKeyDictionary()  # runtime -> the reductions' per-group uint32 counters


def _counters(rt, groups):
    """The reductions' done-counters, at least ``groups`` of them, all 0: zeroed once from the host
    when (re)allocated, and every launch leaves them 0 (its last block of a group resets that
    group's), so no launch is spent resetting them."""
    have = _COUNTERS.get(rt)
    if have is None or have.size < groups:
        have = rt.to_gpu(np.zeros(max(groups, 1024), np.uint32))
        _COUNTERS[rt] = have
    return _ptr(have)


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


def _flat_vector(dtype, *arrays):
    """'_vec' for the NCHW elementwise passes: their packs run over the flat index, across channel
    boundaries, with a partial last pack, so they need only every pointer 16-byte aligned."""
    if all(int(a.ptr) % 16 == 0 for a in arrays if a is not None):
        return "_vec", 16 // np.dtype(dtype).itemsize
    return "", 1


def _splits(blocks_per_split, work, elements, target=TARGET_BLOCKS):
    """Blocks (tiles) per channel group: enough to fill the device (``target`` over all groups), at
    least MIN_PACKS_PER_THREAD loads per thread, and few enough elements per block for exact float
    counts. Shapes alone decide it."""
    by_work = max(1, work // (BLOCK * MIN_PACKS_PER_THREAD))
    nsplit = min(-(-target // blocks_per_split), by_work)
    nsplit = max(nsplit, -(-elements // MAX_BLOCK_ELEMENTS))
    if nsplit > MAX_GRID_Y:
        raise ValueError("a channel of %d elements is too large for the CUDA kernels" % elements)
    return nsplit


def _reduction(rt, kernel, suffix, n, c, s, vec, width):
    """(entry name, grid, nsplit, shape args) of a reduction launch: C x nsplit tiles (nsplit from
    the shape alone) walked by at most the blocks the device holds at once. Spatial size 1 takes
    the column kernels (32 channels per block, coalesced across channels, a block per tile)."""
    if s == 1:
        nsplit = _splits(-(-c // 32), n * 32, n)
        return (kernel + "_cols_" + suffix, (-(-c // 32), nsplit), nsplit,
                (np.int64(n), np.int32(c)))
    nsplit = _splits(c, n * (s // width), n * s, TARGET_TILES)
    name = kernel + "_" + suffix + vec
    return (name, (min(c * nsplit, _resident_blocks(rt, name)),), nsplit,
            (np.int64(n), np.int32(c), np.int64(s), np.int32(nsplit)))


def _blocks_per_sm(rt, fn, shared=None):
    """Blocks of compiled kernel ``fn`` one SM of the device holds at once: the occupancy rule from
    its threads and its registers (ptxas's count, where known, allocated per warp in units of 256)
    and, given ``shared`` (bytes per block), shared memory plus SMEM_RESERVED per block."""
    attr = rt.api.driver.device_attribute
    dev = rt.device
    per_sm = min(dev.get_attribute(attr.MAX_THREADS_PER_MULTIPROCESSOR) // BLOCK,
                 dev.get_attribute(attr.MAX_BLOCKS_PER_MULTIPROCESSOR))
    if shared is not None:
        per_sm = min(per_sm, dev.get_attribute(attr.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
                     // (shared + SMEM_RESERVED))
    if fn.num_regs:
        warp_regs = -(-fn.num_regs * 32 // 256) * 256
        per_sm = min(per_sm, dev.get_attribute(attr.MAX_REGISTERS_PER_MULTIPROCESSOR)
                     // (warp_regs * WARPS_PER_BLOCK))
    return per_sm


def _tiles(grid, c, nsplit):
    """The work a reduction grid walks, in tiles (Runtime.launch's ``tiles``): C x nsplit for the
    1-D grids of resident blocks, None for the column kernels' grid of a block a tile."""
    return c * nsplit if len(grid) == 1 else None


def _resident_blocks(rt, name):
    """Blocks of batchnorm.cu's entry ``name`` the device holds at once: SMs times the blocks per SM
    that its threads and registers (ptxas's count, where known) allow."""
    if not _launches_on_device(rt):
        rt = config.backend_module().runtime()  # a recorded launch: the active device's figure
    per_sm = _blocks_per_sm(rt, rt.compile()[name])
    sms = rt.device.get_attribute(rt.api.driver.device_attribute.MULTIPROCESSOR_COUNT)
    return sms * max(1, per_sm)


def _relu(name, on):
    """Entry ``name`` or its fused-ReLU twin: ``bn_normalize`` -> ``bn_normalize_relu``."""
    return name + "_relu" if on else name


def _mask(y, dy):
    """The forward's output y masking a gradient: (pointer args, vector-check arrays)."""
    if y is None:
        return (), ()
    if tuple(y.shape) != tuple(dy.shape):
        raise ValueError("the relu mask y has shape %s, the gradient %s" % (y.shape, dy.shape))
    return (_ptr(y),), (y,)


def _elementwise_grid(total_packs, per_thread=ELEMENTWISE_PACKS_PER_THREAD):
    return (max(1, min(-(-total_packs // (BLOCK * per_thread)), ELEMENTWISE_BLOCKS)),)


def _channel_grid(c):
    return (-(-c // WARPS_PER_BLOCK),)


def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                  relu=False):
    if _persistent_forward(x, scale, bias, run_mean, run_var, eps, factor, out, savemean,
                           saveinvvar, relu):
        return
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return
    vec, width = _vector(s, x.dtype, x, out)
    name, grid, nsplit, reduce_args = _reduction(rt, "bn_stats_partial", suffix, n, c, s, vec,
                                                 width)
    part = rt.empty((c * nsplit * STATS_PARTIAL,), np.float32)
    a = rt.empty((c,), np.float32)
    rt.launch(name, grid, (_ptr(x), _ptr(part)) + reduce_args
              + _stats_out(rt, (c,), eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var),
              tiles=_tiles(grid, c, nsplit))
    _normalize(rt, suffix, x, out, savemean, a, bias, n, c, s, relu)


def _stats_out(rt, grid, eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var):
    """The statistics reductions' trailing arguments: counters (at least grid[0]: one per grid
    column, or, for the NCHW tiles, one per channel, given as (C,)), then where the last blocks
    write."""
    return (_counters(rt, grid[0]), np.float64(eps), np.float64(factor), _ptr(scale),
            _ptr(savemean), _ptr(saveinvvar), _ptr(a), _ptr(run_mean), _ptr(run_var))


def _sums_out(rt, grid, scale, saveinvvar, dscale, dbias, coef):
    """The backward reductions' trailing arguments, as _stats_out."""
    return (_counters(rt, grid[0]), _ptr(scale), _ptr(saveinvvar), _ptr(dscale), _ptr(dbias),
            _ptr(coef))


def _normalize(rt, suffix, x, out, mean, a, bias, n, c, s, relu):
    vec, width = _flat_vector(x.dtype, x, out)
    rt.launch(_relu("bn_normalize", relu) + "_" + suffix + vec,
              _elementwise_grid(n * c * s // width),
              (_ptr(x), _ptr(out), _ptr(mean), _ptr(a), _ptr(bias), np.int64(n), np.int32(c),
               np.int64(s)))


def forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    """One launch: the kernel computes a = scale / sqrt(run_var + eps) itself, once per channel per
    block (bn::frozen_factor: float64, rounded once)."""
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return
    vec, width = _flat_vector(x.dtype, x, out)
    rt.launch(_relu("bn_normalize_infer", relu) + "_" + suffix + vec,
              _elementwise_grid(n * c * s // width),
              (_ptr(x), _ptr(out), _ptr(run_mean), _ptr(scale), _ptr(run_var), np.float64(eps),
               _ptr(bias), np.int64(n), np.int32(c), np.int64(s)))


def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    if _persistent_backward(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y):
        return
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, dy, dx, y)
    n, c, s = _ncs(x.shape)
    mask, masks = _mask(y, dy)
    if n * s < 1:
        return
    vec, width = _vector(s, x.dtype, x, dy, dx, *masks)
    name, grid, nsplit, reduce_args = _reduction(rt, _relu("bn_backward_partial", mask), suffix, n,
                                                 c, s, vec, width)
    part = rt.empty((c * nsplit * SUM_PARTIAL,), np.float32)
    coef = rt.empty((c * 3,), np.float32)
    rt.launch(name, grid, (_ptr(x), _ptr(dy)) + mask + (_ptr(savemean), _ptr(part)) + reduce_args
              + _sums_out(rt, (c,), scale, saveinvvar, dscale, dbias, coef),
              tiles=_tiles(grid, c, nsplit))
    if dx is not None:
        evec, ewidth = _flat_vector(x.dtype, x, dy, dx, *masks)
        rt.launch(_relu("bn_backward_train", mask) + "_" + suffix + evec,
                  _elementwise_grid(n * c * s // ewidth),
                  (_ptr(x), _ptr(dy)) + mask + (_ptr(savemean), _ptr(coef), _ptr(dx), np.int64(n),
                                                np.int32(c), np.int64(s)))


def backward_infer(dy, scale, run_var, eps, dx, y=None):
    rt = _runtime()
    suffix = _suffix(rt, dy.dtype, dx, y)
    n, c, s = _ncs(dy.shape)
    mask, masks = _mask(y, dy)
    if n * s < 1:
        return
    vec, width = _flat_vector(dy.dtype, dy, dx, *masks)
    # one launch, the factor k computed in the kernel as in forward_infer
    rt.launch(_relu("bn_backward_infer", mask) + "_" + suffix + vec,
              _elementwise_grid(n * c * s // width),
              (_ptr(dy),) + mask + (_ptr(scale), _ptr(run_var), np.float64(eps), _ptr(dx),
                                    np.int64(n), np.int32(c), np.int64(s)))


def axpby(x, y, alpha, beta):
    rt = _runtime()
    if np.dtype(x.dtype) != np.float32 or np.dtype(y.dtype) != np.float32 or x.size != y.size:
        raise TypeError("axpby takes two float32 arrays of one size, got %s %s and %s %s"
                        % (x.dtype, x.shape, y.dtype, y.shape))
    if y.size == 0:
        return
    rt.launch("bn_axpby", _elementwise_grid(y.size, 1),
              (_ptr(x), _ptr(y), np.float32(alpha), np.float32(beta), np.int64(y.size)))


# -- pattern (a): statistics per contiguous row (kernels/norm/per_row.cu) -------------------------

PER_ROW_SOURCE = "norm/per_row.cu"
MAX_ROW_LENGTH = (1 << 24) - 1  # in-row indices are 32-bit and float counts stay exact
MAX_ROWS = (1 << 31) - 1  # one block per row, on grid.x
PARAM_PARTIAL = 4  # floats per block partial of the parameter gradients (per_row::kParamPartial)


def _launch_in(source, rt, name, grid, args):
    """Launch entry ``name`` of ``source`` (compiled once per process) with BLOCK threads."""
    fn = rt.functions_of(source)[name]
    fn(*args, block=(BLOCK, 1, 1), grid=tuple(grid) + (1,) * (3 - len(grid)), shared=0)
    if rt.sync_each_launch:
        rt.api.driver.Context.synchronize()


def _per_row_launch(rt, name, grid, args):
    _launch_in(PER_ROW_SOURCE, rt, name, grid, args)


def _per_row_plan(x, rows, groups, spatial, *arrays):
    """(length, vector suffix, row grid) of row-kernel launches."""
    length = x.size // rows
    if length > MAX_ROW_LENGTH or rows > MAX_ROWS:
        raise ValueError("%d rows of %d elements do not fit the CUDA row kernels (at most %d rows "
                         "of at most %d)" % (rows, length, MAX_ROWS, MAX_ROW_LENGTH))
    vec, width = _vector(length, x.dtype, x, *arrays)
    if vec and spatial != 1 and spatial % width:
        vec = ""  # a pack would straddle two channels
    return length, vec, (rows,)


def _row_grid(rows):
    """One thread per row (the per-row _finalize kernels)."""
    return (-(-rows // BLOCK),)


def per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd):
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    rows = savemean.size
    if rows < 1:
        return
    length, vec, grid = _per_row_plan(x, rows, groups, spatial, out)
    part = rt.empty((rows * STATS_PARTIAL,), np.float32)
    _per_row_launch(rt, "per_row_stats_" + suffix + vec, grid,
                 (_ptr(x), _ptr(part), np.int64(rows), np.int32(length)))
    _per_row_launch(rt, "per_row_stats_finalize", _row_grid(rows),
                 (_ptr(part), np.int64(rows), np.float64(eps), _ptr(savemean), _ptr(saveinvstd)))
    _per_row_launch(rt, "per_row_normalize_" + suffix + vec, grid,
                 (_ptr(x), _ptr(out), _ptr(savemean), _ptr(saveinvstd), _ptr(scale), _ptr(bias),
                  np.int64(rows), np.int32(length), np.int32(groups), np.int32(spatial)))


def per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias):
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, dy, dx)
    rows = savemean.size
    if rows < 1:
        return
    length, vec, grid = _per_row_plan(x, rows, groups, spatial, dy, dx)
    if dx is not None:
        part = rt.empty((rows * SUM_PARTIAL,), np.float32)
        coef = rt.empty((2 * rows,), np.float32)
        row_args = (np.int64(rows), np.int32(length), np.int32(groups), np.int32(spatial))
        _per_row_launch(rt, "per_row_backward_sums_" + suffix + vec, grid,
                     (_ptr(x), _ptr(dy), _ptr(scale), _ptr(savemean), _ptr(part)) + row_args)
        _per_row_launch(rt, "per_row_backward_finalize", _row_grid(rows),
                     (_ptr(part), np.int64(rows), np.int32(length), _ptr(saveinvstd), _ptr(coef)))
        _per_row_launch(rt, "per_row_backward_dx_" + suffix + vec, grid,
                     (_ptr(x), _ptr(dy), _ptr(scale), _ptr(savemean), _ptr(saveinvstd),
                      _ptr(coef), _ptr(dx)) + row_args)
    # parameter gradients: the data read as (N, C, S), reduced per channel in two phases
    n, cg = rows // groups, length // spatial
    c = groups * cg
    if spatial == 1:
        nsplit = _splits(-(-c // 32), n * 32, n)
        name, pgrid, extra = "per_row_param_partial_cols_" + suffix, (-(-c // 32), nsplit), ()
    else:
        nsplit = _splits(c, n * spatial, n * spatial)
        name, pgrid, extra = "per_row_param_partial_" + suffix, (c, nsplit), (np.int64(spatial),)
    part = rt.empty((c * nsplit * PARAM_PARTIAL,), np.float32)
    _per_row_launch(rt, name, pgrid, (_ptr(x), _ptr(dy), _ptr(savemean), _ptr(saveinvstd),
                                   _ptr(part), np.int64(n), np.int32(c), np.int32(cg)) + extra)
    _per_row_launch(rt, "per_row_param_finalize", _channel_grid(c),
                 (_ptr(part), np.int32(c), np.int32(nsplit), _ptr(dscale), _ptr(dbias)))


# -- rows x channels: (..., C) data, kernels/norm/rows_channels.cu ----------------------------------

ROWS_SOURCE = "norm/rows_channels.cu"


def _rows_launch(rt, name, grid, args):
    _launch_in(ROWS_SOURCE, rt, name, grid, args)


def _rows_shape(shape):
    """(R, C) of (..., C) data."""
    c = int(shape[-1])
    r = 1
    for d in shape[:-1]:
        r *= int(d)
    return r, c


def _rows_vector(c, dtype, *arrays):
    """'_vec' (16-byte packs along C) when every data pointer is 16-byte aligned and C is a whole
    number of packs, so no pack straddles two rows."""
    return _vector(c, dtype, *arrays)


def _rows_setup(x, *others):
    """(runtime, dtype suffix, R, C, vec, width) of a rows x channels call on data x and the other
    data arrays (None where absent)."""
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, *others)
    r, c = _rows_shape(x.shape)
    vec, width = _rows_vector(c, x.dtype, x, *others)
    return rt, suffix, r, c, vec, width


# rows per rows x channels reduction block at least (16 per warp, four batches of the kernels'
# 4-row loads): each block writes a partial record per channel, so fewer, longer row ranges move
# fewer partial bytes per element (at 8 rows per warp a 4096 x 1024 float32 pass wrote and read
# 22% more than its data)
ROWS_MIN_BLOCK_ROWS = 128


def _rows_resident(rt, name):
    """Blocks of reduction ``name`` the device holds at once (SMs x blocks per SM by threads,
    registers and shared memory), or TARGET_BLOCKS where the kernel's figures are unknown."""
    if not _launches_on_device(rt):
        rt = config.backend_module().runtime()  # plan a recorded launch for the active device
    fn = rt.functions_of(ROWS_SOURCE)[name]
    if not fn.num_regs:
        return TARGET_BLOCKS
    per_sm = _blocks_per_sm(rt, fn, fn.shared_size_bytes)
    sms = rt.device.get_attribute(rt.api.driver.device_attribute.MULTIPROCESSOR_COUNT)
    return max(1, per_sm) * sms


def _rows_reduction(r, c, width, rt=None, name=None):
    """Grid and nsplit of a rows x channels reduction: channel tiles of 32 lanes of ``width``
    channels, row splits of at least ROWS_MIN_BLOCK_ROWS rows, as many as the device holds at once
    (one wave of reduction ``name``, TARGET_BLOCKS without it), and few enough rows per block for
    exact float counts. Fixed by the shape and the device, so the merge order is too."""
    tiles = -(-c // (32 * width))
    slots = _rows_resident(rt, name) if name else TARGET_BLOCKS
    nsplit = max(1, min(slots // tiles, r // ROWS_MIN_BLOCK_ROWS))
    nsplit = max(nsplit, -(-r // MAX_BLOCK_ELEMENTS))
    if nsplit > MAX_GRID_Y:
        raise ValueError("%d rows are too many for the CUDA rows x channels kernels" % r)
    return (tiles, nsplit), nsplit


def _rows_padded(c):
    """Channels per field of the reductions' planar partials: C rounded up to 8 floats (whole
    32-byte sectors; rows_channels.cu's padded_channels)."""
    return -(-c // 8) * 8


def rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                       relu=False):
    rt, suffix, r, c, vec, width = _rows_setup(x, out)
    if r < 1:
        return
    plan = _rows_persist_plan(rt, "forward", suffix + vec, width, x.dtype.itemsize, 1, r, c)
    if plan is not None:  # one single-read launch
        part = rt.empty((_rows_padded(c) * plan.nsplit * STATS_PARTIAL,), np.float32)
        _persist_launch(rt, plan, (plan.groups, plan.nsplit), ROWS_SOURCE,
                        (_ptr(x), _ptr(out), _ptr(part), _ptr(_persist_counters(rt, plan.groups)),
                         np.int64(r), np.int32(c), np.float64(eps), np.float64(factor),
                         _ptr(scale), _ptr(bias), _ptr(savemean), _ptr(saveinvvar),
                         _ptr(run_mean), _ptr(run_var), np.int32(1 if relu else 0)))
        return
    name = "rc_stats_partial_" + suffix + vec
    grid, nsplit = _rows_reduction(r, c, width, rt, name)
    part = rt.empty((_rows_padded(c) * nsplit * STATS_PARTIAL,), np.float32)
    a = rt.empty((c,), np.float32)
    _rows_launch(rt, name, grid,
                 (_ptr(x), _ptr(part), np.int64(r), np.int32(c))
                 + _stats_out(rt, grid, eps, factor, scale, savemean, saveinvvar, a, run_mean,
                              run_var))
    _rows_normalize(rt, suffix + vec, x, out, savemean, a, bias, r, c, width, relu)


# A single-read launch plan: entry name, compiled function, blocks a channel (tile), shared-memory
# slots per thread and array, dynamic shared bytes a block, channel groups (walking grids) or
# channels / channel tiles.
PersistPlan = collections.namedtuple("PersistPlan", "name fn nsplit slots shared groups")


def _rows_persist_plan(rt, kind, suffix, width, itemsize, arrays, r, c):
    """The PersistPlan (groups: the channel tiles) of the rows x channels single-read entry
    rc_persist_<kind>_<suffix> (rows_channels.cu), or None where the data cannot stay on chip (or
    BATCHNORM_LIB_SINGLE_READ=0): the reductions' (tiles, nsplit) grid, each block holding its
    split's rows of ``arrays`` data arrays, slots = rows per warp packs per thread and array. The
    same rule as the NCHW plan (_resident_split): with nsplit > 1 the device holds every block at
    once (occupancy from registers, shared memory and SMs; the simulator's waiting cap; never under
    the sanitizer), nsplit 1 at any grid size; no split without rows (fewer splits of the same rows
    each where the last would be empty). No walking groups: a tensor the device cannot hold at once
    takes the two-pass kernels."""
    if os.environ.get(SINGLE_READ_ENV, "1") == "0":
        return None
    name = "rc_persist_%s_%s" % (kind, suffix)
    rt, fn, waiting_cap, sms, per_sm, resident_with, dynamic_max = _persist_device(
        rt, ROWS_SOURCE, name)
    tiles = -(-c // (32 * width))

    def fit(nsplit):
        chunk = -(-r // nsplit)
        if nsplit > MAX_GRID_Y:
            return None
        slots = -(-chunk // WARPS_PER_BLOCK)
        shared = slots * BLOCK * width * itemsize * arrays
        if shared > dynamic_max:
            return None
        return slots, shared, resident_with(shared)

    found = _resident_split(rt, fit, tiles, r * 32, width, waiting_cap, sms, per_sm)
    if found is None:
        return None
    nsplit, slots, shared = found
    # only the splits that hold rows: ceil(R / nsplit) rows each leaves the last ones empty where
    # nsplit does not divide R finely (12544 rows over 132: 131 splits of 96 hold them all)
    nsplit = -(-r // -(-r // nsplit))
    return PersistPlan(name, fn, nsplit, slots, shared, tiles)


def _rows_elementwise_grid(r, c, width):
    """Elementwise grid of a rows x channels pass: its threads walk whole rows, each keeping one
    column of C / width packs, so at least one row of threads."""
    cols = c // width
    return (max(_elementwise_grid(r * cols)[0], -(-cols // BLOCK)),)


def _rows_normalize(rt, kind, x, out, mean, a, bias, r, c, width, relu):
    _rows_launch(rt, _relu("rc_normalize", relu) + "_" + kind, _rows_elementwise_grid(r, c, width),
                 (_ptr(x), _ptr(out), _ptr(mean), _ptr(a), _ptr(bias), np.int64(r), np.int32(c)))


def rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    """One launch: the kernel computes a = scale / sqrt(run_var + eps) per channel itself."""
    rt, suffix, r, c, vec, width = _rows_setup(x, out)
    if r < 1:
        return
    _rows_launch(rt, _relu("rc_normalize_infer", relu) + "_" + suffix + vec,
                 _rows_elementwise_grid(r, c, width),
                 (_ptr(x), _ptr(out), _ptr(run_mean), _ptr(scale), _ptr(run_var), np.float64(eps),
                  _ptr(bias), np.int64(r), np.int32(c)))


def rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    mask, masks = _mask(y, dy)
    rt, suffix, r, c, vec, width = _rows_setup(x, dy, dx, *masks)
    if r < 1:
        return
    # (without dx the two-pass reduction alone reads the data once)
    plan = dx is not None and _rows_persist_plan(
        rt, _relu("backward", mask), suffix + vec, width, x.dtype.itemsize, 2, r, c)
    if plan:  # one single-read launch
        part = rt.empty((_rows_padded(c) * plan.nsplit * SUM_PARTIAL,), np.float32)
        _persist_launch(rt, plan, (plan.groups, plan.nsplit), ROWS_SOURCE,
                        (_ptr(x), _ptr(dy)) + mask
                        + (_ptr(savemean), _ptr(dx), _ptr(part),
                           _ptr(_persist_counters(rt, plan.groups)), np.int64(r), np.int32(c),
                           _ptr(scale), _ptr(saveinvvar), _ptr(dscale), _ptr(dbias)))
        return
    name = _relu("rc_backward_partial", mask) + "_" + suffix + vec
    grid, nsplit = _rows_reduction(r, c, width, rt, name)
    part = rt.empty((_rows_padded(c) * nsplit * SUM_PARTIAL,), np.float32)
    coef = rt.empty((c * 3,), np.float32)
    _rows_launch(rt, name, grid,
                 (_ptr(x), _ptr(dy)) + mask + (_ptr(savemean), _ptr(part), np.int64(r),
                                               np.int32(c))
                 + _sums_out(rt, grid, scale, saveinvvar, dscale, dbias, coef))
    if dx is not None:
        _rows_launch(rt, _relu("rc_backward_train", mask) + "_" + suffix + vec,
                     _rows_elementwise_grid(r, c, width),
                     (_ptr(x), _ptr(dy)) + mask + (_ptr(savemean), _ptr(coef), _ptr(dx),
                                                   np.int64(r), np.int32(c)))


def rows_backward_infer(dy, scale, run_var, eps, dx, y=None):
    mask, masks = _mask(y, dy)
    rt, suffix, r, c, vec, width = _rows_setup(dy, dx, *masks)
    if r < 1:
        return
    _rows_launch(rt, _relu("rc_backward_infer", mask) + "_" + suffix + vec,
                 _rows_elementwise_grid(r, c, width),
                 (_ptr(dy),) + mask + (_ptr(scale), _ptr(run_var), np.float64(eps), _ptr(dx),
                                       np.int64(r), np.int32(c)))


# -- single-read training passes: kernels/norm/persistent.cu ---------------------------------------
# Where a channel fits one block, or every block of a split channel can be resident at once, one
# launch keeps the data on chip between the statistics and the elementwise pass (8 bytes per
# float32 element forward, 12 backward, instead of 12 and 20); otherwise the two-pass kernels
# above run.

PERSIST_SOURCE = "norm/persistent.cu"
# BATCHNORM_LIB_SINGLE_READ=0 keeps every training pass on the two-pass kernels (read at each call):
# the simulator's device holds every test-sized tensor, so the test suite runs once with the
# single-read path (the default) and once, sanitized, without it (.ci/run)
SINGLE_READ_ENV = "BATCHNORM_LIB_SINGLE_READ"
SMEM_RESERVED = 1024  # shared memory the driver keeps per resident block (compute capability >= 8)
PERSIST_MIN_PACKS = 4  # packs per thread before a channel is split further (2 batches of loads)
# Bytes in flight per SM the plan asks for: ~16 KB is what an H100 needs at ~700 ns (3.0 TB/s x
# 700 ns over 132 SMs, Little's law). The packed entries (8- and 16-byte loads) issue
# PERSIST_AHEAD_BYTES per thread before using any (persistent.cu, kAheadBytes), so one resident
# block of BLOCK threads keeps 16 KiB in flight: such a block may hold a whole channel in up to
# the 227 KiB a block can have, one per SM, the grid running as many waves as that takes. The
# scalar entries issue 2- or 4-byte loads, a batch at a time: they keep at least
# PERSIST_MIN_RESIDENT blocks per SM.
PERSIST_FLIGHT_BYTES = 16 * 1024
PERSIST_AHEAD_BYTES = 64
PERSIST_MIN_RESIDENT = 2
_persist_sync = {}  # id(runtime) -> (runtime, uint32 counters): 2 per channel, zeroed once


def _persistent_plan(rt, kind, suffix, vec, width, itemsize, arrays, n, c, s):
    """The PersistPlan (entry name, function, nsplit, slots, shared bytes, groups) of the
    single-read kernel ``kind`` ("forward" or "backward"), or None when the data cannot stay on
    chip.

    Block (split, channel) holds ``slots`` packs per thread of each of ``arrays`` data arrays in
    shared memory. With nsplit > 1 the grid must fit the device at once, as the blocks of a
    channel wait for each other: resident blocks per SM follow the occupancy rule (threads,
    registers in 256-register warp allocations, shared memory plus SMEM_RESERVED per block) from
    the kernel's registers and the device's limits. nsplit: the most blocks that fit, at most one
    per PERSIST_MIN_PACKS packs per thread unless only a finer split fits; else one block per
    channel (any number of channels: no block waits) where a channel fits one block. Always
    PERSIST_FLIGHT_BYTES in flight per SM on the packed entries (width > 1), at least
    PERSIST_MIN_RESIDENT blocks per SM on the scalar ones. groups: C, or, where no split lets the
    blocks of every channel wait at once, fewer groups of nsplit blocks that the device holds at
    once, each walking its channels in turn (_walking_plan)."""
    if os.environ.get(SINGLE_READ_ENV, "1") == "0":
        return None
    if s == 1 or c > MAX_GRID_Y:
        return None  # spatial size 1 reads a channel C apart: the column kernels are better
    name = "bn_persist_%s_%s%s" % (kind, suffix, vec)
    rt, fn, waiting_cap, sms, per_sm, resident_with, dynamic_max = _persist_device(
        rt, PERSIST_SOURCE, name)
    cols = _persist_cols(s, width)
    packs = n * cols  # walk positions, the padding columns' included
    # shared packs per slot: a column of BLOCK threads, or the S of each cols threads when padded
    held = BLOCK if cols * width == s else BLOCK // cols * s

    def fit(nsplit):
        """(slots, shared bytes, resident blocks per SM) of blocks of 1 / nsplit of a channel, or
        None when such a block's tile is more than a block may hold."""
        chunk = -(-packs // nsplit)
        if cols * width != s:
            chunk = -(-chunk // cols) * cols  # padded blocks start at a row (persistent.cu, Tile)
        slots = -(-chunk // BLOCK)
        shared = slots * held * width * itemsize * arrays
        if shared > dynamic_max:
            return None
        return slots, shared, resident_with(shared)

    found = _resident_split(rt, fit, c, packs, width, waiting_cap, sms, per_sm)
    if found is not None:
        return PersistPlan(name, fn, *found, c)
    if not _blocks_may_wait(rt):
        return None
    return _walking_plan(name, fn, fit, min(packs, sms * per_sm), sms, width, c, waiting_cap)


def _persist_device(rt, source, name):
    """What a single-read plan for entry ``name`` of ``source`` is made from: (runtime, compiled
    entry, the simulator's cap on waiting blocks or None, SMs, blocks per SM by threads and
    registers, resident_with(shared bytes) -> blocks per SM with that much dynamic shared memory,
    the most dynamic shared memory a block may have). A recorded launch (the performance model) is
    planned for the active device."""
    waiting_cap = None
    if not _launches_on_device(rt):
        rt = config.backend_module().runtime()
    elif rt.name == "cudasim":
        waiting_cap = _simulator_waiting_blocks()
    fn = rt.functions_of(source)[name]
    attr = rt.api.driver.device_attribute
    dev = rt.device
    per_sm = _blocks_per_sm(rt, fn)
    smem_sm = dev.get_attribute(attr.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
    dynamic_max = dev.get_attribute(attr.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) - fn.shared_size_bytes

    def resident_with(shared):
        return min(per_sm, smem_sm // (fn.shared_size_bytes + shared + SMEM_RESERVED))

    return (rt, fn, waiting_cap, dev.get_attribute(attr.MULTIPROCESSOR_COUNT), per_sm,
            resident_with, dynamic_max)


def _resident_split(rt, fit, units, packs, width, waiting_cap, sms, per_sm):
    """(nsplit, slots, shared bytes) of a single-read grid of ``units`` x nsplit blocks (channels,
    or channel tiles) that the device holds at once, or None. ``fit(nsplit)``: (slots, shared,
    resident blocks per SM) of a block of 1 / nsplit of a unit, or None where it cannot be held;
    ``packs``: a unit's loads of one thread each. The most blocks first (bytes in flight), each
    thread PERSIST_MIN_PACKS packs at least where the data allows; nsplit 1 (no block waits) at
    any grid size."""
    fills = [sms * k // units for k in range(per_sm, 0, -1)]
    work = max(1, packs // (BLOCK * PERSIST_MIN_PACKS))
    tried = set()
    for nsplit in [min(f, work) for f in fills] + fills + [1]:
        if nsplit in tried or not 1 <= nsplit <= packs:
            continue
        tried.add(nsplit)
        if nsplit > 1 and (not _blocks_may_wait(rt)
                           or (waiting_cap is not None and units * nsplit > waiting_cap)):
            continue
        tile = fit(nsplit)
        if tile is None:
            continue
        slots, shared, resident = tile
        if resident < _persist_min_resident(width):
            continue
        if nsplit == 1 or units * nsplit <= sms * resident:
            return nsplit, slots, shared
    return None


WALK_MIN_USE = 0.75  # the least share of the grid's block-steps a walking plan may leave busy
WALK_USE_SLACK = 0.02  # walking plans this close to the best share count as equal
# Most blocks a walking plan splits a channel over: each channel costs its group a barrier of that
# many blocks, a wait the byte count does not show; larger channels keep the two-pass kernels.
WALK_MAX_SPLIT = 16


def _walking_plan(name, fn, fit, most, sms, width, c, waiting_cap):
    """The single-read plan for channels too large for the device to hold every channel's blocks at
    once: G groups of nsplit blocks, G * nsplit resident together, group g taking channels g,
    g + G, ... (persistent.cu). Of the splits whose tile fits, the one whose block-steps are most
    often busy, use = C * nsplit / (ceil(C / G) * SMs * resident per SM); among those within
    WALK_USE_SLACK of it, the most resident blocks per SM (bytes in flight; at least
    PERSIST_MIN_RESIDENT), then the fewest blocks a channel. None below WALK_MIN_USE: reading x
    twice at full occupancy is then faster (12 bytes an element against 8 / use); None where a
    channel needs more than WALK_MAX_SPLIT. ``fit``: _persistent_plan's tile rule; ``most``: the
    most blocks a channel may have."""
    options = []
    for nsplit in range(2, min(most, WALK_MAX_SPLIT) + 1):
        tile = fit(nsplit)
        if tile is None:
            continue
        slots, shared, resident = tile
        # at least PERSIST_MIN_RESIDENT blocks per SM whatever the loads: a block waiting at its
        # channel's barrier leaves its SM another one to run
        if resident < max(_persist_min_resident(width), PERSIST_MIN_RESIDENT):
            continue
        groups = min(c, sms * resident // nsplit)
        if waiting_cap is not None:
            groups = min(groups, waiting_cap // nsplit)
        if groups < 1:
            continue
        use = c * nsplit / (-(-c // groups) * sms * resident)
        plan = PersistPlan(name, fn, nsplit, slots, shared, groups)
        options.append((use, resident, nsplit, plan))
    if not options:
        return None
    top = max(o[0] for o in options)
    if top < WALK_MIN_USE:
        return None
    return max((o for o in options if o[0] >= top - WALK_USE_SLACK),
               key=lambda o: (o[1], -o[2]))[3]


def _persist_min_resident(width):
    """Resident blocks per SM a plan needs (see PERSIST_FLIGHT_BYTES)."""
    if width > 1:
        return -(-PERSIST_FLIGHT_BYTES // (BLOCK * PERSIST_AHEAD_BYTES))
    return PERSIST_MIN_RESIDENT


def _persist_cols(s, width):
    """Positions per row of the kernels' walk (persistent.cu, Tile): S / width, or on the scalar
    entries a row padded to the power of two cols <= BLOCK with S >= 3/4 cols (7x7: 64), so each
    warp request stays within one row (at most a quarter of the threads idle)."""
    if width > 1:
        return s // width
    cols = 32
    while cols < s:
        cols *= 2
    return cols if s < cols <= BLOCK and 4 * s >= 3 * cols else s


def _persist_vector(s, dtype, *arrays):
    """(suffix, elements per pack) of the single-read entries: 16-byte packs (_vec) as _vector
    gives them, else 8-byte packs (_vec8) where rows are a multiple of 8 bytes and every pointer is
    8-byte aligned, else one element per load."""
    vec, width = _vector(s, dtype, *arrays)
    half = 8 // np.dtype(dtype).itemsize
    if width == 1 and s % half == 0 and all(int(a.ptr) % 8 == 0 for a in arrays if a is not None):
        return "_vec8", half
    return vec, width


def _blocks_may_wait(rt):
    """False under the simulator's sanitizer, which follows one block's accesses at a time (a block
    set aside to let another run is re-entered with a fresh history, so waiting blocks would be
    reported falsely): there the single-read path runs only where a channel fits one block."""
    if rt.name != "cudasim":
        return True
    from batchnorm_lib.backend.cudasim import instrument

    return not instrument.sanitizing()


@functools.lru_cache(maxsize=None)
def _simulator_waiting_blocks():
    """Blocks the simulator can hold set aside at once: each keeps BLOCK fiber stacks, each stack a
    memory mapping plus a guard page's, and Linux caps a process's mappings (vm.max_map_count,
    65530 by default); half of them are left for everything else."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            maps = int(f.read())
    except (OSError, ValueError):
        maps = 65530
    return maps // 2 // (2 * BLOCK)


def _launches_on_device(rt):
    """False for a runtime that only records launches (the performance model's full-shape replay):
    such a runtime has no device or compiled functions of its own."""
    return hasattr(rt, "functions_of")


def _persist_counters(rt, c):
    """The arrival/generation counters of C channels: zero once, and every launch leaves them so."""
    if not _launches_on_device(rt):
        return rt.empty((2 * c,), np.uint32)
    held = _persist_sync.get(id(rt))
    if held is None or held[1].size < 2 * c:
        held = (rt, rt.zeros((2 * max(c, 64),), np.uint32))
        _persist_sync[id(rt)] = held
    return held[1]


def _persist_launch(rt, plan, grid, source, args, tiles=None):
    """Launch a single-read plan on ``grid`` (persistent.cu: (nsplit, groups); rows_channels.cu:
    (channel tiles, nsplit)) of ``source``; ``tiles``: the work a walking grid takes in turn, for
    a recorded launch (Runtime.launch)."""
    name, fn, shared = plan.name, plan.fn, plan.shared
    if not _launches_on_device(rt):
        rt.launch(name, grid, args, source=source, shared=shared, tiles=tiles)
        return
    if shared + fn.shared_size_bytes > 48 * 1024:  # above 48 KiB in all a kernel must opt in
        fn.set_attribute(rt.api.driver.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)
    try:
        fn(*args, block=(BLOCK, 1, 1), grid=grid + (1,), shared=shared)
        if rt.sync_each_launch:
            rt.api.driver.Context.synchronize()
    except Exception:
        _persist_sync.pop(id(rt), None)  # a launch cut short may leave counters mid-count
        raise


def _persistent_forward(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                        relu):
    """forward_train in one single-read launch when the tensor fits on chip; False otherwise."""
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, out)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return False
    vec, width = _persist_vector(s, x.dtype, x, out)
    plan = _persistent_plan(rt, "forward", suffix, vec, width, x.dtype.itemsize, 1, n, c, s)
    if plan is None:
        return False
    part = rt.empty((c * plan.nsplit * STATS_PARTIAL,), np.float32)
    _persist_launch(rt, plan, (plan.nsplit, plan.groups), PERSIST_SOURCE,
                    (_ptr(x), _ptr(out), _ptr(part), _ptr(_persist_counters(rt, c)), np.int64(n),
                     np.int32(c), np.int64(s), np.int64(_persist_cols(s, width)),
                     np.float64(eps), np.float64(factor), _ptr(scale),
                     _ptr(bias), _ptr(savemean), _ptr(saveinvvar), _ptr(run_mean), _ptr(run_var),
                     np.int32(1 if relu else 0)), tiles=plan.nsplit * c)
    return True


def _persistent_backward(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y):
    """backward_train in one single-read launch when the tensors fit on chip; False otherwise
    (and without dx, which the two-pass reduction already reads once)."""
    if dx is None:
        return False
    rt = _runtime()
    suffix = _suffix(rt, x.dtype, dy, dx, y)
    n, c, s = _ncs(x.shape)
    if n * s < 1:
        return False
    vec, width = _persist_vector(s, x.dtype, x, dy, dx, y)
    plan = _persistent_plan(rt, "backward", suffix, vec, width, x.dtype.itemsize, 2, n, c, s)
    if plan is None:
        return False
    part = rt.empty((c * plan.nsplit * SUM_PARTIAL,), np.float32)
    _persist_launch(rt, plan, (plan.nsplit, plan.groups), PERSIST_SOURCE,
                    (_ptr(x), _ptr(dy), np.uintp(0) if y is None else _ptr(y), _ptr(dx),
                     _ptr(part), _ptr(_persist_counters(rt, c)), np.int64(n), np.int32(c),
                     np.int64(s), np.int64(_persist_cols(s, width)), np.int32(plan.slots),
                     _ptr(scale), _ptr(savemean), _ptr(saveinvvar), _ptr(dscale), _ptr(dbias)),
                    tiles=plan.nsplit * c)
    return True


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
