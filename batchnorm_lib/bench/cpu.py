"""CPU benchmark: batchnorm_lib's CPU backend vs PyTorch's CPU batch norm vs a naive numpy formula.

Per shape and pass, on identical data in one process with the same thread count:

``train``  forward + backward in training mode: our module call then ``module.backward(grad)``;
           PyTorch ``F.batch_norm(training=True)`` then ``y.backward(dy)`` through autograd
           (input and parameter gradients, gradients reset to None each call).
``infer``  forward in evaluation mode (running statistics); PyTorch under ``torch.no_grad()``.
``fwd``    training forward alone (shown for the profile; not in the target geomean).

``--family`` times the rest of the normalization family instead, on FAMILY_CASES: LayerNorm,
GroupNorm (32 groups) and InstanceNorm2D modules against PyTorch's ``F.layer_norm``,
``F.group_norm`` and ``F.instance_norm``. They keep no running statistics, so ``infer`` is the
forward in evaluation mode, computing what ``fwd`` computes; the byte counts are the same.

``--relu`` times batch norm fused with relu (the "bn+relu" rows, also in the default run): ours is
the module with ``activation="relu"`` (its kernels apply relu in the normalize pass and mask the
gradient by the output in the backward passes); PyTorch's is ``F.batch_norm`` followed by
``F.relu(..., inplace=True)`` as a PyTorch user writes it, then ``backward(dy)`` through autograd. Its fewest bytes: training
24 B per element (forward 8, backward 16: x, dy and y read, dx written), inference 8 B.

Each row has a layout: channels first (NCHW, the default; (N, C) data has one layout) or channels
last (NHWC and the other channels-last layouts: our module with ``layout="channels_last"`` on the
channels-last array, PyTorch on the same values in ``torch.channels_last`` memory format).

Each side allocates its outputs as it does in use. Times are medians over interleaved rounds after
warm-up. GB/s counts the fewest bytes each pass must move (float32, per element):
inference 8 B, training forward 8 B (single read), forward + backward 20 B; the fraction is of
the copy bandwidth measured at the same size with the same threads. The ratio is PyTorch's time
over ours (above 1: we are faster); the geomeans are over shapes.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from batchnorm_lib.cli import int_at_least

DEFAULT_SHAPES = (
    (32, 64, 56, 56),
    (64, 128, 28, 28),
    (128, 256, 14, 14),
    (256, 512, 7, 7),
    (8, 32, 112, 112),
    (64, 256, 196),
    (4096, 1024),
    (512, 2048),
)
# the ResNet shapes again, channels last (what PyTorch users train with on the CPU)
DEFAULT_LAST = ((32, 64, 56, 56), (64, 128, 28, 28), (128, 256, 14, 14), (256, 512, 7, 7))
QUICK_SHAPES = ((32, 64, 56, 56), (256, 512, 7, 7), (4096, 1024))
FAMILY_CASES = (
    ("LayerNorm", (4096, 1024)),
    ("LayerNorm", (8192, 768)),
    ("LayerNorm", (256, 4096)),
    ("GroupNorm", (32, 256, 28, 28)),
    ("InstanceNorm2D", (32, 64, 56, 56)),
)
FAMILY_GROUPS = 32
QUICK_LAST = ((32, 64, 56, 56),)
RELU = "bn+relu"
# batch norm + relu: the ResNet shapes at both ends of the network, in both layouts, and (N, C)
RELU_CASES = tuple((RELU, s, lay) for lay in ("channels_first", "channels_last")
                   for s in ((32, 64, 56, 56), (256, 512, 7, 7))) \
    + ((RELU, (4096, 1024), "channels_first"),)
QUICK_RELU = ((RELU, (32, 64, 56, 56), "channels_first"),)
LAYOUTS = ("channels_first", "channels_last")
PASSES = ("train", "infer", "fwd")
TARGET_PASSES = ("train", "infer")
FEWEST_BYTES = {"train": 20, "infer": 8, "fwd": 8}
FEWEST_BYTES_RELU = {"train": 24, "infer": 8, "fwd": 8}  # the backward reads y too
EPS = 1e-5
WARMUP_SECONDS = float(os.environ.get("BATCHNORM_LIB_BENCH_WARMUP_S", "0.25"))  # per function
MAX_WARMUP = 50


def parse_shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if len(shape) < 2 or len(shape) > 5 or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError("shape must be 2 to 5 positive integers like 32,64,56,56")
    return shape


def build_parser(prog="cpu_bench"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time batchnorm_lib's CPU batch norm against PyTorch's CPU batch norm (when "
                    "installed) and a naive numpy formula, per shape and pass; print time, GB/s, "
                    "the fraction of the measured copy bandwidth and the ratio to PyTorch, "
                    "geomean last.")
    add_arguments(p)
    return p


def add_arguments(p):
    p.add_argument("--shape", type=parse_shape, action="append", metavar="N,C[,...]",
                   help="a shape to time (repeatable); default: %s"
                        % " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES))
    p.add_argument("--layout", choices=LAYOUTS + ("both",), default=None,
                   help="memory layout of the --shape shapes (given as N,C,...; default "
                        "channels_first); without --shape the default rows are %s channels first "
                        "and %s channels last"
                        % (len(DEFAULT_SHAPES), len(DEFAULT_LAST)))
    p.add_argument("--quick", action="store_true",
                   help="three shapes and fewer repeats (%s)"
                        % " ".join(",".join(map(str, s)) for s in QUICK_SHAPES))
    p.add_argument("--pass", dest="passes", choices=PASSES, action="append",
                   help="passes to time (repeatable; default: all of %s)" % ", ".join(PASSES))
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="threads for both libraries (default: the cores this process may use)")
    p.add_argument("--rounds", type=int_at_least(1), default=5, help="alternating timing rounds (default 5)")
    p.add_argument("--per-round", type=int_at_least(1), default=10, help="timed calls per side per round, after a pause and one untimed call (default 10)")
    p.add_argument("--warmup", type=int_at_least(0), default=2, help="untimed calls per side first, for at least 0.25 s too (default 2)")
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="per side, the median call (default) or the fastest one, which other "
                        "work on a busy machine disturbs less")
    p.add_argument("--family", action="store_true",
                   help="time LayerNorm, GroupNorm (%d groups) and InstanceNorm2D against "
                        "PyTorch instead of batch norm, on %s (these replace the --shape or "
                        "--quick shapes)"
                        % (FAMILY_GROUPS, ", ".join("%s %s" % (k, "x".join(map(str, s)))
                                                    for k, s in FAMILY_CASES)))
    p.add_argument("--relu", action="store_true",
                   help="time only batch norm fused with relu (the 'bn+relu' rows, which the "
                        "default run ends with): our modules with activation='relu' against "
                        "PyTorch's batch_norm then relu_; on %s, or the --shape shapes"
                        % ", ".join("x".join(map(str, s)) + ("" if len(s) == 2 else " " + lay)
                                    for _, s, lay in RELU_CASES))
    p.add_argument("--cpu-path", choices=("auto", "native", "numpy"), default=None,
                   help="our CPU kernel path (default: BATCHNORM_LIB_CPU_KERNELS or auto)")
    p.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                   help="before each shape, wait up to this long for the machine's CPU pressure "
                        "(Linux PSI, avg10) to fall below 5%% (default 0: do not wait)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time (default); cpu: CPU time of this process, all threads "
                        "(on a machine shared with other work it leaves out the time spent "
                        "descheduled; with several threads it includes their spin-waiting)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--no-naive", action="store_true", help="do not time the naive numpy formula")
    p.add_argument("--kernels", action="store_true",
                   help="profile instead: our kernel calls alone (outputs allocated once, no module), "
                        "fastest and median of the repeats, against a copy of the same size")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


# -- environment -----------------------------------------------------------------------------------

def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=here, capture_output=True, text=True, timeout=10).stdout
            return out.stdout.strip() + ("+local changes" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def machine_load():
    """(1-minute load average, CPU pressure 'some avg10' in percent) where Linux reports them."""
    load = pressure = None
    try:
        with open("/proc/loadavg") as f:
            load = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    pressure = float(line.split("avg10=")[1].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return load, pressure


def import_torch():
    try:
        import torch  # noqa: F401
        import torch.nn.functional  # noqa: F401

        return torch
    except ImportError:
        return None


# -- timing ----------------------------------------------------------------------------------------

SWITCH_PAUSE_SECONDS = 0.02


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def compare(fns, rounds, per_round, warmup, statistic="median", clock="wall"):
    """Median (or, with ``statistic="min"``, fastest) seconds per call of each function in ``fns``
    (name -> callable), timed in interleaved rounds so that load from elsewhere on the machine
    hits every side alike. ``clock="cpu"`` measures the process's CPU time (every thread) instead
    of wall time."""
    now = CLOCKS[clock]
    times = {name: [] for name in fns}
    for fn in fns.values():
        # fresh buffers run slowly for their first few uses on some machines (first touch, page
        # state), so warm up for a minimum time as well as a minimum count
        t_end = time.perf_counter() + WARMUP_SECONDS
        for i in range(MAX_WARMUP):
            if i >= warmup and time.perf_counter() >= t_end:
                break
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            # the other side's OpenMP threads spin for a while after its last call and would take
            # these two cores: let them go idle, and make one untimed call, before timing
            time.sleep(SWITCH_PAUSE_SECONDS)
            fn()
            for _ in range(per_round):
                t0 = now()
                fn()
                times[name].append(now() - t0)
    pick = min if statistic == "min" else statistics.median
    return {name: pick(ts) for name, ts in times.items()}


def copy_bandwidth(nbytes, threads, rounds=9, clock="wall"):
    """GB/s of a copy of ``nbytes`` (read + write counted) with the kernels' threads."""
    n = max(1, nbytes // 4)
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    try:
        from batchnorm_lib.kernels.norm import cpu_native

        if not cpu_native.probe()[0]:
            raise RuntimeError
        copy = lambda: cpu_native.copy(src, dst)  # noqa: E731
    except (ImportError, RuntimeError):
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    t = compare({"copy": copy}, rounds, 3, 2, clock)["copy"]
    return 2 * n * 4 / t / 1e9


# -- the three contestants -----------------------------------------------------------------------

_MODULE_FOR_NDIM = {2: "BatchNorm", 3: "BatchNorm1D", 4: "BatchNorm2D", 5: "BatchNorm3D"}


def _family_module(kind, shape):
    from batchnorm_lib import modules

    if kind == "LayerNorm":
        return modules.LayerNorm(shape[-1])
    if kind == "GroupNorm":
        return modules.GroupNorm(FAMILY_GROUPS, shape[1])
    return getattr(modules, kind)(shape[1])


def param_count(kind, shape):
    """Length of the scale and bias vectors of module ``kind`` on data of ``shape``."""
    return shape[-1] if kind == "LayerNorm" else shape[1]


def _case(item):
    """(module kind, shape, layout) of a benchmark case: a shape (batch norm, channels first), a
    (shape, layout) pair, a (module name, shape) pair of the rest of the family, or a
    (kind, shape, layout) triple (RELU)."""
    if isinstance(item[0], str):
        return item[0], tuple(item[1]), item[2] if len(item) > 2 else "channels_first"
    if isinstance(item[0], (int, np.integer)):
        return "BatchNorm", tuple(item), "channels_first"
    return "BatchNorm", tuple(item[0]), item[1]


def layout_name(shape, layout):
    """NCHW, NHWC, (N, C), ... for the table."""
    if len(shape) == 2:
        return "NC"
    spatial = {3: "L", 4: "HW", 5: "DHW"}[len(shape)]
    return "N" + spatial + "C" if layout == "channels_last" else "NC" + spatial


def to_last(a):
    """(N, C, *spatial) -> the same values channels last, C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if a.ndim > 2 else a


def ours(x, dy, scale, bias, layout="channels_first", kind="BatchNorm"):
    """(train, infer, fwd, results) closures over a batchnorm_lib module on the CPU backend; x and
    dy are (N, C, *spatial), stored channels last for ``layout="channels_last"``; ``kind`` names a
    module of the normalization family other than batch norm, or RELU (batch norm with
    ``activation="relu"``)."""
    from batchnorm_lib import modules
    from batchnorm_lib.backend import gpuarray

    C = x.shape[1]
    if kind in ("BatchNorm", RELU):
        mod = getattr(modules, _MODULE_FOR_NDIM[x.ndim])(
            C, layout=layout, activation="relu" if kind == RELU else None)
    else:
        mod = _family_module(kind, x.shape)
    mod.scale.set(scale.reshape(mod.scale.shape))
    mod.bias.set(bias.reshape(mod.bias.shape))
    last = layout == "channels_last"
    data = gpuarray.to_gpu(to_last(x) if last else x)
    grad = gpuarray.to_gpu(to_last(dy) if last else dy)
    back = (lambda a: np.moveaxis(a, -1, 1)) if last else (lambda a: a)  # noqa: E731

    def train():
        mod.trainMode()
        mod(data)
        mod.backward(grad)

    def fwd():
        mod.trainMode()
        mod(data)

    def infer():
        mod.evalMode()
        mod(data)

    def results():
        mod.trainMode()
        y = back(mod(data).get())
        mod.backward(grad)
        return {"y": y, "dx": back(mod.grad.get()), "dscale": mod.vars["scale"].grad.get().ravel(),
                "dbias": mod.vars["bias"].grad.get().ravel()}

    return train, infer, fwd, results


def _torch_family(F, kind, shape):
    """PyTorch's functional form of module ``kind``: forward(x, weight, bias)."""
    if kind == "LayerNorm":
        return lambda x, w, b: F.layer_norm(x, (shape[-1],), w, b, eps=EPS)
    if kind == "GroupNorm":
        return lambda x, w, b: F.group_norm(x, FAMILY_GROUPS, w, b, eps=EPS)
    return lambda x, w, b: F.instance_norm(x, weight=w, bias=b, use_input_stats=True, eps=EPS)


def pytorch(torch, x, dy, scale, bias, layout="channels_first", kind="BatchNorm"):
    F = torch.nn.functional
    C = x.shape[1]
    if layout == "channels_last" and x.ndim > 2:
        # the same logical (N, C, ...) tensor with channels-last strides: torch.channels_last
        # (channels_last_3d) memory format for 4-D (5-D) data, a permuted view for (N, C, L)
        perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        xt = torch.from_numpy(to_last(x)).permute(*perm).detach().requires_grad_()
        dyt = torch.from_numpy(to_last(dy)).permute(*perm)
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
        assert fmt is None or xt.is_contiguous(memory_format=fmt)
    else:
        xt = torch.from_numpy(x.copy()).requires_grad_()
        dyt = torch.from_numpy(dy.copy())
    w = torch.from_numpy(scale.copy()).requires_grad_()
    b = torch.from_numpy(bias.copy()).requires_grad_()
    rm, rv = torch.zeros(C), torch.ones(C)
    if kind == RELU:
        return _pytorch_relu(torch, xt, dyt, w, b, rm, rv)
    if kind != "BatchNorm":
        return _pytorch_family(torch, _torch_family(F, kind, x.shape), xt, dyt, w, b)

    def train():
        xt.grad = w.grad = b.grad = None
        y = F.batch_norm(xt, rm, rv, w, b, training=True, momentum=0.1, eps=EPS)
        y.backward(dyt)

    def fwd():
        with torch.no_grad():
            F.batch_norm(xt, rm, rv, w, b, training=True, momentum=0.1, eps=EPS)

    def infer():
        with torch.no_grad():
            F.batch_norm(xt, rm, rv, w, b, training=False, eps=EPS)

    def results():
        xt.grad = w.grad = b.grad = None
        y = F.batch_norm(xt, rm, rv, w, b, training=True, momentum=0.1, eps=EPS)
        y.backward(dyt)
        return {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dscale": w.grad.numpy(),
                "dbias": b.grad.numpy()}

    return train, infer, fwd, results


def _pytorch_relu(torch, xt, dyt, w, b, rm, rv):
    """batch_norm then an in-place relu (its backward needs the input, not the output, so autograd
    allows it), as a PyTorch user writes it."""
    F = torch.nn.functional

    def forward(training):
        y = F.batch_norm(xt, rm, rv, w, b, training=training, momentum=0.1, eps=EPS)
        return F.relu(y, inplace=True)

    def train():
        xt.grad = w.grad = b.grad = None
        forward(True).backward(dyt)

    def fwd():
        with torch.no_grad():
            forward(True)

    def infer():
        with torch.no_grad():
            forward(False)

    def results():
        xt.grad = w.grad = b.grad = None
        y = forward(True)
        y.backward(dyt)
        return {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dscale": w.grad.numpy(),
                "dbias": b.grad.numpy()}

    return train, infer, fwd, results


def _pytorch_family(torch, forward, xt, dyt, w, b):
    def train():
        xt.grad = w.grad = b.grad = None
        forward(xt, w, b).backward(dyt)

    def fwd():
        with torch.no_grad():
            forward(xt, w, b)

    def results():
        xt.grad = w.grad = b.grad = None
        y = forward(xt, w, b)
        y.backward(dyt)
        return {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dscale": w.grad.numpy(),
                "dbias": b.grad.numpy()}

    return train, fwd, fwd, results


def naive(x, dy, scale, bias, layout="channels_first"):
    """The textbook formulas in numpy, one expression each (single-threaded, float32)."""
    ax = (0,) + tuple(range(2, x.ndim))
    cs = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if layout == "channels_last" and x.ndim > 2:
        x, dy = to_last(x), to_last(dy)
        ax, cs = tuple(range(x.ndim - 1)), (1,) * (x.ndim - 1) + (x.shape[-1],)
    sc, bi = scale.reshape(cs), bias.reshape(cs)
    rm, rv = np.zeros(cs, np.float32), np.ones(cs, np.float32)
    m = x.size // x.shape[1]

    def forward():
        mean = x.mean(axis=ax, keepdims=True)
        var = x.var(axis=ax, keepdims=True)
        inv = 1.0 / np.sqrt(var + EPS)
        xhat = (x - mean) * inv
        return xhat * sc + bi, xhat, inv

    def train():
        _, xhat, inv = forward()
        dbias = dy.sum(axis=ax, keepdims=True)
        dscale = (dy * xhat).sum(axis=ax, keepdims=True)
        return sc * inv * (dy - dbias / m - xhat * dscale / m)

    def infer():
        return (x - rm) / np.sqrt(rv + EPS) * sc + bi

    return train, infer, forward


# -- the run ---------------------------------------------------------------------------------------

def _geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def wait_for_quiet(max_seconds, threshold=5.0):
    """Sleep until the CPU pressure (avg10) is below ``threshold`` percent or time runs out."""
    t_end = time.monotonic() + max_seconds
    while time.monotonic() < t_end:
        psi = machine_load()[1]
        if psi is None or psi < threshold:
            return
        time.sleep(1.0)


def run_benchmark(shapes, passes, threads, rounds, per_round, warmup, use_torch=True,
                  use_naive=True, progress=None, settle=0.0, statistic="median", clock="wall"):
    """Time every (shape, pass); returns a dict with the environment and one row per pair.
    ``shapes`` holds (N, C, ...) shapes (channels first) or (shape, layout) pairs.
    ``progress(done, total, label)`` is called before each step when given."""
    from batchnorm_lib import config
    from batchnorm_lib.kernels.norm import cpu as cpu_kernels

    config.set_backend("cpu")
    path = cpu_kernels.active_path()
    threads_ours = cpu_kernels.set_num_threads(threads)
    torch = import_torch() if use_torch else None
    if torch is not None:
        torch.set_num_threads(threads)

    env = {
        "machine": cpu_model(), "cores": usable_cores(), "threads": threads,
        "threads_ours": threads_ours if path == "native" else 1,
        "threads_torch": torch.get_num_threads() if torch is not None else None,
        "cpu_path": path,
        "cpu_path_detail": __import__("batchnorm_lib.kernels.norm.cpu_native", fromlist=["x"]).describe()
        if path == "native" else "numpy",
        "torch": torch.__version__ if torch is not None else None,
        "numpy": np.__version__, "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": rounds, "per_round": per_round, "warmup": warmup, "statistic": statistic,
        "clock": clock,
    }
    env["load_before"] = machine_load()
    rows = []
    total = len(shapes) * (len(passes) + 1)
    done = 0
    rng = np.random.default_rng(1234)
    for item in shapes:
        kind, shape, layout = _case(item)
        batch = kind in ("BatchNorm", RELU)
        label = ("" if kind == "BatchNorm" else kind + " ") + "x".join(map(str, shape)) \
            + (" " + layout_name(shape, layout) if batch else "")
        if settle > 0:
            if progress:
                progress(done, total, "%s: waiting for a quiet machine" % label)
            wait_for_quiet(settle)
        if progress:
            progress(done, total, "%s: data, copy bandwidth, agreement" % label)
        C = param_count(kind, shape)
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, C).astype(np.float32)
        copy_gbs = copy_bandwidth(x.nbytes, threads, clock=clock)
        contestants = {"ours": ours(x, dy, scale, bias, layout, kind)}
        if torch is not None:
            contestants["torch"] = pytorch(torch, x, dy, scale, bias, layout, kind)
        agreement = None
        if torch is not None:
            a, b = contestants["ours"][3](), contestants["torch"][3]()
            if kind == RELU:
                # outputs within rounding of 0 can fall on either side of the relu in the two
                # libraries, and one such element moves dx by a whole dy: compare the gradients
                # with PyTorch's batch-norm backward given our mask
                masked = np.where(a["y"] <= 0, np.float32(0), dy)
                b = dict(pytorch(torch, x, masked, scale, bias, layout)[3](), y=b["y"])
            agreement = max(_max_rel(a[k], b[k]) for k in a)
        done += 1
        naive_fns = naive(x, dy, scale, bias, layout) if use_naive and kind == "BatchNorm" else None
        for p in passes:
            if progress:
                progress(done, total, "%s %s" % (label, p))
            idx = {"train": 0, "infer": 1, "fwd": 2}[p]
            fns = {name: c[idx] for name, c in contestants.items()}
            t = compare(fns, rounds, per_round, warmup, statistic, clock)
            if naive_fns is not None:
                # slow and single-threaded: a few calls are enough to place it
                t["naive"] = compare({"naive": naive_fns[idx]}, 1, 3, 1, clock=clock)["naive"]
            nbytes = (FEWEST_BYTES_RELU if kind == RELU else FEWEST_BYTES)[p] * x.size
            row = {"shape": list(shape), "module": kind,
                   "layout": layout_name(shape, layout) if batch else "",
                   "pass": p, "ms": {k: v * 1e3 for k, v in t.items()},
                   "gbs": nbytes / t["ours"] / 1e9, "copy_gbs": copy_gbs,
                   "frac": nbytes / t["ours"] / 1e9 / copy_gbs,
                   "torch_gbs": nbytes / t["torch"] / 1e9 if "torch" in t else None,
                   "ratio": t["torch"] / t["ours"] if "torch" in t else None,
                   "max_rel_diff": agreement}
            rows.append(row)
            done += 1
    if progress:
        progress(done, total, "done")
    env["load_after"] = machine_load()
    # the bn+relu rows get their own geomeans; the others keep the batch-norm (or family) target
    main = [r for r in rows if r["module"] != RELU] or rows
    summary = {}
    for p in passes:
        summary[p] = _geomean([r["ratio"] for r in main if r["pass"] == p])
    summary["target"] = _geomean([r["ratio"] for r in main if r["pass"] in TARGET_PASSES])
    relu_rows = [r for r in rows if r["module"] == RELU]
    if relu_rows and len(relu_rows) < len(rows):
        summary[RELU] = {p: _geomean([r["ratio"] for r in relu_rows if r["pass"] == p])
                         for p in passes}
    return {"env": env, "rows": rows, "geomean": summary}


def _busy(load):
    """Whether (load average, CPU pressure) says other work competed for the cores."""
    avg, psi = load
    if psi is not None:
        return psi > 10.0
    return avg is not None and avg > usable_cores() + 0.5


def format_table(result, markdown=False):
    env, rows = result["env"], result["rows"]
    has_torch = any(r["ratio"] is not None for r in rows)
    has_naive = any("naive" in r["ms"] for r in rows)
    head = ["shape", "layout", "pass", "ours ms"]
    if has_torch:
        head += ["torch ms"]
    if has_naive:
        head += ["naive ms"]
    head += ["ours GB/s", "copy GB/s", "of copy"]
    if has_torch:
        head += ["torch GB/s", "torch/ours"]
    body = []
    for r in rows:
        line = [("" if r.get("module", "BatchNorm") == "BatchNorm" else r["module"] + " ")
                + "x".join(map(str, r["shape"])), r.get("layout", ""), r["pass"],
                "%.3f" % r["ms"]["ours"]]
        if has_torch:
            line.append("%.3f" % r["ms"]["torch"])
        if has_naive:
            line.append("%.2f" % r["ms"]["naive"] if "naive" in r["ms"] else "-")
        line += ["%.1f" % r["gbs"], "%.1f" % r["copy_gbs"], "%.0f%%" % (100 * r["frac"])]
        if has_torch:
            line += ["%.1f" % r["torch_gbs"], "%.2fx" % r["ratio"]]
        body.append(line)
    out = []
    out.append("machine: %s, %d cores | threads: ours %s, torch %s | CPU path: %s"
               % (env["machine"], env["cores"], env["threads_ours"], env["threads_torch"],
                  env["cpu_path_detail"]))
    out.append("torch %s, numpy %s, python %s | commit %s | %s | times: %s call per side%s"
               % (env["torch"] or "not installed", env["numpy"], env["python"], env["commit"],
                  env["date"], "fastest" if env.get("statistic") == "min" else "median",
                  " (CPU time of the process)" if env.get("clock") == "cpu" else ""))
    lb, la = env.get("load_before"), env.get("load_after")
    if lb and la:
        fmt_load = lambda v: "-" if v is None else "%.2f" % v  # noqa: E731
        fmt_psi = lambda v: "-" if v is None else "%.0f%%" % v  # noqa: E731
        out.append("machine load: 1-min load average %s before, %s after; CPU pressure (avg10) "
                   "%s before, %s after%s"
                   % (fmt_load(lb[0]), fmt_load(la[0]), fmt_psi(lb[1]), fmt_psi(la[1]),
                      " -- other processes competed for the cores, times are noisy"
                      if _busy(lb) or _busy(la) else ""))
    if markdown:
        out.append("")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|")
        for line in body:
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    else:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        out.append(fmt(head))
        out.extend(fmt(b) for b in body)
    if has_torch:
        g = result["geomean"]
        parts = ["%s %.2fx" % (p, g[p]) for p in PASSES if p in g]
        out.append("geomean torch/ours: %s | target passes (%s) %.2fx"
                   % (", ".join(parts), " + ".join(TARGET_PASSES), g["target"]))
        if RELU in g:
            out.append("geomean torch/ours of the %s rows: %s" % (RELU, ", ".join(
                "%s %.2fx" % (p, g[RELU][p]) for p in PASSES if p in g[RELU])))
        diffs = [r["max_rel_diff"] for r in rows if r["max_rel_diff"] is not None]
        if diffs:
            out.append("largest difference from torch (y, dx, dscale, dbias; relative to max |value|): "
                       "%.1e" % max(diffs))
    return "\n".join(out)


def _text_progress(done, total, label):
    sys.stderr.write("\r[%d/%d] %-60s" % (done, total, label[:60]))
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def kernel_profile(shapes, threads, repeats=60, markdown=False):
    """Time the kernel calls alone (no module, outputs allocated once): the profile behind the
    module-level table. Returns the printed text."""
    from batchnorm_lib import config
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels.norm import cpu as cpu_kernels

    config.set_backend("cpu")
    path = cpu_kernels.active_path()
    cpu_kernels.set_num_threads(threads)
    ops = __import__("batchnorm_lib.kernels.norm", fromlist=["ops"]).ops("cpu")
    rng = np.random.default_rng(1234)
    head = ["shape", "layout", "copy ms", "infer ms", "of copy", "fwd ms", "of copy x1", "bwd ms",
            "of copy x1.5", "bwd sums ms"]
    rows = []
    for shape, layout in shapes:
        C = shape[1]
        ps = (1, C, 1, 1)
        # (N, C) and channels-last data take the rows x channels kernels, as the modules do
        rows_family = layout == "channels_last" or len(shape) == 2
        op = lambda name: getattr(ops, ("rows_" if rows_family else "") + name)  # noqa: E731
        store = to_last(np.empty(shape, np.float32)).shape if rows_family else shape
        x = gpuarray.to_gpu(rng.standard_normal(store, dtype=np.float32))
        dy = gpuarray.to_gpu(rng.standard_normal(store, dtype=np.float32))
        out, dx = gpuarray.empty(store, np.float32), gpuarray.empty(store, np.float32)
        sc = gpuarray.to_gpu(rng.uniform(0.5, 1.5, ps).astype(np.float32))
        bi = gpuarray.to_gpu(np.zeros(ps, np.float32))
        rm, rv = gpuarray.zeros(ps, np.float32), gpuarray.to_gpu(np.ones(ps, np.float32))
        sm, si, ds, db = (gpuarray.empty(ps, np.float32) for _ in range(4))
        src, dst = np.ones(x.size, np.float32), np.zeros(x.size, np.float32)
        try:
            from batchnorm_lib.kernels.norm import cpu_native

            copy = (lambda: cpu_native.copy(src, dst)) if cpu_native.probe()[0] \
                else (lambda: np.copyto(dst, src))
        except ImportError:
            copy = lambda: np.copyto(dst, src)  # noqa: E731
        fns = {
            "copy": copy,
            "infer": lambda: op("forward_infer")(x, sc, bi, rm, rv, EPS, out),
            "fwd": lambda: op("forward_train")(x, sc, bi, rm, rv, EPS, 0.1, out, sm, si),
            "bwd": lambda: op("backward_train")(x, dy, sc, sm, si, dx, ds, db),
            "sums": lambda: op("backward_train")(x, dy, sc, sm, si, None, ds, db),
        }
        fns["fwd"]()  # savemean/saveinvvar for the backward
        best, med = {}, {}
        for name, fn in fns.items():
            ts = []
            for _ in range(5):
                fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            best[name], med[name] = min(ts) * 1e3, statistics.median(ts) * 1e3
        cell = lambda k: "%.3f / %.3f" % (best[k], med[k])  # noqa: E731
        rows.append(["x".join(map(str, shape)), layout_name(shape, layout), cell("copy"),
                     cell("infer"),
                     "%.0f%%" % (100 * best["copy"] / best["infer"]), cell("fwd"),
                     "%.0f%%" % (100 * best["copy"] / best["fwd"]), cell("bwd"),
                     "%.0f%%" % (100 * 1.5 * best["copy"] / best["bwd"]), cell("sums")])
    lines = ["kernel profile (%s path, %d threads): fastest / median ms of %d calls; 'of copy' "
             "compares the fastest call with a copy of the same size (x1: fused forward moves "
             "what a copy moves, x1.5: fused backward moves 1.5 times that)"
             % (path, threads, repeats)]
    if markdown:
        lines += ["", "| " + " | ".join(head) + " |",
                  "|---|" + "---:|" * (len(head) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_from_args(args, progress=None):
    if args.cpu_path:
        from batchnorm_lib.kernels.norm import cpu as cpu_kernels

        cpu_kernels.use(args.cpu_path)
    if args.shape:
        layouts = LAYOUTS if args.layout == "both" else (args.layout or "channels_first",)
        # (N, C) data has one layout: one row
        shapes = [item for s in args.shape for item in
                  ([(s, "channels_first")] if len(s) == 2 else [(s, lay) for lay in layouts])]
    else:
        first, last = (QUICK_SHAPES, QUICK_LAST) if args.quick else (DEFAULT_SHAPES, DEFAULT_LAST)
        shapes = [(s, "channels_first") for s in first] + [(s, "channels_last") for s in last]
        if not args.kernels:
            shapes += list(QUICK_RELU if args.quick else RELU_CASES)
    if getattr(args, "relu", False) and not args.kernels:
        shapes = [(RELU,) + _case(item)[1:] for item in args.shape and shapes or
                  (QUICK_RELU if args.quick else RELU_CASES)]
    passes = tuple(dict.fromkeys(args.passes)) if args.passes else PASSES
    rounds = min(args.rounds, 3) if args.quick else args.rounds
    threads = args.threads or usable_cores()
    if args.kernels:
        print(kernel_profile(shapes, threads, markdown=args.markdown))
        return 0
    if getattr(args, "family", False):
        shapes = FAMILY_CASES
    result = run_benchmark(shapes, passes, threads, rounds, args.per_round, args.warmup,
                           statistic=args.statistic,
                           use_torch=not args.no_torch, use_naive=not args.no_naive,
                           progress=progress, settle=args.settle, clock=args.clock)
    print(format_table(result, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_from_args(args, progress=_text_progress if sys.stderr.isatty() else None)


if __name__ == "__main__":
    sys.exit(main())
