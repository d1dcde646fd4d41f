"""Soak benchmark: long training runs, watching the process's memory.

    python benchmarks/soak.py [--iterations 2000] [--backend cpu|cudasim] [--shape N C H W]

Runs ``--iterations`` training steps (forward, backward, parameter update) of a ``BatchNorm2D``
on random data and of the digits MLP, and prints the peak resident set size of the process at
50, 500 and the last iteration, with the current RSS beside it (plus, on ``cudasim``, the simulated device memory in use). A
library that leaks grows with the iteration count; these figures should stay flat once the
first steps have allocated their workspaces. This is a benchmark, not a test: it prints numbers
and judges nothing.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

import numpy as np  # noqa: E402

CHECKPOINTS = (50, 500)


def peak_rss_mib():
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib():
    """Resident set size of this process now, in MiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2.0 ** 20
    except (OSError, ValueError, IndexError):
        return None


def device_mib(backend):
    """Simulated device memory in use, in MiB, on cudasim; None elsewhere."""
    if backend != "cudasim":
        return None
    from batchnorm_lib.backend.cudasim import driver

    free, total = driver.mem_get_info()
    return (total - free) / 2.0 ** 20


def soak(name, step, iterations, backend):
    checkpoints = sorted(set(c for c in CHECKPOINTS if c < iterations) | {iterations})
    start = time.perf_counter()
    rows = []
    for i in range(1, iterations + 1):
        step()
        if i in checkpoints:
            rows.append((i, peak_rss_mib(), current_rss_mib(), device_mib(backend),
                         time.perf_counter() - start))
    for i, rss, now, dev, seconds in rows:
        line = "%-28s iteration %5d  peak RSS %8.1f MiB" % (name, i, rss)
        if now is not None:
            line += "  current RSS %8.1f MiB" % now
        if dev is not None:
            line += "  device memory in use %7.2f MiB" % dev
        print(line + "  (%.1f s)" % seconds, flush=True)
    growth = rows[-1][1] - rows[0][1]
    print("%-28s peak RSS growth from iteration %d to %d: %+.1f MiB"
          % (name, rows[0][0], rows[-1][0], growth), flush=True)


def batchnorm_step(shape, rng):
    from batchnorm_lib import BatchNorm2D
    from batchnorm_lib.backend import gpuarray

    bn = BatchNorm2D(shape[1])
    x = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
    dy = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))

    def step():
        bn(x)
        bn.backward(dy)
        bn.updateParams(1e-3)

    return step


def digits_step(rng):
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.cost import CrossEntropy
    from batchnorm_lib.training.data import load_digits
    from batchnorm_lib.training.loop import build_mlp, make_optimizer

    data = load_digits()
    net = build_mlp(data.features, data.classes)
    opt = make_optimizer("momentum", 0.05)
    opt.setupOn(net, useGlobalState=True)
    cost = CrossEntropy(maxlabels=data.classes)
    n = len(data.ytrain)

    def step():
        idx = rng.integers(0, n, size=32)
        _, grad = cost(net(gpuarray.to_gpu(data.xtrain[idx])), gpuarray.to_gpu(data.ytrain[idx]))
        opt.zeroGradParams()
        net.backward(grad, updGrad=False)
        opt.update()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("cpu", "cudasim"), default="cpu",
                   help="backend to run on (default cpu)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training steps per run (default 2000 on cpu, 200 on cudasim)")
    p.add_argument("--shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), default=None,
                   help="BatchNorm2D data shape (default 64 128 16 16 on cpu, 8 16 8 8 on cudasim)")
    p.add_argument("--no-digits", action="store_true", help="skip the digits MLP run")
    args = p.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        p.error("--iterations must be at least 1")
    if args.shape is not None and min(args.shape) < 1:
        p.error("--shape needs positive sizes")
    iterations = args.iterations or (2000 if args.backend == "cpu" else 200)
    shape = tuple(args.shape or ((64, 128, 16, 16) if args.backend == "cpu" else (8, 16, 8, 8)))

    from batchnorm_lib import config

    config.set_backend(args.backend)
    rng = np.random.default_rng(0)
    print("soak on %s: %d iterations; peak RSS at start %.1f MiB"
          % (args.backend, iterations, peak_rss_mib()), flush=True)
    soak("BatchNorm2D %s" % "x".join(map(str, shape)), batchnorm_step(shape, rng), iterations,
         args.backend)
    if not args.no_digits:
        try:
            step = digits_step(rng)
        except ImportError as e:
            print("digits MLP skipped: %s" % e, flush=True)
        else:
            soak("digits MLP (batch 32)", step, iterations, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
