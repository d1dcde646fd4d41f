"""GPU benchmark: our CUDA kernels against PyTorch's batch norm (cuDNN on and off), in one process
on the same data, following DESIGN.md's performance method.

For each shape and dtype it times inference, training forward and training backward with CUDA
events on the default stream (both libraries share the device's primary context), takes the median
of the repeats after warm-up, and reports the time, the achieved bandwidth on the fewest bytes the
operation must move (float32 per element: inference 8 B, training forward 12 B, backward 20 B;
scaled by the element size for float16), and that bandwidth as a fraction of the measured
device-to-device copy bandwidth (the floor).

    BATCHNORM_LIB_BACKEND=cuda python benchmarks/gpu_bench.py [--out FILE.md] [--repeats 50]

Needs a CUDA device, pycuda and PyTorch built with CUDA. Writes a Markdown table (stdout and --out)
headed with the device, the commit and the date.
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

SHAPES = [
    (32, 64, 56, 56),
    (64, 256, 14, 14),
    (128, 1024, 7, 7),
    (8, 32, 128, 128),
    (256, 2048),
    (16, 3, 224, 224),
]
DTYPES = ["float32", "float16"]
MIN_BYTES = {"infer": 8, "train_fwd": 12, "train_bwd": 20}  # per float32 element


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the Markdown report to this file")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    return p.parse_args(argv)


def commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(torch, lambda: dst.copy_(src), repeats, warmup)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def ours(shape, dtype, x_host, dy_host):
    from batchnorm_lib import kernels
    from batchnorm_lib.backend import gpuarray

    c = shape[1]
    ops = kernels.ops()
    x, dy = gpuarray.to_gpu(x_host), gpuarray.to_gpu(dy_host)
    out, dx = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    scale = gpuarray.to_gpu(np.ones((1, c), np.float32))
    bias = gpuarray.zeros((1, c), np.float32)
    rm, rv = gpuarray.zeros((1, c), np.float32), gpuarray.to_gpu(np.ones((1, c), np.float32))
    sm, siv = gpuarray.empty((1, c), np.float32), gpuarray.empty((1, c), np.float32)
    ds, db = gpuarray.empty((1, c), np.float32), gpuarray.empty((1, c), np.float32)
    ops.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out, sm, siv)
    return {
        "infer": lambda: ops.forward_infer(x, scale, bias, rm, rv, 1e-5, out),
        "train_fwd": lambda: ops.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out, sm, siv),
        "train_bwd": lambda: ops.backward_train(x, dy, scale, sm, siv, dx, ds, db),
    }


def theirs(torch, x_host, dy_host):
    F = torch.nn.functional
    c = x_host.shape[1]
    x = torch.from_numpy(x_host).cuda().requires_grad_(True)
    dy = torch.from_numpy(dy_host).cuda()
    w = torch.ones(c, device="cuda", requires_grad=True)
    b = torch.zeros(c, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)

    def infer():
        with torch.no_grad():
            F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)

    def train_fwd():
        with torch.no_grad():
            F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)

    def train_bwd():
        torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

    return {"infer": infer, "train_fwd": train_fwd, "train_bwd": train_bwd}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from batchnorm_lib import config

    if config.get_backend() != "cuda":
        print("gpu_bench: the active backend is %r; run with BATCHNORM_LIB_BACKEND=cuda on a GPU "
              "host" % config.get_backend(), file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_bench: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    torch.cuda.init()
    device = config.backend_module().device_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    floor = copy_bandwidth(torch, args.repeats, args.warmup)
    rng = np.random.default_rng(0)

    lines = [
        "# GPU benchmark",
        "",
        "device: %s; commit %s; %s; torch %s, cuDNN %s" % (
            device, commit(), when, torch.__version__, torch.backends.cudnn.version()),
        "",
        "Median of %d runs after %d warm-up runs, CUDA events. Copy bandwidth (floor): %.0f GB/s. "
        "GB/s counts the fewest bytes each operation must move; %% is that over the copy "
        "bandwidth." % (args.repeats, args.warmup, floor),
        "",
        "| shape | dtype | op | ours ms | ours GB/s (%) | cuDNN ms | cuDNN GB/s (%) "
        "| torch native ms | torch native GB/s (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        for dtype in DTYPES:
            np_dtype = np.dtype(dtype)
            x = rng.normal(0, 1, shape).astype(np_dtype)
            dy = rng.normal(0, 1, shape).astype(np_dtype)
            nbytes = {op: MIN_BYTES[op] * x.size * np_dtype.itemsize / 4 for op in MIN_BYTES}
            results = {"ours": ours(shape, np_dtype, x, dy)}
            cells = {}
            for label, cudnn in (("cudnn", True), ("native", False)):
                torch.backends.cudnn.enabled = cudnn
                fns = theirs(torch, x, dy)
                for op, fn in fns.items():
                    cells[(label, op)] = median_ms(torch, fn, args.repeats, args.warmup)
            torch.backends.cudnn.enabled = True
            for op, fn in results["ours"].items():
                cells[("ours", op)] = median_ms(torch, fn, args.repeats, args.warmup)
            for op in MIN_BYTES:
                row = ["x".join(map(str, shape)), dtype, op]
                for label in ("ours", "cudnn", "native"):
                    ms = cells[(label, op)]
                    gbs = nbytes[op] / (ms * 1e-3) / 1e9
                    row += ["%.3f" % ms, "%.0f (%.0f%%)" % (gbs, 100 * gbs / floor)]
                lines.append("| " + " | ".join(row) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
