"""What the simulator's checks cost: a BatchNorm2D training step (forward and backward) on the
`cudasim` backend, timed without the misaligned-access check, as built by default (with it), under
the sanitizer (BATCHNORM_LIB_CUDASIM_SANITIZE=1) and under ``profile()``.

    python benchmarks/cudasim_checks.py [--repeats 3] [--shape 8,16,17,19 ...]

Each mode runs in a fresh process (the plain build without the alignment check is a different
build); builds are made and cached before timing. Prints the median seconds per step and the
ratio to the default build.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("no alignment check", "default", "sanitizer", "profile")

CHILD = r"""
import json, os, sys, time
import numpy as np
mode, shapes, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
from batchnorm_lib.backend.cudasim import compiler, profile
if mode == "no alignment check":
    compiler.ALIGNMENT_CHECK_FLAGS = []
if mode == "sanitizer":
    os.environ["BATCHNORM_LIB_CUDASIM_SANITIZE"] = "1"
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.batchnorm import BatchNorm2D
result = []
for shape in shapes:
    rng = np.random.default_rng(0)
    bn = BatchNorm2D(shape[1])
    x = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
    g = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
    times = []
    for i in range(repeats + 1):  # the first builds and warms up
        start = time.perf_counter()
        if mode == "profile":
            with profile():
                bn(x); bn.backward(g)
        else:
            bn(x); bn.backward(g)
        times.append(time.perf_counter() - start)
    result.append(sorted(times[1:])[len(times[1:]) // 2])
print(json.dumps(result))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", action="append", default=None,
                    help="N,C,H,W (repeatable; default 8,16,17,19 and 32,8,31,33)")
    args = ap.parse_args(argv)
    shapes = [[int(v) for v in s.split(",")] for s in (args.shape or ["8,16,17,19", "32,8,31,33"])]
    env = dict(os.environ, BATCHNORM_LIB_BACKEND="cudasim",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("BATCHNORM_LIB_CUDASIM_SANITIZE", None)
    times = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(shapes),
                              str(args.repeats)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return 1
        times[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| shape | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for i, shape in enumerate(shapes):
        base = times["default"][i]
        cells = ["%.3f s (%.2fx)" % (times[m][i], times[m][i] / base) for m in MODES]
        print("| %s | %s |" % ("x".join(map(str, shape)), " | ".join(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
