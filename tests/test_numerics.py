"""Accuracy and non-finite values of batch norm on every backend and kernel path.

Accuracy: errors in float32 ulps against the float64 reference (tests/reference.py), with the
measures of docs/numerics.md: the batch mean within 1 ulp of max(|mean|, std), invstd and the
running variance within 2; y, dx, dscale, dbias and the inference output no worse than PyTorch's
CPU batch_norm on the same cases; 16-bit data within 1 ulp of its own format.

Non-finite values: a NaN, +Inf or -Inf (or a channel of +Inf) in the data makes that channel's batch
statistics, output, running statistics and gradients what PyTorch makes them (NaN, or +-Inf where
PyTorch has +-Inf), in training, evaluation and backward, and leaves every other channel bit-for-bit
as it is without the poison.

Each test runs once per kernel path: cpu native and numpy, cudasim vector (16-byte kernels where
the shape allows) and scalar (forced one-element kernels).
"""

import numpy as np
import pytest

from batchnorm_lib import config
from batchnorm_lib.bench import numerics as nm

import reference as ref

torch = pytest.importorskip("torch")

EPS = 1e-5
PATHS = [("cpu", "native"), ("cpu", "numpy"), ("cudasim", "vector"), ("cudasim", "scalar")]

# (shape, data offset): every rank, odd sizes, offsets 0, 3, 100 and 1e4 (|mean| >> std), N = 1 and
# N = 2 with spatial axes, several blocks per channel on the CUDA paths ((4, 2, 64, 64): a vector
# kernel over 8 blocks per channel), and one channel of 10^6 values ((N, C) column kernels; every
# thread's stream spans several accumulation chunks).
CASES = [
    ((613, 5), 0.0),
    ((613, 5), 100.0),
    ((9, 4, 301), 3.0),
    ((5, 3, 17, 13), 0.0),
    ((3, 2, 5, 7, 9), 100.0),
    ((1, 3, 29, 31), 3.0),
    ((2, 3, 16, 16), 1e4),
    ((4, 2, 64, 64), 3.0),
    ((1000003, 1), 3.0),
]
SEED = 5


def _ids(params):
    return ["%s-%s" % p for p in params]


def _use_path(request):
    backend, kind = request.param
    ok, reason = config.probe(backend)
    if not ok:
        pytest.skip("backend %s unavailable: %s" % (backend, reason))
    if backend == "cpu" and kind == "native":
        from batchnorm_lib.kernels.norm import cpu_native

        ok, reason = cpu_native.probe()
        if not ok:
            pytest.skip("compiled CPU kernels unavailable: %s" % reason)
    return nm.path(backend, kind)


@pytest.fixture(params=PATHS, ids=_ids(PATHS))
def kernel_path(request):
    with _use_path(request):
        yield request.param


@pytest.fixture(params=PATHS[2:], ids=_ids(PATHS[2:]))
def cuda_path(request):
    """The CUDA kernel paths only: 16-bit data is a CUDA-backend feature."""
    with _use_path(request):
        yield request.param


def _reference(x, scale, bias, dy):
    """The measures' float64 values and scales, from tests/reference.py."""
    y, mean, var, uvar, invstd = ref.forward_train(x, scale, bias, EPS)
    dx, dscale, dbias = ref.backward_train(x, dy, scale, EPS)
    cs, ax = ref.channel_shape(x), ref.axes_but_channel(x)
    x64, dy64, g = np.asarray(x, np.float64), np.asarray(dy, np.float64), np.float64(scale)
    xhat = (x64 - mean.reshape(cs)) * invstd.reshape(cs)
    return dict(
        mean=mean, invstd=invstd, var=uvar, y=y, dx=dx, dscale=dscale, dbias=dbias,
        std=np.sqrt(var), y_floor=np.abs(mean * invstd * g).reshape(cs),
        dx_scale=(np.abs(g) * invstd * np.abs(dy64).max(axis=ax)).reshape(cs),
        dscale_scale=np.abs(dy64 * xhat).sum(axis=ax), dbias_scale=np.abs(dy64).sum(axis=ax))


def _errors(run, cases, dtype="float32"):
    """Worst error per measure over ``cases`` with ``run`` (ours or PyTorch's)."""
    worst = {}
    for shape, offset in cases:
        x, scale, bias, dy = nm.make_case(shape, offset, SEED, dtype)
        got = run(x, scale, bias, dy)
        rm, rv = np.float64(got["run_mean"]), np.float64(got["var"])
        floor = np.abs(rm * scale / np.sqrt(rv + EPS)).reshape(ref.channel_shape(x))
        got["y_eval_ref"] = ref.forward_eval(x, scale, bias, rm, rv, EPS), floor
        for k, v in nm.errors(got, _reference(x, scale, bias, dy), dtype).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst


@pytest.fixture(scope="module")
def torch_errors():
    return _errors(nm.run_torch, CASES)


def test_accuracy_against_float64_and_pytorch(kernel_path, torch_errors):
    ours = _errors(nm.run_ours, CASES)
    table = "\n".join("%-7s ours %6.2f  PyTorch %6.2f" % (k, ours[k], torch_errors[k])
                      for k in nm.MEASURES)
    assert ours["mean"] <= 1.0, table
    assert ours["invstd"] <= 2.0, table
    assert ours["var"] <= 2.0, table
    for k in ("y", "dx", "dscale", "dbias", "y_eval"):
        assert ours[k] <= torch_errors[k], "%s: ours worse than PyTorch\n%s" % (k, table)


# The rows x channels kernels (channels-last data; BatchNorm on (N, C) in that layout), run on the
# same cases moved to channels-last: odd C, vector and scalar packs, offsets up to 1e4, and a tall
# (N, C) case whose channel tiles span several row splits and accumulation chunks.
ROWS_CASES = [
    ((613, 5), 100.0),
    ((9, 4, 301), 3.0),
    ((3, 8, 5, 7, 9), 100.0),
    ((2, 3, 16, 16), 1e4),
    ((200003, 3), 3.0),
]


def _run_rows(x, scale, bias, dy):
    """run_ours through the rows_* entries: the data moved to channels-last, results moved back."""
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels import norm

    ops = norm.ops()
    c = x.shape[1]
    last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    first = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    f32 = lambda v: gpuarray.to_gpu(np.ascontiguousarray(v, np.float32))  # noqa: E731
    gx, gdy, gs, gb = gpuarray.to_gpu(last(x)), gpuarray.to_gpu(last(dy)), f32(scale), f32(bias)
    rm, rv = f32(np.zeros(c)), f32(np.ones(c))
    out, sm, si = gpuarray.empty(gx.shape, x.dtype), f32(np.zeros(c)), f32(np.zeros(c))
    ops.rows_forward_train(gx, gs, gb, rm, rv, EPS, 1.0, out, sm, si)
    dx, dsc, dbi = gpuarray.empty(gx.shape, x.dtype), f32(np.zeros(c)), f32(np.zeros(c))
    ops.rows_backward_train(gx, gdy, gs, sm, si, dx, dsc, dbi)
    ev = gpuarray.empty(gx.shape, x.dtype)
    ops.rows_forward_infer(gx, gs, gb, rm, rv, EPS, ev)
    return dict(mean=sm.get(), invstd=si.get(), var=rv.get(), run_mean=rm.get(),
                y=first(out.get()), dx=first(dx.get()), dscale=dsc.get(), dbias=dbi.get(),
                y_eval=first(ev.get()))


def test_rows_accuracy_against_float64_and_pytorch(kernel_path):
    ours, theirs = _errors(_run_rows, ROWS_CASES), _errors(nm.run_torch, ROWS_CASES)
    table = "\n".join("%-7s ours %6.2f  PyTorch %6.2f" % (k, ours[k], theirs[k])
                      for k in nm.MEASURES)
    assert ours["mean"] <= 1.0, table
    assert ours["invstd"] <= 2.0, table
    assert ours["var"] <= 2.0, table
    for k in ("y", "dx", "dscale", "dbias", "y_eval"):
        assert ours[k] <= theirs[k], "%s: ours worse than PyTorch\n%s" % (k, table)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_accuracy(cuda_path, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    cases = [((613, 5), 3.0), ((3, 2, 5, 7, 9), 100.0), ((4, 2, 64, 64), 0.0)]
    ours = _errors(nm.run_ours, cases, dtype)
    assert ours["mean"] <= 1.0 and ours["invstd"] <= 2.0 and ours["var"] <= 2.0, ours
    for k in ("y", "dx", "y_eval"):  # in ulps of the 16-bit format
        assert ours[k] <= 1.0, (k, ours)


# -- non-finite values -------------------------------------------------------------------------------

SHAPE = (4, 3, 5, 7)  # odd spatial size; poisoned channel 1
POISONS = {
    "nan": lambda x: x.__setitem__((2, 1, 3, 4), np.nan),
    "+inf": lambda x: x.__setitem__((1, 1, 0, 6), np.inf),
    "-inf": lambda x: x.__setitem__((3, 1, 4, 0), -np.inf),
    "all+inf": lambda x: x.__setitem__((slice(None), 1), np.inf),
    "first-inf": lambda x: x.__setitem__((0, 1, 0, 0), np.inf),  # the CUDA kernels' shift
}
FACTOR = 0.5


def _run_ours_all(x, dy, scale, bias, family="channels_first"):
    """Training forward and backward, then evaluation forward and backward with the updated running
    statistics, through the kernel contract on the active path: the channels-first entries, or
    (``family="rows"``) the rows x channels entries on the same values stored channels last."""
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels import norm

    ops = norm.ops()
    rows = family == "rows"
    op = lambda name: getattr(ops, ("rows_" if rows else "") + name)  # noqa: E731
    store = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if rows else (lambda a: a)
    back = (lambda a: np.moveaxis(a, -1, 1)) if rows else (lambda a: a)
    c = x.shape[1]
    f32 = lambda v: gpuarray.to_gpu(np.ascontiguousarray(v, np.float32))  # noqa: E731
    gx, gdy, gs, gb = gpuarray.to_gpu(store(x)), gpuarray.to_gpu(store(dy)), f32(scale), f32(bias)
    rm, rv = f32(np.linspace(-1, 1, c)), f32(np.linspace(0.5, 2, c))
    out, sm, si = gpuarray.empty(gx.shape, x.dtype), f32(np.zeros(c)), f32(np.zeros(c))
    op("forward_train")(gx, gs, gb, rm, rv, EPS, FACTOR, out, sm, si)
    dx, dsc, dbi = gpuarray.empty(gx.shape, x.dtype), f32(np.zeros(c)), f32(np.zeros(c))
    op("backward_train")(gx, gdy, gs, sm, si, dx, dsc, dbi)
    ev, evdx = gpuarray.empty(gx.shape, x.dtype), gpuarray.empty(gx.shape, x.dtype)
    op("forward_infer")(gx, gs, gb, rm, rv, EPS, ev)
    op("backward_infer")(gdy, gs, rv, EPS, evdx)
    return dict(y=back(out.get()), mean=sm.get(), invstd=si.get(), run_mean=rm.get(),
                run_var=rv.get(), dx=back(dx.get()), dscale=dsc.get(), dbias=dbi.get(),
                y_eval=back(ev.get()), dx_eval=back(evdx.get()))


def _run_torch_all(x, dy, scale, bias):
    c = x.shape[1]
    tx = torch.tensor(np.asarray(x, np.float32), requires_grad=True)
    w = torch.tensor(scale, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    rm = torch.tensor(np.linspace(-1, 1, c), dtype=torch.float32)
    rv = torch.tensor(np.linspace(0.5, 2, c), dtype=torch.float32)
    y, sm, si = torch.native_batch_norm(tx, w, b, rm, rv, True, FACTOR, EPS)
    tdy = torch.tensor(np.asarray(dy, np.float32))
    y.backward(tdy)
    out = dict(y=y.detach().numpy(), mean=sm.numpy(), invstd=si.numpy(), run_mean=rm.numpy(),
               run_var=rv.numpy(), dx=tx.grad.numpy(), dscale=w.grad.numpy(),
               dbias=b.grad.numpy())
    ex = torch.tensor(np.asarray(x, np.float32), requires_grad=True)
    ev = torch.nn.functional.batch_norm(ex, rm, rv, w.detach(), b.detach(), False, 0.0, EPS)
    ev.backward(tdy)
    out.update(y_eval=ev.detach().numpy(), dx_eval=ex.grad.numpy())
    return out


def _assert_like_torch(ours, theirs, name):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    for test in (np.isnan, np.isposinf, np.isneginf):
        mismatch = test(ours) != test(theirs)
        assert not mismatch.any(), "%s: %s differs from PyTorch at %s (ours %s, PyTorch %s)" % (
            name, test.__name__, np.argwhere(mismatch)[:3].tolist(), ours[mismatch][:3],
            theirs[mismatch][:3])
    fin = np.isfinite(theirs)
    np.testing.assert_allclose(ours[fin], theirs[fin], rtol=2e-3, atol=2e-3, err_msg=name)


def _assert_other_channels_bitwise(poisoned, clean, channel, name):
    p, c = np.asarray(poisoned), np.asarray(clean)
    keep = [i for i in range(SHAPE[1]) if i != channel]
    if p.ndim == 1:
        np.testing.assert_array_equal(p[keep], c[keep], err_msg=name)
    else:
        np.testing.assert_array_equal(p[:, keep], c[:, keep], err_msg=name)


def _case(dtype="float32"):
    rng = np.random.default_rng(29)
    dt = nm._dtype(dtype)
    x = (2.0 + rng.standard_normal(SHAPE)).astype(dt)
    dy = rng.standard_normal(SHAPE).astype(dt)
    scale = rng.uniform(0.5, 2.0, SHAPE[1]).astype(np.float32) * np.float32([1, -1, 1])
    bias = rng.standard_normal(SHAPE[1]).astype(np.float32)
    return x, dy, scale, bias


def _poisoned_runs(poison, target, dtype="float32", family="channels_first"):
    """(clean, ours, PyTorch's) results, with ``poison`` applied to ``target`` ('x' or 'dy')."""
    x, dy, scale, bias = _case(dtype)
    clean = _run_ours_all(x, dy, scale, bias, family)
    POISONS[poison](x if target == "x" else dy)
    ours = _run_ours_all(x, dy, scale, bias, family)
    theirs = _run_torch_all(x.astype(np.float32), dy.astype(np.float32), scale, bias)
    return clean, ours, theirs


FAMILIES = ["channels_first", "rows"]  # the batch-norm entries, and the rows x channels ones


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("poison", sorted(POISONS))
def test_nonfinite_data_like_pytorch(kernel_path, poison, family):
    clean, ours, theirs = _poisoned_runs(poison, "x", family=family)
    for name in ours:
        _assert_like_torch(ours[name], theirs[name], name)
        _assert_other_channels_bitwise(ours[name], clean[name], 1, name)
    # the poisoned channel: batch statistics, training output and running variance are NaN
    assert np.isnan(ours["invstd"][1]) and np.isnan(ours["run_var"][1])
    assert np.isnan(ours["y"][:, 1]).all() and np.isnan(ours["y_eval"][:, 1]).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("poison", ["nan", "+inf"])
def test_nonfinite_gradient_like_pytorch(kernel_path, poison, family):
    clean, ours, theirs = _poisoned_runs(poison, "dy", family=family)
    names = ["dbias", "dscale", "dx_eval"] + (["dx"] if poison == "nan" else [])
    for name in names:
        _assert_like_torch(ours[name], theirs[name], name)
    for name in ("dx", "dscale", "dbias", "dx_eval"):
        _assert_other_channels_bitwise(ours[name], clean[name], 1, name)
    # an Inf in dy makes the whole channel of dx non-finite on both sides; which elements are NaN
    # and which +-Inf depends on where each formula subtracts Inf from Inf
    assert not np.isfinite(ours["dx"][:, 1]).any()
    assert not np.isfinite(theirs["dx"][:, 1]).any()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("poison", ["nan", "+inf"])
def test_nonfinite_16bit_like_pytorch(cuda_path, dtype, poison, family):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    clean, ours, theirs = _poisoned_runs(poison, "x", dtype, family)
    for name in ours:
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(np.asarray(ours[name], np.float64)),
                                          test(theirs[name]), err_msg=name)
        _assert_other_channels_bitwise(ours[name], clean[name], 1, name)


@pytest.mark.parametrize("row", [0, 50000, 50003, 299999])
def test_nonfinite_rows_at_any_row(kernel_path, row):
    """(N, C) data long enough that the kernels split the rows: +Inf at the first row of the data,
    of a later part (50000 on the CPU kernels), inside one, and last makes that channel's mean +Inf
    and the rest of its statistics NaN, as PyTorch's sum / m, whatever the part's shift."""
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels import norm

    ops = norm.ops()
    rng = np.random.default_rng(31)
    x = (3.0 + rng.standard_normal((300000, 3))).astype(np.float32)
    f32 = lambda v: gpuarray.to_gpu(np.ascontiguousarray(v, np.float32))  # noqa: E731

    def run(data):
        rm, rv, sm, si = f32(np.zeros(3)), f32(np.ones(3)), f32(np.zeros(3)), f32(np.zeros(3))
        out = gpuarray.empty(data.shape, np.float32)
        ops.rows_forward_train(f32(data), f32(np.ones(3)), f32(np.zeros(3)), rm, rv, EPS, FACTOR,
                               out, sm, si)
        return dict(mean=sm.get(), invstd=si.get(), run_mean=rm.get(), run_var=rv.get())

    clean = run(x)
    x[row, 1] = np.inf
    ours = run(x)
    assert np.isposinf(ours["mean"][1]) and np.isposinf(ours["run_mean"][1]), ours
    assert np.isnan(ours["invstd"][1]) and np.isnan(ours["run_var"][1]), ours
    for name in ours:
        np.testing.assert_array_equal(ours[name][[0, 2]], clean[name][[0, 2]], err_msg=name)
