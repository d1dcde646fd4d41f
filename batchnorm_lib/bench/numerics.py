"""Accuracy of batch norm against float64, in float32 ulps, per backend and kernel path, next to
PyTorch's CPU batch_norm on the same data.

    python benchmarks/numerics.py [--seeds 3] [--markdown]

The measures (max over elements, channels, cases and seeds; docs/numerics.md explains them):

``mean``    |mean - exact| / ulp(max(|exact mean|, std))
``invstd``  |invstd - exact| / ulp(exact invstd)
``var``     running variance after one call with factor 1 (the unbiased batch variance) /
            ulp(exact unbiased variance)
``y``       |y - exact| / ulp(max(|exact y|, |mean * invstd * scale|, 1))
``dx``      |dx - exact| / ulp(|scale| * invstd * max |dy| of the channel)
``dscale``  |dscale - exact| / ulp(sum |dy * xhat| of the channel)
``dbias``   |dbias - exact| / ulp(sum |dy| of the channel)
``y_eval``  inference output with the running statistics, measured like y against the float64
            inference formula on the float32 running statistics

16-bit data (float16, bfloat16) is measured in ulps of its own format for y, dx and y_eval (the
statistics and parameter gradients are float32 and stay in float32 ulps).
"""

import argparse
import contextlib
import sys

import numpy as np

from batchnorm_lib import config

EPS = 1e-5

# (shape, offset): odd sizes, every rank of the family, data offset + N(0, 1)
CASES = (
    ((613, 5), 0.0), ((613, 5), 3.0), ((613, 5), 100.0),
    ((9, 4, 301), 0.0), ((9, 4, 301), 3.0), ((9, 4, 301), 100.0),
    ((5, 3, 17, 13), 0.0), ((5, 3, 17, 13), 3.0), ((5, 3, 17, 13), 100.0),
    ((3, 2, 5, 7, 9), 0.0), ((3, 2, 5, 7, 9), 3.0), ((3, 2, 5, 7, 9), 100.0),
    ((1, 3, 29, 31), 3.0), ((2, 3, 16, 16), 100.0),
    ((4, 2, 64, 64), 3.0),              # a vector path with several blocks per channel
    ((2, 3, 16, 16), 1e4),              # |mean| >> std
    ((1000003, 1), 3.0),                # 10^6 values in one channel
)

MEASURES = ("mean", "invstd", "var", "y", "dx", "dscale", "dbias", "y_eval")

_MANTISSA = {"float32": 24, "float16": 11, "bfloat16": 8}
_MIN_EXP = {"float32": -126, "float16": -14, "bfloat16": -126}


def ulp(v, dtype="float32"):
    """Unit in the last place of |v| in ``dtype`` (elementwise), with the subnormal floor."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    p, emin = _MANTISSA[name], _MIN_EXP[name]
    a = np.abs(np.asarray(v, np.float64))
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    return np.exp2(np.maximum(e, emin) - (p - 1))


def exact(x, scale, bias, dy, eps=EPS):
    """Float64 statistics, outputs and gradients of the (float32-rounded) inputs, with the scales
    of the measures."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    cs = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mean = x.mean(axis=ax)
    var = ((x - mean.reshape(cs)) ** 2).mean(axis=ax)
    invstd = 1.0 / np.sqrt(var + eps)
    g = np.asarray(scale, np.float64)
    xhat = (x - mean.reshape(cs)) * invstd.reshape(cs)
    y = xhat * g.reshape(cs) + np.asarray(bias, np.float64).reshape(cs)
    dbias = dy.sum(axis=ax)
    dscale = (dy * xhat).sum(axis=ax)
    dx = (g * invstd).reshape(cs) * (dy - dbias.reshape(cs) / m - xhat * dscale.reshape(cs) / m)
    return dict(
        mean=mean, invstd=invstd, var=var * m / (m - 1), y=y, dx=dx, dscale=dscale, dbias=dbias,
        std=np.sqrt(var), y_floor=np.abs(mean * invstd * g).reshape(cs),
        dx_scale=(np.abs(g) * invstd * np.abs(dy).max(axis=ax)).reshape(cs),
        dscale_scale=np.abs(dy * xhat).sum(axis=ax), dbias_scale=np.abs(dy).sum(axis=ax))


def exact_eval(x, scale, bias, run_mean, run_var, eps=EPS):
    x = np.asarray(x, np.float64)
    cs = (1, -1) + (1,) * (x.ndim - 2)
    f = lambda v: np.asarray(v, np.float64).reshape(cs)  # noqa: E731
    k = f(scale) / np.sqrt(f(run_var) + eps)
    return (x - f(run_mean)) * k + f(bias), np.abs(f(run_mean) * k)


def errors(got, ref, data_dtype="float32"):
    """The measures (see the module doc) of the results ``got`` against ``exact(...)``; NaN
    results count as infinite error. ``got`` may lack the backward or evaluation entries."""
    def worst(d, scale, dtype="float32"):
        d = np.abs(np.asarray(d, np.float64)) / ulp(scale, dtype)
        return float(np.max(np.where(np.isnan(d), np.inf, d)))

    out = {}
    out["mean"] = worst(got["mean"] - ref["mean"], np.maximum(np.abs(ref["mean"]), ref["std"]))
    out["invstd"] = worst(got["invstd"] - ref["invstd"], ref["invstd"])
    out["var"] = worst(got["var"] - ref["var"], ref["var"])
    out["y"] = worst(got["y"] - ref["y"], np.maximum(np.maximum(np.abs(ref["y"]), ref["y_floor"]),
                                                     1.0), data_dtype)
    if "dx" in got:
        out["dx"] = worst(got["dx"] - ref["dx"], ref["dx_scale"] + 0 * ref["dx"], data_dtype)
        out["dscale"] = worst(got["dscale"] - ref["dscale"], ref["dscale_scale"])
        out["dbias"] = worst(got["dbias"] - ref["dbias"], ref["dbias_scale"])
    if "y_eval" in got:
        y, floor = got["y_eval_ref"]
        out["y_eval"] = worst(got["y_eval"] - y, np.maximum(np.maximum(np.abs(y), floor), 1.0),
                              data_dtype)
    return out


def make_case(shape, offset, seed, dtype="float32"):
    """x = offset + N(0, 1) (rounded to ``dtype``), scale, bias, dy; x and dy as numpy arrays of
    ``dtype``, scale and bias float32."""
    rng = np.random.default_rng(seed)
    dt = _dtype(dtype)
    x = (offset + rng.standard_normal(shape)).astype(dt)
    c = shape[1]
    scale = rng.uniform(0.5, 2.0, c).astype(np.float32) * rng.choice([-1, 1], c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape).astype(dt)
    return x, scale, bias, dy


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@contextlib.contextmanager
def path(backend, kernel_path):
    """Run the block on ``backend`` with ``kernel_path``: ``native``/``numpy`` on cpu,
    ``vector``/``scalar`` on cuda/cudasim (``scalar`` forces the one-element kernels; ``vector``
    lets the launcher pick the 16-byte ones where the shape allows)."""
    previous = config.get_backend()
    config.set_backend(backend)
    restore = None
    try:
        if backend == "cpu":
            from batchnorm_lib.kernels.norm import cpu as cpu_kernels

            restore = cpu_kernels.active_path()
            cpu_kernels.use(kernel_path, quiet=True)
        elif kernel_path == "scalar":
            from batchnorm_lib.kernels.norm import cuda as cuda_kernels

            restore = cuda_kernels._vector
            cuda_kernels._vector = lambda s, dtype, *arrays: ("", 1)
        yield
    finally:
        if backend == "cpu":
            from batchnorm_lib.kernels.norm import cpu as cpu_kernels

            cpu_kernels.use(restore, quiet=True)
        elif restore is not None:
            from batchnorm_lib.kernels.norm import cuda as cuda_kernels

            cuda_kernels._vector = restore
        config.set_backend(previous)


def run_ours(x, scale, bias, dy, eps=EPS, backward=True, infer=True):
    """One training forward (factor 1, so the running statistics are the batch's), its backward,
    and an inference forward with the resulting running statistics, on the active backend and
    kernel path, calling the kernel contract directly. Returns host arrays."""
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels import norm

    ops = norm.ops()
    c = x.shape[1]
    f32 = lambda v: gpuarray.to_gpu(np.ascontiguousarray(v, np.float32))  # noqa: E731
    gx = gpuarray.to_gpu(x)
    gscale, gbias = f32(scale), f32(bias)
    rmean, rvar = f32(np.zeros(c)), f32(np.ones(c))
    out = gpuarray.empty(x.shape, x.dtype)
    smean, sinv = f32(np.zeros(c)), f32(np.zeros(c))
    ops.forward_train(gx, gscale, gbias, rmean, rvar, eps, 1.0, out, smean, sinv)
    got = dict(mean=smean.get(), invstd=sinv.get(), var=rvar.get(), run_mean=rmean.get(),
               y=out.get())
    if backward:
        gdy = gpuarray.to_gpu(dy)
        dx = gpuarray.empty(x.shape, x.dtype)
        dscale, dbias = f32(np.zeros(c)), f32(np.zeros(c))
        ops.backward_train(gx, gdy, gscale, smean, sinv, dx, dscale, dbias)
        got.update(dx=dx.get(), dscale=dscale.get(), dbias=dbias.get())
    if infer:
        ev = gpuarray.empty(x.shape, x.dtype)
        ops.forward_infer(gx, gscale, gbias, rmean, rvar, eps, ev)
        got["y_eval"] = ev.get()
        got["y_eval_ref"] = exact_eval(x, scale, bias, got["run_mean"], got["var"], eps)
    return got


def run_torch(x, scale, bias, dy, eps=EPS, backward=True, infer=True):
    """PyTorch's CPU batch_norm on the same data (float32), same outputs as :func:`run_ours`."""
    import torch

    tx = torch.tensor(x, requires_grad=backward)
    w = torch.tensor(scale, requires_grad=backward)
    b = torch.tensor(bias, requires_grad=backward)
    c = x.shape[1]
    rm, rv = torch.zeros(c, dtype=tx.dtype), torch.ones(c, dtype=tx.dtype)
    y, smean, sinv = torch.native_batch_norm(tx, w, b, rm, rv, True, 1.0, eps)
    got = dict(mean=smean.detach().numpy(), invstd=sinv.detach().numpy(), var=rv.numpy().copy(),
               run_mean=rm.numpy().copy(), y=y.detach().numpy())
    if backward:
        y.backward(torch.tensor(dy))
        got.update(dx=tx.grad.numpy(), dscale=w.grad.numpy(), dbias=b.grad.numpy())
    if infer:
        with torch.no_grad():
            ev = torch.nn.functional.batch_norm(torch.tensor(x), rm, rv, torch.tensor(scale),
                                                torch.tensor(bias), False, 0.0, eps)
        got["y_eval"] = ev.numpy()
        got["y_eval_ref"] = exact_eval(x, scale, bias, got["run_mean"], got["var"], eps)
    return got


def _unit_test_case(seed, shape):
    """(x, module) of one PuzzleLib-style unit test: the module's random scale comes from numpy's
    global generator, seeded here so every path sees the same parameters."""
    from batchnorm_lib.modules import BatchNorm2D

    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    np.random.seed(seed)
    return x, BatchNorm2D(shape[1])


def _unit_test_passes(x, y, bn):
    """np.allclose(y, float32 host reference: numpy's mean and var, then the formula)."""
    ax, cs = (0, 2, 3), (1, -1, 1, 1)
    mean, var = x.mean(axis=ax, keepdims=True), x.var(axis=ax, keepdims=True)
    scale, bias = bn.scale.get().reshape(cs), bn.bias.get().reshape(cs)
    return bool(np.allclose(y, (x - mean) / np.sqrt(var + np.float32(EPS)) * scale + bias))


def allclose_rate(seeds=50, shape=(16, 5, 4, 2), rounded_float64=False):
    """How often a PuzzleLib-style unit test passes (BatchNorm2D training output against a float32
    host reference with np.allclose at its default tolerance) over ``seeds`` random batches, on the
    active backend and path; ``rounded_float64``: for float64 arithmetic rounded once to float32 instead, the
    rate a faithful float32 result can expect."""
    from batchnorm_lib.backend import gpuarray

    passed = 0
    for seed in range(seeds):
        x, bn = _unit_test_case(seed, shape)
        if rounded_float64:
            y = exact(x, bn.scale.get().ravel(), bn.bias.get().ravel(), x)["y"].astype(np.float32)
        else:
            y = bn(gpuarray.to_gpu(x)).get()
        passed += _unit_test_passes(x, y, bn)
    return passed


def available_paths():
    """[(label, backend, kernel path)] that work here, PyTorch last."""
    out = []
    if config.probe("cpu")[0]:
        from batchnorm_lib.kernels.norm import cpu as cpu_kernels

        out += [("cpu " + p, "cpu", p) for p in cpu_kernels.available_paths()]
    for name in ("cudasim", "cuda"):
        if config.probe(name)[0]:
            out += [("%s vector" % name, name, "vector"), ("%s scalar" % name, name, "scalar")]
    return out


def measure(label, backend, kernel_path, cases, seeds, dtype="float32", progress=None):
    """Worst error per measure over ``cases`` x ``seeds`` for one path (backend None: PyTorch)."""
    worst = {}
    for shape, offset in cases:
        for seed in range(seeds):
            x, scale, bias, dy = make_case(shape, offset, seed, dtype)
            ref = exact(x, scale, bias, dy)
            if backend is None:
                got = run_torch(x, scale, bias, dy)
            else:
                with path(backend, kernel_path):
                    got = run_ours(x, scale, bias, dy)
            for k, v in errors(got, ref, dtype).items():
                worst[k] = max(worst.get(k, 0.0), v)
        if progress:
            progress(label, shape, offset)
    return worst


def table(rows, markdown):
    head = ["path"] + list(MEASURES)
    lines = []
    fmt = lambda v: "-" if v is None else ("%.2f" % v)  # noqa: E731
    body = [[label] + [fmt(w.get(m)) for m in MEASURES] for label, w in rows]
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(MEASURES)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        for r in [head] + body:
            lines.append("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                                   for i, v in enumerate(r)))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="numerics",
        description="Worst errors of batch norm in float32 ulps against float64, per backend and "
                    "kernel path, next to PyTorch's CPU batch_norm, on %d shapes x offsets."
                    % len(CASES))
    p.add_argument("--seeds", type=int, default=3, help="random seeds per case (default 3)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--no-16bit", action="store_true", help="skip the float16/bfloat16 tables")
    args = p.parse_args(argv)

    def progress(label, shape, offset):
        print("  %s %s +%g" % (label, shape, offset), file=sys.stderr, flush=True)

    paths = available_paths()
    rows = [(label, measure(label, b, k, CASES, args.seeds, progress=progress))
            for label, b, k in paths]
    try:
        import torch  # noqa: F401

        rows.append(("PyTorch CPU", measure("torch", None, None, CASES, args.seeds,
                                            progress=progress)))
    except ImportError:
        pass
    print("float32 data, %d cases x %d seeds (worst float32 ulps):" % (len(CASES), args.seeds))
    print(table(rows, args.markdown))
    print()
    print("PuzzleLib-style unit test (BatchNorm2D(5) on (16, 5, 4, 2), float32 host reference, "
          "np.allclose): passes of 50 seeds")
    for label, b, k in paths:
        with path(b, k):
            print("  %-16s %2d" % (label, allclose_rate()))
    print("  %-16s %2d" % ("float64, rounded", allclose_rate(rounded_float64=True)))
    if not args.no_16bit:
        gpu = [(label, b, k) for label, b, k in paths if b != "cpu"]
        for dtype in ("float16", "bfloat16"):
            rows = [(label, measure(label, b, k, CASES, args.seeds, dtype, progress))
                    for label, b, k in gpu]
            if rows:
                print()
                print("%s data (y, dx, y_eval in %s ulps; the rest float32 ulps):" % (dtype, dtype))
                print(table(rows, args.markdown))
    return 0
