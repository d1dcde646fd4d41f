"""``python -m batchnorm_lib model``: every normalization pass of the library, modelled on an H100.

For each case (op, shape, dtype, pass; see OPS: BatchNorm in both layouts, with and without the
fused ReLU, and LayerNorm, GroupNorm and InstanceNorm2D) the report runs the pass on the ``cudasim``
backend under the simulator's traffic counters (:func:`batchnorm_lib.backend.cudasim.profile`) at
a reduced size, and replays the same call at the full shape through a recording runtime that
keeps the launches (kernel, grid) without running them. From the counters: DRAM bytes per element
(distinct 32-byte sectors x 32, per launch, summed) next to the byte floor, and the sector
efficiency (ideal sectors over the sectors the warps touch, where a warp request's ideal is its
distinct bytes packed from its lowest address: ceil((lowest % 32 + distinct bytes) / 32)). From
the compiler (:mod:`.sass`) and :mod:`.h100`, for each launch of the full shape: registers,
occupancy, waves, loads and bytes in flight, and the modelled time; the pass's bandwidth fraction
is its bytes over achievable bandwidth, divided by its modelled time, at 600, 700 and 800 ns.

Why the reduced size stands for the full one: every kernel here touches each element a fixed
number of times through the same code path (the path depends on the dtype, the spatial size, the
row length, C's multiple of the pack and alignment, which the reduction keeps: only N, then C (or
the number of rows), shrink), so the bytes and sectors per element are the full shape's; the
per-channel work (partials, finalize) is a small term that the reduction overstates, if anything.
Tensors that fit in the 50 MB L2 may move fewer DRAM bytes than the counters' distinct sectors say.
"""

import contextlib
import json
import math
import os
import sys

import numpy as np

from batchnorm_lib.kernels.norm.cuda import SINGLE_READ_ENV
from batchnorm_lib.model import h100, sass

DTYPES = ("float32", "float16", "bfloat16")
BN_PASSES = ("forward train", "backward train", "forward infer", "forward train relu",
             "backward train relu", "forward infer relu")
ROW_PASSES = ("forward", "backward")

# What runs each case, as the modules call the kernels (kernels/norm/__init__.py):
#   bn            BatchNorm*D on channels-first data (N, C, *spatial); (N, C) data goes through the
#                 rows x channels entries, as the BatchNorm module sends it
#   nhwc          BatchNorm2D(layout="channels_last") on (N, H, W, C): the rows x channels entries
#   layernorm     LayerNorm over the last axis of (R, L): per_row_forward / per_row_backward
#   groupnorm32   GroupNorm(32, C) on (N, C, H, W)
#   instancenorm  InstanceNorm2D(C) on (N, C, H, W)
OPS = ("bn", "nhwc", "layernorm", "groupnorm32", "instancenorm")
GROUPS = 32  # groupnorm32

# ResNet-50 at batch 256 (every BatchNorm2D shape), in both layouts; small batches; two (N, C)
# shapes, one larger than L2, one inside it; the normalization family's benchmark shapes.
RESNET = ((256, 64, 112, 112), (256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14),
          (256, 2048, 7, 7))
SHAPES = tuple(("bn", s) for s in RESNET) + (
    ("bn", (8, 64, 112, 112)), ("bn", (8, 256, 56, 56)), ("bn", (16, 1024, 14, 14)),
    ("bn", (32, 2048, 7, 7)), ("bn", (8192, 4096)), ("bn", (4096, 1024)),
) + tuple(("nhwc", (n, h, w, c)) for n, c, h, w in RESNET) + (
    ("layernorm", (4096, 1024)), ("layernorm", (8192, 768)),
    ("groupnorm32", (32, 256, 28, 28)), ("instancenorm", (32, 64, 56, 56)),
)
QUICK_SHAPES = (("bn", (256, 64, 112, 112)), ("bn", (256, 2048, 7, 7)), ("bn", (8192, 4096)),
                ("nhwc", (256, 112, 112, 64)), ("layernorm", (4096, 1024)),
                ("groupnorm32", (32, 256, 28, 28)))
SIM_ELEMENTS = 1 << 16        # simulated elements per case at most (the counted build is slow)
QUICK_SIM_ELEMENTS = 1 << 15
MIN_SIM_CHANNEL_ELEMENTS = 512
ROWS_SIM_CHANNELS = 256
# The single-read floors hold when what one statistic covers can stay on chip between the
# statistics and the normalization: a batch-norm channel spans the whole tensor, so the whole
# tensor must fit in the SMs' shared memory; a per-row norm's row need only fit in one block's.
ON_CHIP_BYTES = h100.SMS * h100.SHARED_PER_BLOCK_MAX
ON_CHIP_ROW_BYTES = h100.SHARED_PER_BLOCK_MAX
HEAVY_SHARE = 0.1             # launches with at least this share of a pass's bytes are its main ones


def passes(op):
    return BN_PASSES if op in ("bn", "nhwc") else ROW_PASSES


def parse_shape(text):
    """'256x64x112x112' -> ('bn', (256, 64, 112, 112)); 'nhwc:256x56x56x256' ->
    ('nhwc', (256, 56, 56, 256)); ops as in OPS."""
    import argparse

    op, _, dims = text.rpartition(":")
    op = op.lower() or "bn"
    if op not in OPS:
        raise argparse.ArgumentTypeError("unknown op %r in %r (ops: %s)" % (op, text,
                                                                            ", ".join(OPS)))
    try:
        shape = tuple(int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("must be [OP:]NxC[xHxW...] positive integers, got %r"
                                         % text) from None
    rank = {"bn": (2, 8), "nhwc": (3, 8), "layernorm": (2, 2), "groupnorm32": (3, 8),
            "instancenorm": (4, 4)}[op]
    if not rank[0] <= len(shape) <= rank[1] or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError("%s needs %d to %d positive sizes, got %r"
                                         % (op, rank[0], rank[1], text))
    if op == "groupnorm32" and shape[1] % GROUPS:
        raise argparse.ArgumentTypeError("groupnorm32 needs C divisible by %d, got %r"
                                         % (GROUPS, text))
    return op, shape


def shape_text(shape):
    return "x".join(str(d) for d in shape)


def case_text(op, shape):
    return shape_text(shape) if op == "bn" else "%s:%s" % (op, shape_text(shape))


def _rows(op, shape):
    """Rows and row length of a per-row op's data (LayerNorm, GroupNorm, InstanceNorm2D)."""
    if op == "layernorm":
        return shape[0], shape[1]
    n, c, s = shape[0], shape[1], int(np.prod(shape[2:]))
    groups = GROUPS if op == "groupnorm32" else c
    return n * groups, c // groups * s


def floor_bytes(pass_name, shape, itemsize, op="bn"):
    """Fewest DRAM bytes per element the pass must move: data arrays read and written, counting
    twice the input a two-pass kernel must read again when its slice cannot stay on chip."""
    elements = int(np.prod(shape))
    if op == "bn" and len(shape) > 2:
        # the whole tensor across the SMs, or one channel in one block (blocks then need not wait
        # for each other, so they need not be resident together)
        channel = elements // shape[1]
        on_chip = (elements * itemsize <= ON_CHIP_BYTES
                   or channel * itemsize <= ON_CHIP_ROW_BYTES)
    elif op in ("bn", "nhwc"):
        on_chip = elements * itemsize <= ON_CHIP_BYTES
    else:
        on_chip = _rows(op, shape)[1] * itemsize <= ON_CHIP_ROW_BYTES
    if pass_name.startswith("forward infer"):
        reads_writes = 2          # x read, y written
    elif pass_name.startswith("forward"):
        reads_writes = 2 if on_chip else 3  # the statistics read x once more
    elif pass_name == "backward train relu":
        reads_writes = 4 if on_chip else 7  # x, dy and the output y twice, dx written
    else:  # backward: x and dy read once (twice without the single-read path), dx written
        reads_writes = 3 if on_chip else 5
    return reads_writes * itemsize


def reduced_shape(shape, budget, op="bn"):
    """The shape simulated for ``shape``: at most ``budget`` elements where the op allows,
    keeping what decides the kernels' code path (spatial sizes, row lengths, channels per
    group, and C's multiple of the 16-byte pack along C); a batch-norm channel keeps at least
    MIN_SIM_CHANNEL_ELEMENTS values (or all it has) so per-channel traffic stays a small term."""
    if op == "layernorm":
        return (min(shape[0], max(1, budget // shape[1])), shape[1])
    if op in ("groupnorm32", "instancenorm"):
        n, c, rest = shape[0], shape[1], shape[2:]
        per_channel = int(np.prod(rest))
        cpg = c // GROUPS if op == "groupnorm32" else 1
        groups = min(c // cpg, max(1, budget // (cpg * per_channel)))
        c = groups * cpg
        return (min(n, max(1, budget // (c * per_channel))), c) + tuple(rest)
    if op == "nhwc" or len(shape) == 2:
        # rows x channels: the kernels see (rows, C) whatever the leading axes, so the simulated
        # shape is (rows, C'), C' keeping C's multiple of 8 (the 16-byte pack along C)
        # and at least ROWS_SIM_CHANNELS of them, so a warp's lanes cover whole 16-byte packs of
        # channels as at the full shape (a 32-lane tile of packs is 128 float32 channels)
        r, c = int(np.prod(shape[:-1])), shape[-1]
        keep = min(c, max(ROWS_SIM_CHANNELS, budget // max(1, r)))
        if c % 8 == 0:
            keep -= keep % 8
        return (min(r, max(MIN_SIM_CHANNEL_ELEMENTS, budget // keep)), keep)
    n, c, rest = shape[0], shape[1], shape[2:]
    s = int(np.prod(rest)) if rest else 1
    n_min = min(n, max(2, -(-MIN_SIM_CHANNEL_ELEMENTS // s)))
    c = min(c, max(1, budget // (n_min * s)))
    n = min(n, max(n_min, budget // (c * s)))
    return (n, c) + tuple(rest)


class _FakeArray:
    """Just what the launch code reads of an array: shape, dtype, size and a 256-byte aligned ptr."""

    def __init__(self, shape, dtype, ptr):
        self.shape, self.dtype, self.ptr = tuple(shape), np.dtype(dtype), ptr
        self.size = int(np.prod(self.shape))


class _Recorder:
    """A runtime that records (kernel, grid, source) instead of launching: the full shape's launch
    configuration, computed by the same code that launches it."""

    def __init__(self, real):
        self.name = real.name
        self._dtypes = real.supported_dtypes()
        self.launches = []
        self.shared = {}  # kernel -> dynamic shared memory per block of its launches (single-read)
        self.tiles = {}  # kernel -> blocks' worth of work its resident grid walks (Runtime.launch)
        self._next = 1 << 20

    def supported_dtypes(self):
        return self._dtypes

    def empty(self, shape, dtype=np.float32):
        return self.array(shape, dtype)

    def to_gpu(self, ary):
        return self.array(ary.shape, ary.dtype)

    def array(self, shape, dtype):
        a = _FakeArray(shape, dtype, self._next)
        self._next += -(-a.size * a.dtype.itemsize // 256) * 256 + 256
        return a

    def launch(self, name, grid, args, source=None, shared=0, tiles=None):
        self.launches.append((name, tuple(int(g) for g in grid), source))
        if shared:
            self.shared[name] = int(shared)
        if tiles is not None:
            self.tiles[name] = int(tiles)


@contextlib.contextmanager
def _recording(impl, real):
    """Route ``impl``'s launches (a kernels/<op>/cuda.py module) to a recorder for the block: the
    runtime's own launches and those of ``impl._launch_in`` (entries of other sources). The
    recorder has no ``functions_of``: launch code may take that as "no device behind it"."""
    recorder = _Recorder(real)
    saved = impl._runtime, getattr(impl, "_launch_in", None)
    impl._runtime = lambda: recorder
    if saved[1] is not None:
        impl._launch_in = lambda source, rt, name, grid, args: recorder.launch(name, grid, args,
                                                                              source)
    try:
        yield recorder
    finally:
        impl._runtime = saved[0]
        if saved[1] is not None:
            impl._launch_in = saved[1]


def _call(op, pass_name, impl, alloc, shape, dtype):
    """Run one pass of ``op`` through ``impl`` with arrays from ``alloc(shape, dtype, fill)``."""
    x, dy = alloc(shape, dtype, "x"), alloc(shape, dtype, "dy")
    out = alloc(shape, dtype, None)
    if op in ("bn", "nhwc"):
        rows = op == "nhwc" or len(shape) == 2
        c = shape[-1] if rows else shape[1]
        vec = lambda v: alloc((c,), np.float32, v)  # noqa: E731
        scale, bias, run_mean, run_var = vec(1.5), vec(0.25), vec(0.0), vec(1.0)
        fn = lambda name: getattr(impl, ("rows_" if rows else "") + name)  # noqa: E731
        relu = pass_name.endswith(" relu")
        if pass_name.startswith("forward train"):
            fn("forward_train")(x, scale, bias, run_mean, run_var, 1e-5, 0.1, out, vec(0.0),
                                vec(0.0), relu=relu)
        elif pass_name.startswith("forward infer"):
            fn("forward_infer")(x, scale, bias, run_mean, run_var, 1e-5, out, relu=relu)
        elif pass_name.startswith("backward train"):
            y = alloc(shape, dtype, "x") if relu else None
            fn("backward_train")(x, dy, scale, vec(0.0), vec(1.0), out, vec(0.0), vec(0.0), y=y)
        else:
            raise ValueError("unknown pass %r" % pass_name)
        return
    rows, length = _rows(op, shape)
    if op == "layernorm":
        groups, spatial, c = 1, 1, length
    else:
        groups = GROUPS if op == "groupnorm32" else shape[1]
        spatial, c = int(np.prod(shape[2:])), shape[1]
    vec = lambda n, v: alloc((n,), np.float32, v)  # noqa: E731
    scale, bias = vec(c, 1.5), vec(c, 0.25)
    if pass_name == "forward":
        impl.per_row_forward(x, scale, bias, groups, spatial, 1e-5, out, vec(rows, 0.0),
                             vec(rows, 0.0))
    elif pass_name == "backward":
        impl.per_row_backward(x, dy, scale, vec(rows, 0.0), vec(rows, 1.0), groups, spatial, out,
                              vec(c, 0.0), vec(c, 0.0))
    else:
        raise ValueError("unknown pass %r" % pass_name)


def _sim_alloc(gpuarray, rng):
    def alloc(shape, dtype, fill):
        if fill is None:
            return gpuarray.empty(shape, dtype)
        if isinstance(fill, str):
            data = rng.standard_normal(shape).astype(np.float32)
        else:
            data = np.full(shape, fill, np.float32)
        return gpuarray.to_gpu(data.astype(dtype))
    return alloc


def _static(kernel, grid, block, source=None, shared=0, tiles=None):
    """Compiler figures of one full-shape launch, or None without nvcc/nvdisasm. ``source``: the
    kernel's .cu under kernels/ (None: the runtime's own sources, searched); ``shared``: its
    dynamic shared memory per block, which bounds its resident blocks; ``tiles``: the work its
    resident grid walks, in blocks (waves count it)."""
    from batchnorm_lib import model
    from batchnorm_lib.backend.cuda.core import KERNEL_DIR, SOURCES

    # a launch through the runtime names no source: any of the norm sources may hold it
    norm = sorted("norm/" + f for f in os.listdir(os.path.join(KERNEL_DIR, "norm"))
                  if f.endswith(".cu"))
    for name in ((source,) if source else tuple(SOURCES) + tuple(norm)):
        path = os.path.join(KERNEL_DIR, name)
        try:
            if kernel in sass.compile_cubin(path)[1]:
                return model.analyze_kernel(path, kernel, grid, block, shared, tiles=tiles)
        except sass.ToolError:
            return None
    return None


@contextlib.contextmanager
def _environment(name, value):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def _dtype(name):
    if name == "bfloat16":
        from batchnorm_lib.backend.cuda.core import bfloat16_dtype
        return bfloat16_dtype()
    return np.dtype(name)


def model_case(shape, dtype_name, pass_name, budget, rng, latency=h100.LATENCY, op="bn"):
    """Every figure of one (op, shape, dtype, pass); launches listed with their modelled
    figures."""
    from batchnorm_lib import config, kernels
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.backend.cudasim import profile
    from batchnorm_lib.backend.cuda.core import BLOCK

    impl = kernels.implementation("norm", "cudasim")
    real = config.backend_module().runtime()
    dtype = _dtype(dtype_name)
    itemsize = dtype.itemsize
    sim_shape = reduced_shape(shape, budget, op)
    alloc = _sim_alloc(gpuarray, rng)
    with _recording(impl, real) as rec:
        _call(op, pass_name, impl, lambda s, d, f: rec.array(s, d), shape, dtype)
    # the reduced shape fits on chip where the full one may not: it runs the full shape's path
    single_read = any(name.startswith(("bn_persist", "rc_persist"))
                      for name, _, _ in rec.launches)
    with _environment(SINGLE_READ_ENV, "1" if single_read else "0"), profile() as prof:
        _call(op, pass_name, impl, alloc, sim_shape, dtype)
    sim = list(prof.launches)
    full_elements, sim_elements = int(np.prod(shape)), int(np.prod(sim_shape))

    def dram(launch):
        return 32 * (launch.unique_load_sectors + launch.unique_store_sectors)

    sim_bytes = sum(dram(l) for l in sim)
    # a launch moving under a byte per element works per channel (finalize, factors): its bytes
    # scale with its grid, the data passes' with the elements
    sim_blocks = {}
    for l in sim:
        sim_blocks[l.name] = sim_blocks.get(l.name, 0) + int(np.prod(l.grid))
    # ideal sectors, per warp request: its distinct bytes packed from its lowest address (a
    # broadcast of one value needs one sector), counted by the simulator
    def efficiency(kind):
        sectors = sum(getattr(l, kind + "_sectors") for l in sim)
        ideal = sum(getattr(l, "ideal_%s_sectors" % kind) for l in sim)
        return ideal, sectors

    (ideal_ld, sectors_ld), (ideal_st, sectors_st) = efficiency("load"), efficiency("store")
    ideal, sectors = ideal_ld + ideal_st, sectors_ld + sectors_st
    bytes_per_element = sim_bytes / sim_elements
    # each full-shape launch gets the share of bytes its kernel moved in the simulation
    by_name = {}
    for l in sim:
        by_name[l.name] = by_name.get(l.name, 0) + dram(l)
    count = {}
    for name, _, _ in rec.launches:
        count[name] = count.get(name, 0) + 1
    launches = []
    missing = sorted({name for name, _, _ in rec.launches} - set(by_name))
    if missing:  # the reduced shape took another code path: its figures would not carry over
        raise RuntimeError("%s %s %s: the simulated shape %s does not run %s"
                           % (op, shape_text(shape), pass_name, shape_text(sim_shape),
                              ", ".join(missing)))
    for name, grid, source in rec.launches:
        moved = by_name.get(name, 0)
        if moved >= sim_elements or not sim_blocks.get(name):
            full = moved * full_elements / sim_elements / count[name]
        else:
            full = moved * int(np.prod(grid)) / sim_blocks[name]
        entry = {"kernel": name, "grid": list(grid), "block": [BLOCK], "dram_bytes": full}
        static = _static(name, grid, (BLOCK,), source, rec.shared.get(name, 0),
                         rec.tiles.get(name))
        if static is not None:
            entry.update({k: static[k] for k in (
                "registers", "shared_bytes", "spill_stores", "spill_loads", "blocks_per_sm",
                "occupancy", "waves", "tail_wave_fill", "loads_in_flight_per_thread",
                "bytes_in_flight_per_thread", "widest_load_bytes", "bytes_in_flight_per_sm")})
        launches.append(entry)
    full_bytes = sum(l["dram_bytes"] for l in launches)
    for l in launches:
        l["share"] = l["dram_bytes"] / full_bytes if full_bytes else 0.0
    figures = {
        "op": op, "shape": list(shape), "dtype": dtype_name, "pass": pass_name,
        "simulated_shape": list(sim_shape), "launches_per_call": len(rec.launches),
        "simulated_launches": [l.name for l in sim],
        "dram_bytes_per_element": bytes_per_element,
        "floor_bytes_per_element": floor_bytes(pass_name, shape, itemsize, op),
        "sector_efficiency": ideal / sectors if sectors else 1.0,
        "load_sector_efficiency": ideal_ld / sectors_ld if sectors_ld else 1.0,
        "store_sector_efficiency": ideal_st / sectors_st if sectors_st else 1.0,
        "dram_bytes": full_bytes, "launches": launches,
    }
    figures["bytes_over_floor"] = bytes_per_element / figures["floor_bytes_per_element"]
    static_known = all("bytes_in_flight_per_sm" in l for l in launches)
    figures["compiler_figures"] = static_known
    def time(lat):
        return sum(h100.launch_time(l["dram_bytes"], l["bytes_in_flight_per_sm"]
                                    if static_known else math.inf, lat) for l in launches)

    for lat in h100.LATENCY_RANGE + (h100.LATENCY, latency):
        key = "%dns" % round(lat * 1e9)
        figures["modelled_time_us_" + key] = time(lat) * 1e6
        figures["bandwidth_fraction_" + key] = full_bytes / h100.ACHIEVABLE_BANDWIDTH / time(lat)
    figures["latency_ns"] = latency * 1e9
    figures["modelled_time_us"] = time(latency) * 1e6
    figures["bandwidth_fraction"] = full_bytes / h100.ACHIEVABLE_BANDWIDTH / time(latency)
    return figures


def _heavy(launches):
    return [l for l in launches if l["share"] >= HEAVY_SHARE] or launches


def _fmt_list(values, fmt):
    return "/".join(fmt % v for v in values) if values else "-"


COLUMNS = (  # (header, width, function of the case's figures)
    ("shape", 28, lambda f: case_text(f["op"], f["shape"])),
    ("dtype", 8, lambda f: f["dtype"]),
    ("pass", 19, lambda f: f["pass"]),
    ("sim", 14, lambda f: shape_text(f["simulated_shape"])),
    ("launch", 6, lambda f: str(f["launches_per_call"])),
    ("B/el", 5, lambda f: "%.2f" % f["dram_bytes_per_element"]),
    ("floor", 5, lambda f: "%d" % f["floor_bytes_per_element"]),
    ("sector", 6, lambda f: "%.0f%%" % (100 * f["sector_efficiency"])),
    ("regs", 5, lambda f: "%s" % max((l.get("registers", 0) for l in f["launches"]), default=0)
     if f["compiler_figures"] else "-"),
    ("occup", 14, lambda f: _fmt_list([l["occupancy"] for l in _heavy(f["launches"])], "%.2f")
     if f["compiler_figures"] else "-"),
    ("waves", 15, lambda f: _fmt_list([l["waves"] for l in _heavy(f["launches"])], "%.2f")
     if f["compiler_figures"] else "-"),
    ("ld/thr", 8, lambda f: _fmt_list([l["loads_in_flight_per_thread"]
                                       for l in _heavy(f["launches"])], "%d")
     if f["compiler_figures"] else "-"),
    ("KB/SM", 10, lambda f: _fmt_list([l["bytes_in_flight_per_sm"] / 1024
                                       for l in _heavy(f["launches"])], "%.0f")
     if f["compiler_figures"] else "-"),
    ("time us", 8, lambda f: "%.1f" % f["modelled_time_us"]),
    ("bw", 5, lambda f: "%.2f" % f["bandwidth_fraction"]),
    ("bw600", 5, lambda f: "%.2f" % f["bandwidth_fraction_600ns"]),
    ("bw700", 5, lambda f: "%.2f" % f["bandwidth_fraction_700ns"]),
    ("bw800", 5, lambda f: "%.2f" % f["bandwidth_fraction_800ns"]),
)


def table_lines(cases):
    yield "  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w, _) in enumerate(COLUMNS))
    for f in cases:
        yield "  ".join(fn(f).ljust(w) if i < 4 else fn(f).rjust(w)
                        for i, (_, w, fn) in enumerate(COLUMNS))


def markdown_lines(cases):
    """The cases as a Markdown table (docs/benchmarks.md): one row per case, modelled figures."""
    yield ("| case | dtype | pass | launches | B/elem (floor) | sector eff. | modelled us "
           "| bw 600 / 700 / 800 ns |")
    yield "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for f in cases:
        yield ("| %s | %s | %s | %d | %.2f (%d) | %.0f%% | %.1f | %.2f / %.2f / %.2f |"
               % (case_text(f["op"], f["shape"]), f["dtype"], f["pass"], f["launches_per_call"],
                  f["dram_bytes_per_element"], f["floor_bytes_per_element"],
                  100 * f["sector_efficiency"], f["modelled_time_us"],
                  f["bandwidth_fraction_600ns"], f["bandwidth_fraction_700ns"],
                  f["bandwidth_fraction_800ns"]))


def _geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary(cases):
    worst = min(cases, key=lambda f: f["bandwidth_fraction_700ns"])
    return ("summary (modelled, not measured): %d cases, geomean bytes/floor %.3f, geomean "
            "bandwidth fraction %.2f at 700 ns (%.2f at 800 ns), lowest %.2f (%s %s %s)"
            % (len(cases), _geomean([f["bytes_over_floor"] for f in cases]),
               _geomean([f["bandwidth_fraction_700ns"] for f in cases]),
               _geomean([f["bandwidth_fraction_800ns"] for f in cases]),
               worst["bandwidth_fraction_700ns"], case_text(worst["op"], worst["shape"]),
               worst["dtype"], worst["pass"]))


def header_lines(budget, latency):
    yield ("H100 performance model of batchnorm_lib's CUDA kernels: MODELLED figures, not "
           "measured on a GPU.")
    yield ("bytes and sectors: cudasim traffic counters at the simulated (sim) shape, at most %d "
           "elements; per-element figures carry over to the full shape (same code path, fixed "
           "touches per element)." % budget)
    yield ("registers, occupancy, waves (main launches, full shape's grid), ld/thr = global loads "
           "in flight per thread in the main loop (sm_90 SASS), KB/SM = bytes in flight per SM.")
    yield ("time = sum over launches of max(bytes / %.1f TB/s, bytes x latency / (in flight per SM "
           "x %d SMs)) + %.0f us per launch, latency %.0f ns; bw = bytes / %.1f TB/s / time, "
           "bw600..bw800 the same at 600..800 ns."
           % (h100.ACHIEVABLE_BANDWIDTH / 1e12, h100.SMS, h100.LAUNCH_COST * 1e6,
              latency * 1e9, h100.ACHIEVABLE_BANDWIDTH / 1e12))


def main(args):
    from batchnorm_lib import config

    ok, why = config.probe("cudasim")
    if not ok:
        print("python -m batchnorm_lib model: error: the report runs on cudasim, unavailable "
              "here: %s" % why, file=sys.stderr)
        return 2
    latency = h100.LATENCY if args.latency is None else args.latency * 1e-9
    shapes = args.shape or (QUICK_SHAPES if args.quick else SHAPES)
    dtypes = args.dtype or (("float32",) if args.quick else DTYPES)
    budget = args.sim_elements or (QUICK_SIM_ELEMENTS if args.quick else SIM_ELEMENTS)
    previous = config.get_backend()
    config.set_backend("cudasim")
    from batchnorm_lib.backend.cudasim import driver

    # the simulated device takes an H100's limits (compute capability 9.0: shared memory and
    # registers per SM), which decide where the single-read kernels fit; a set value is kept
    os.environ.setdefault(driver.COMPUTE_CAPABILITY_ENV, "9.0")
    rng = np.random.default_rng(11)
    supported = {np.dtype(d).name for d in config.backend_module().supported_dtypes()}
    todo = [(op, s, d, p) for op, s in shapes for d in dtypes if d in supported
            for p in passes(op)]
    cases = []
    try:
        for i, (op, shape, dtype, pass_name) in enumerate(todo):
            if not args.no_progress:
                sys.stderr.write("\r[%d/%d] %-60s" % (i + 1, len(todo), "%s %s %s" % (
                    case_text(op, shape), dtype, pass_name)))
                sys.stderr.flush()
            cases.append(model_case(shape, dtype, pass_name, budget, rng, latency, op))
    finally:
        config.set_backend(previous)
        if not args.no_progress:
            sys.stderr.write("\n")
    for line in header_lines(budget, latency):
        print(line)
    skipped = [d for d in dtypes if d not in supported]
    if skipped:
        print("not modelled (cudasim lacks the dtype here): %s" % ", ".join(skipped))
    if cases and not cases[0]["compiler_figures"]:
        print("nvcc or nvdisasm missing: no compiler figures; times are bandwidth-bound only "
              "(pip install 'batchnorm_lib[gpu-tools]')")
    print()
    for line in table_lines(cases):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"constants": {
                "sms": h100.SMS, "achievable_bandwidth": h100.ACHIEVABLE_BANDWIDTH,
                "peak_bandwidth": h100.PEAK_BANDWIDTH, "latency": h100.LATENCY,
                "latency_range": list(h100.LATENCY_RANGE), "launch_cost": h100.LAUNCH_COST,
                "simulated_elements": budget}, "cases": cases}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            for line in markdown_lines(cases):
                f.write(line + "\n")
    print(summary(cases) if cases else "summary: nothing to model")
    return 0
