"""GPU benchmark: our CUDA kernels against PyTorch's batch norm with cuDNN on and with cuDNN off,
in one process, on the same data.

For every shape, dtype and pass (inference, training forward, training backward) each side is timed
with CUDA events, one call per event pair, median of the repeats after warm-up. Inputs rotate over
enough copies to exceed four times the L2 cache, so no call finds its data on chip from the call
before. Bandwidth counts the fewest bytes a pass must move (per float32 element: inference 8 B,
training forward 12 B, backward 20 B; scaled by the element size for float16) and is reported as a
fraction of the measured device-to-device copy bandwidth. The ratio is cuDNN's time over ours: above
1 we are faster. Geomeans per pass and overall close the table, the last line reading
``geomean vs cuDNN: X.XXx``.

    BATCHNORM_LIB_BACKEND=cuda python -m batchnorm_lib bench
    BATCHNORM_LIB_BACKEND=cuda python benchmarks/gpu_bench.py [--quick] [--out FILE.md]

Needs the cuda backend (pycuda and a device) and PyTorch built with CUDA.
"""

import argparse
import datetime
import math
import statistics
import os
import subprocess
import sys

import numpy as np

from batchnorm_lib.cli import int_at_least

RESNET50 = [(256, 64, 112, 112), (256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14),
            (256, 2048, 7, 7)]
SMALL_BATCH = [(8, 64, 56, 56), (32, 512, 7, 7)]
TWO_D = [(8192, 4096)]
SHAPES = RESNET50 + SMALL_BATCH + TWO_D
QUICK_SHAPES = [(256, 256, 56, 56), (32, 512, 7, 7), (8192, 4096)]
DTYPES = ("float32", "float16")
PASSES = ("infer", "train_fwd", "train_bwd")
MIN_BYTES = {"infer": 8, "train_fwd": 12, "train_bwd": 20}  # per float32 element
SIDES = ("ours", "cudnn", "native")
EPS, MOMENTUM = 1e-5, 0.1


def add_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="three shapes (%s)" % " ".join("x".join(map(str, s)) for s in QUICK_SHAPES))
    p.add_argument("--dtype", action="append", choices=DTYPES,
                   help="data type to time (repeatable; default both)")
    p.add_argument("--repeats", type=int_at_least(1), default=30, help="timed calls per side (default 30)")
    p.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed calls per side first (default 5)")
    p.add_argument("--out", help="also write the Markdown report to this file")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p.parse_args(argv)


def commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


class Rotation:
    """Calls ``fn(i)`` for i = 0, 1, ... modulo the number of input copies."""

    def __init__(self, fn, copies):
        self.fn, self.copies, self.i = fn, copies, 0

    def __call__(self):
        self.fn(self.i)
        self.i = (self.i + 1) % self.copies


def median_ms(torch, fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(torch, repeats, warmup):
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written), 1 GiB each way."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(torch, lambda: dst.copy_(src), repeats, warmup)
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


def ours(x_host, dy_host, scale, bias, copies):
    """Pass name -> rotating callable over our kernels, plus a function giving our outputs."""
    from batchnorm_lib import kernels
    from batchnorm_lib.backend import gpuarray

    ops = kernels.norm.ops()
    c = x_host.shape[1]
    xs = [gpuarray.to_gpu(x_host) for _ in range(copies)]
    dys = [gpuarray.to_gpu(dy_host) for _ in range(copies)]
    outs = [gpuarray.empty(x_host.shape, x_host.dtype) for _ in range(copies)]
    dxs = [gpuarray.empty(x_host.shape, x_host.dtype) for _ in range(copies)]
    sc, bi = gpuarray.to_gpu(scale.reshape(1, c)), gpuarray.to_gpu(bias.reshape(1, c))
    rm, rv = gpuarray.zeros((1, c), np.float32), gpuarray.to_gpu(np.ones((1, c), np.float32))
    sm, siv, ds, db = (gpuarray.empty((1, c), np.float32) for _ in range(4))

    def train_fwd(i):
        ops.forward_train(xs[i], sc, bi, rm, rv, EPS, MOMENTUM, outs[i], sm, siv)

    def infer(i):
        ops.forward_infer(xs[i], sc, bi, rm, rv, EPS, outs[i])

    def train_bwd(i):
        # savemean/saveinvvar of copy 0 serve every copy: the copies hold the same data
        ops.backward_train(xs[i], dys[i], sc, sm, siv, dxs[i], ds, db)

    def results():
        train_fwd(0)
        y = outs[0].get()
        train_bwd(0)
        return y, dxs[0].get()

    train_fwd(0)
    return {"infer": Rotation(infer, copies), "train_fwd": Rotation(train_fwd, copies),
            "train_bwd": Rotation(train_bwd, copies)}, results


def theirs(torch, x_host, dy_host, scale, bias, copies):
    """The same for ``torch.nn.functional.batch_norm`` (cuDNN or native per the global flag)."""
    F = torch.nn.functional
    xs = [torch.from_numpy(x_host).cuda().requires_grad_(True) for _ in range(copies)]
    dys = [torch.from_numpy(dy_host).cuda() for _ in range(copies)]
    w = torch.from_numpy(scale).cuda().requires_grad_(True)
    b = torch.from_numpy(bias).cuda().requires_grad_(True)
    rm = torch.zeros(len(scale), device="cuda")
    rv = torch.ones(len(scale), device="cuda")
    ys = [F.batch_norm(x, rm, rv, w, b, training=True, momentum=MOMENTUM, eps=EPS) for x in xs]

    def infer(i):
        with torch.no_grad():
            F.batch_norm(xs[i], rm, rv, w, b, training=False, eps=EPS)

    def train_fwd(i):
        with torch.no_grad():
            F.batch_norm(xs[i], rm, rv, w, b, training=True, momentum=MOMENTUM, eps=EPS)

    def train_bwd(i):
        torch.autograd.grad(ys[i], (xs[i], w, b), dys[i], retain_graph=True)

    def results():
        dx, = torch.autograd.grad(ys[0], (xs[0],), dys[0], retain_graph=True)
        return ys[0].detach().cpu().numpy(), dx.cpu().numpy()

    return {"infer": Rotation(infer, copies), "train_fwd": Rotation(train_fwd, copies),
            "train_bwd": Rotation(train_bwd, copies)}, results


def run_benchmark(shapes, dtypes, repeats, warmup, progress=None):
    import torch

    from batchnorm_lib import config

    backend = config.backend_module()
    backend.runtime().start()  # our primary context first; PyTorch then uses the same one
    torch.cuda.init()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 0) or 50 << 20
    env = {"device": backend.device_name(), "commit": commit(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "l2_bytes": l2,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "repeats": repeats, "warmup": warmup}
    env["copy_gbs"] = copy_bandwidth(torch, repeats, warmup)
    rng = np.random.default_rng(0)
    rows = []
    total = len(shapes) * len(dtypes)
    for k, (shape, dtype) in enumerate((s, d) for s in shapes for d in dtypes):
        label = "%s %s" % ("x".join(map(str, shape)), dtype)
        if progress:
            progress(k, total, label)
        np_dtype = np.dtype(dtype)
        x = rng.normal(0.5, 2.0, shape).astype(np_dtype)
        dy = rng.normal(0.0, 1.0, shape).astype(np_dtype)
        c = shape[1]
        scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, c).astype(np.float32)
        copies = max(1, math.ceil(4 * l2 / x.nbytes))
        times, agreement = {}, {}
        fns, ours_results = ours(x, dy, scale, bias, copies)
        for p in PASSES:
            times[("ours", p)] = median_ms(torch, fns[p], repeats, warmup)
        y_ours, dx_ours = ours_results()
        del fns, ours_results
        backend.runtime().free_held()
        for side, cudnn in (("cudnn", True), ("native", False)):
            torch.backends.cudnn.enabled = cudnn
            fns, their_results = theirs(torch, x, dy, scale, bias, copies)
            for p in PASSES:
                times[(side, p)] = median_ms(torch, fns[p], repeats, warmup)
            y, dx = their_results()
            scale_y = max(1.0, float(np.abs(y.astype(np.float32)).max()))
            scale_dx = max(1e-30, float(np.abs(dx.astype(np.float32)).max()))
            agreement[side] = max(
                float(np.abs(y_ours.astype(np.float32) - y.astype(np.float32)).max()) / scale_y,
                float(np.abs(dx_ours.astype(np.float32) - dx.astype(np.float32)).max()) / scale_dx)
            del fns, their_results
            torch.cuda.empty_cache()
        torch.backends.cudnn.enabled = True
        for p in PASSES:
            nbytes = MIN_BYTES[p] * x.size * np_dtype.itemsize / 4
            row = {"shape": list(shape), "dtype": dtype, "pass": p, "copies": copies,
                   "ms": {s: times[(s, p)] for s in SIDES},
                   "gbs": {s: nbytes / (times[(s, p)] * 1e-3) / 1e9 for s in SIDES},
                   "vs_cudnn": times[("cudnn", p)] / times[("ours", p)],
                   "vs_native": times[("native", p)] / times[("ours", p)],
                   "max_rel_diff": max(agreement.values())}
            rows.append(row)
    if progress:
        progress(total, total, "done")
    summary = {p: geomean([r["vs_cudnn"] for r in rows if r["pass"] == p]) for p in PASSES}
    summary["overall"] = geomean([r["vs_cudnn"] for r in rows])
    summary["overall_native"] = geomean([r["vs_native"] for r in rows])
    return {"env": env, "rows": rows, "geomean": summary}


def format_report(result):
    env, rows, g = result["env"], result["rows"], result["geomean"]
    floor = env["copy_gbs"]
    lines = [
        "device: %s | commit %s | %s | torch %s, cuDNN %s" % (
            env["device"], env["commit"], env["date"], env["torch"], env["cudnn"]),
        "copy bandwidth (read + write): %.0f GB/s | median of %d calls after %d warm-up, CUDA "
        "events | inputs rotate over copies totalling >= 4x L2 (%d MiB)" % (
            floor, env["repeats"], env["warmup"], env["l2_bytes"] >> 20),
        "",
        "| shape | dtype | pass | ours ms | GB/s | of copy | cuDNN ms | GB/s | native ms | GB/s "
        "| cuDNN/ours | native/ours | max rel diff |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append("| %s | %s | %s | %.3f | %.0f | %.0f%% | %.3f | %.0f | %.3f | %.0f | %.2fx | "
                     "%.2fx | %.1e |" % (
                         "x".join(map(str, r["shape"])), r["dtype"], r["pass"],
                         r["ms"]["ours"], r["gbs"]["ours"], 100 * r["gbs"]["ours"] / floor,
                         r["ms"]["cudnn"], r["gbs"]["cudnn"], r["ms"]["native"],
                         r["gbs"]["native"], r["vs_cudnn"], r["vs_native"], r["max_rel_diff"]))
    lines += ["",
              "geomean cuDNN/ours per pass: " + ", ".join("%s %.2fx" % (p, g[p]) for p in PASSES),
              "geomean vs PyTorch native (cuDNN off): %.2fx" % g["overall_native"],
              "geomean vs cuDNN: %.2fx" % g["overall"]]
    return "\n".join(lines) + "\n"


def main(argv=None, progress=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_from_args(args, progress)


def run_from_args(args, progress=None):
    from batchnorm_lib import config

    if config.get_backend() != "cuda":
        print("gpu_bench: the active backend is %r; the GPU benchmark needs the cuda backend "
              "(BATCHNORM_LIB_BACKEND=cuda on a host with a GPU and pycuda)" % config.get_backend(),
              file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("gpu_bench: PyTorch is not installed; it is the side the kernels are compared with",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_bench: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    result = run_benchmark(QUICK_SHAPES if args.quick else SHAPES, args.dtype or DTYPES,
                           args.repeats, args.warmup, progress)
    report = format_report(result)
    print(report, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0
