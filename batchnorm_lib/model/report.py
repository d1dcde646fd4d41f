"""``python -m batchnorm_lib model``: every batch-norm pass of the library, modelled on an H100.

For each shape, dtype and pass the report runs the pass on the ``cudasim`` backend under the
simulator's traffic counters (:func:`batchnorm_lib.backend.cudasim.profile`) at a reduced size,
and replays the same call at the full shape through a recording runtime that keeps the launches
(kernel, grid) without running them. From the counters: DRAM bytes per element (distinct 32-byte
sectors x 32, per launch, summed) next to the byte floor, and the sector efficiency (requested
bytes / 32 over the sectors the warps touch, per launch at most 1). From the compiler (:mod:`.sass`) and :mod:`.h100`,
for each launch of the full shape: registers, occupancy, waves, loads and bytes in flight, and the
modelled time; the pass's bandwidth fraction is its bytes over achievable bandwidth, divided by
its modelled time, at 600, 700 and 800 ns.

Why the reduced size stands for the full one: every kernel here touches each element a fixed
number of times through the same code path (the path depends on the dtype, the spatial size and
alignment, which the reduction keeps: only N, then C, shrink), so the bytes and sectors per
element are the full shape's; the per-channel work (partials, finalize) is a small term that the
reduction overstates, if anything. Tensors that fit in the 50 MB L2 may move fewer DRAM bytes than
the counters' distinct sectors say.
"""

import contextlib
import json
import math
import os
import sys

import numpy as np

from batchnorm_lib.model import h100, sass

DTYPES = ("float32", "float16", "bfloat16")
PASSES = ("forward train", "backward train", "forward infer")

# ResNet-50 at batch 256 (every BatchNorm2D shape), small batches, and two (N, C) shapes: one
# larger than L2, one inside it.
SHAPES = (
    (256, 64, 112, 112), (256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14),
    (256, 2048, 7, 7),
    (8, 64, 112, 112), (8, 256, 56, 56), (16, 1024, 14, 14), (32, 2048, 7, 7),
    (8192, 4096), (4096, 1024),
)
QUICK_SHAPES = ((256, 64, 112, 112), (256, 1024, 14, 14), (256, 2048, 7, 7), (8192, 4096))
SIM_ELEMENTS = 1 << 18        # simulated elements per case at most (the counted build is slow)
QUICK_SIM_ELEMENTS = 1 << 16
MIN_SIM_CHANNEL_ELEMENTS = 512
# The single-read floors hold when the whole tensor can stay in the SMs' shared memory between
# the statistics and the normalization.
ON_CHIP_BYTES = h100.SMS * h100.SHARED_PER_BLOCK_MAX
HEAVY_SHARE = 0.1             # launches with at least this share of a pass's bytes are its main ones
SOURCE = "norm/batchnorm.cu"
PERSIST_SOURCE = "norm/persistent.cu"  # the single-read training kernels, bn_persist_*


def parse_shape(text):
    """'256x64x112x112' -> (256, 64, 112, 112); at least N and C."""
    import argparse

    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("must be NxC[xHxW...] positive integers, got %r"
                                         % text) from None
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError("must be NxC[xHxW...] positive integers, got %r" % text)
    return shape


def shape_text(shape):
    return "x".join(str(d) for d in shape)


def floor_bytes(pass_name, shape, itemsize):
    """Fewest DRAM bytes per element the pass must move."""
    elements = int(np.prod(shape))
    on_chip = elements * itemsize <= ON_CHIP_BYTES
    if pass_name == "forward infer":
        reads_writes = 2
    elif pass_name == "forward train":
        reads_writes = 2 if on_chip else 3
    else:  # backward: x and dy read once (twice without the single-read path), dx written
        reads_writes = 3 if on_chip else 5
    return reads_writes * itemsize


def reduced_shape(shape, budget):
    """The shape simulated for ``shape``: at most ``budget`` elements, each channel keeping at
    least MIN_SIM_CHANNEL_ELEMENTS values (or all it has) so per-channel traffic stays a small
    term; N shrinks first, then C."""
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
    """A runtime that records (kernel, grid) instead of launching: the full shape's launch
    configuration, computed by the same code that launches it."""

    def __init__(self, real):
        self.name = real.name
        self._dtypes = real.supported_dtypes()
        self.launches = []
        self._next = 1 << 20

    def supported_dtypes(self):
        return self._dtypes

    def empty(self, shape, dtype=np.float32):
        return self.array(shape, dtype)

    def array(self, shape, dtype):
        a = _FakeArray(shape, dtype, self._next)
        self._next += -(-a.size * a.dtype.itemsize // 256) * 256 + 256
        return a

    def launch(self, name, grid, args):
        self.launches.append((name, tuple(int(g) for g in grid)))


@contextlib.contextmanager
def _recording(impl, real):
    """Route ``impl``'s launches (a kernels/<op>/cuda.py module) to a recorder for the block."""
    recorder = _Recorder(real)
    saved = impl._runtime
    impl._runtime = lambda: recorder
    try:
        yield recorder
    finally:
        impl._runtime = saved


def _call(pass_name, impl, alloc, shape, dtype):
    """Run one pass through ``impl`` with arrays from ``alloc(shape, dtype, fill)``."""
    c = shape[1]
    vec = lambda v: alloc((c,), np.float32, v)  # noqa: E731
    x, dy = alloc(shape, dtype, "x"), alloc(shape, dtype, "dy")
    scale, bias, run_mean, run_var = vec(1.5), vec(0.25), vec(0.0), vec(1.0)
    out = alloc(shape, dtype, None)
    if pass_name == "forward train":
        impl.forward_train(x, scale, bias, run_mean, run_var, 1e-5, 0.1, out, vec(0.0), vec(0.0))
    elif pass_name == "forward infer":
        impl.forward_infer(x, scale, bias, run_mean, run_var, 1e-5, out)
    elif pass_name == "backward train":
        savemean, saveinvvar = vec(0.0), vec(1.0)
        impl.backward_train(x, dy, scale, savemean, saveinvvar, out, vec(0.0), vec(0.0))
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


def _static(kernel, grid, block):
    """Compiler figures of one full-shape launch, or None without nvcc/nvdisasm."""
    from batchnorm_lib import model
    from batchnorm_lib.backend.cuda.core import KERNEL_DIR

    try:
        source = PERSIST_SOURCE if kernel.startswith("bn_persist_") else SOURCE
        return model.analyze_kernel(os.path.join(KERNEL_DIR, source), kernel, grid, block)
    except sass.ToolError:
        return None


def _dtype(name):
    if name == "bfloat16":
        from batchnorm_lib.backend.cuda.core import bfloat16_dtype
        return bfloat16_dtype()
    return np.dtype(name)


def model_case(shape, dtype_name, pass_name, budget, rng, latency=h100.LATENCY):
    """Every figure of one (shape, dtype, pass); launches listed with their modelled figures."""
    from batchnorm_lib import config, kernels
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.backend.cudasim import profile
    from batchnorm_lib.backend.cuda.core import BLOCK

    impl = kernels.implementation("norm", "cudasim")
    real = config.backend_module().runtime()
    dtype = _dtype(dtype_name)
    itemsize = dtype.itemsize
    sim_shape = reduced_shape(shape, budget)
    alloc = _sim_alloc(gpuarray, rng)
    with profile() as prof:
        _call(pass_name, impl, alloc, sim_shape, dtype)
    sim = list(prof.launches)
    with _recording(impl, real) as rec:
        _call(pass_name, impl, lambda s, d, f: rec.array(s, d), shape, dtype)
    full_elements, sim_elements = int(np.prod(shape)), int(np.prod(sim_shape))

    def dram(launch):
        return 32 * (launch.unique_load_sectors + launch.unique_store_sectors)

    sim_bytes = sum(dram(l) for l in sim)
    # a launch moving under a byte per element works per channel (finalize, factors): its bytes
    # scale with its grid, the data passes' with the elements
    sim_blocks = {}
    for l in sim:
        sim_blocks[l.name] = sim_blocks.get(l.name, 0) + int(np.prod(l.grid))
    # ideal sectors: the requested bytes in whole sectors, at most the sectors touched (a warp's
    # lanes reading one value, a broadcast, ask for more bytes than the one sector they touch)
    def efficiency(kind):
        sectors = sum(getattr(l, kind + "_sectors") for l in sim)
        ideal = sum(min(getattr(l, kind + "_bytes") / 32.0, getattr(l, kind + "_sectors"))
                    for l in sim)
        return ideal, sectors

    (ideal_ld, sectors_ld), (ideal_st, sectors_st) = efficiency("load"), efficiency("store")
    ideal, sectors = ideal_ld + ideal_st, sectors_ld + sectors_st
    bytes_per_element = sim_bytes / sim_elements
    # each full-shape launch gets the share of bytes its kernel moved in the simulation
    by_name = {}
    for l in sim:
        by_name[l.name] = by_name.get(l.name, 0) + dram(l)
    count = {}
    for name, _ in rec.launches:
        count[name] = count.get(name, 0) + 1
    launches = []
    for name, grid in rec.launches:
        moved = by_name.get(name, 0)
        if moved >= sim_elements or not sim_blocks.get(name):
            full = moved * full_elements / sim_elements / count[name]
        else:
            full = moved * int(np.prod(grid)) / sim_blocks[name]
        entry = {"kernel": name, "grid": list(grid), "block": [BLOCK], "dram_bytes": full}
        static = _static(name, grid, (BLOCK,))
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
        "shape": list(shape), "dtype": dtype_name, "pass": pass_name,
        "simulated_shape": list(sim_shape), "launches_per_call": len(rec.launches),
        "simulated_launches": [l.name for l in sim],
        "dram_bytes_per_element": bytes_per_element,
        "floor_bytes_per_element": floor_bytes(pass_name, shape, itemsize),
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
    ("shape", 17, lambda f: shape_text(f["shape"])),
    ("dtype", 8, lambda f: f["dtype"]),
    ("pass", 14, lambda f: f["pass"]),
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
               worst["bandwidth_fraction_700ns"], shape_text(worst["shape"]), worst["dtype"],
               worst["pass"]))


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
    rng = np.random.default_rng(11)
    supported = {np.dtype(d).name for d in config.backend_module().supported_dtypes()}
    todo = [(s, d, p) for s in shapes for d in dtypes if d in supported for p in PASSES]
    cases = []
    try:
        for i, (shape, dtype, pass_name) in enumerate(todo):
            if not args.no_progress:
                sys.stderr.write("\r[%d/%d] %-50s" % (i + 1, len(todo), "%s %s %s" % (
                    shape_text(shape), dtype, pass_name)))
                sys.stderr.flush()
            cases.append(model_case(shape, dtype, pass_name, budget, rng, latency))
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
    print(summary(cases) if cases else "summary: nothing to model")
    return 0
