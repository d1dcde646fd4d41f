"""InstanceNorm2D, LayerNorm and GroupNorm on every backend and CPU path, against an independent
float64 reference (written from the definitions in docs/modules/) and against PyTorch."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchnorm_lib import GroupNorm, InstanceNorm2D, LayerNorm, ModuleError, config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.kernels.norm import cpu_native
from conftest import TOLERANCES, active_backend

RTOL, ATOL = 2e-5, 2e-5

# -- the float64 reference ---------------------------------------------------------------------

def _groups_view(module, x):
    """(x reshaped so axis 1 holds the normalized groups' values, per-element scale/bias shape)."""
    if isinstance(module, LayerNorm):
        k = len(module.shape)
        return x.reshape(x.shape[:-k] + (-1,)), (-1,)
    if isinstance(module, InstanceNorm2D):
        return x.reshape(x.shape[0], x.shape[1], -1), None
    return x.reshape(x.shape[0], module.groups, -1), None


def reference(module, x, dy, scale, bias):
    """(y, dx, dscale, dbias, mean, invstd) in float64 from the definitions."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    if isinstance(module, LayerNorm):
        k = len(module.shape)
        axes = tuple(range(x.ndim - k, x.ndim))
        pshape = module.shape
        paxes = tuple(range(x.ndim - k))
    elif isinstance(module, InstanceNorm2D):
        axes, pshape, paxes = (2, 3), (1, x.shape[1], 1, 1), (0, 2, 3)
    else:
        n, c, g = x.shape[0], x.shape[1], module.groups
        xs = x.reshape(n, g, -1)
        mean = xs.mean(axis=2)
        var = ((xs - mean[:, :, None]) ** 2).mean(axis=2)
        invstd = 1.0 / np.sqrt(var + module.epsilon)
        xhat = ((xs - mean[:, :, None]) * invstd[:, :, None]).reshape(x.shape)
        cs = (1, c) + (1,) * (x.ndim - 2)
        sc, bi = np.asarray(scale, np.float64).reshape(cs), np.asarray(bias, np.float64).reshape(cs)
        gr = (dy * sc).reshape(n, g, -1)
        xh = xhat.reshape(n, g, -1)
        dx = invstd[:, :, None] * (gr - gr.mean(axis=2, keepdims=True)
                                   - xh * (gr * xh).mean(axis=2, keepdims=True))
        pa = (0,) + tuple(range(2, x.ndim))
        return (xhat * sc + bi, dx.reshape(x.shape), (dy * xhat).sum(axis=pa), dy.sum(axis=pa),
                mean.ravel(), invstd.ravel())
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + module.epsilon)
    xhat = (x - mean) * invstd
    sc = np.asarray(scale, np.float64).reshape(pshape)
    bi = np.asarray(bias, np.float64).reshape(pshape)
    g = dy * sc
    dx = invstd * (g - g.mean(axis=axes, keepdims=True)
                   - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return (xhat * sc + bi, dx, (dy * xhat).sum(axis=paxes).ravel(), dy.sum(axis=paxes).ravel(),
            mean.ravel(), invstd.ravel())


# -- cases: odd sizes; some with rows of whole 16-byte packs for the vector kernels ------------

CASES = {
    "LayerNorm-7": (lambda **kw: LayerNorm(7, **kw), (5, 7)),
    "LayerNorm-3x5": (lambda **kw: LayerNorm((3, 5), **kw), (2, 3, 3, 5)),
    "LayerNorm-24": (lambda **kw: LayerNorm(24, **kw), (3, 2, 24)),
    "InstanceNorm2D": (lambda **kw: InstanceNorm2D(5, **kw), (3, 5, 7, 3)),
    "InstanceNorm2D-vec": (lambda **kw: InstanceNorm2D(3, **kw), (2, 3, 4, 6)),
    "GroupNorm-3of9": (lambda **kw: GroupNorm(3, 9, **kw), (2, 9, 5, 3)),
    "GroupNorm-1group": (lambda **kw: GroupNorm(1, 6, **kw), (3, 6, 7)),
    "GroupNorm-groups=C": (lambda **kw: GroupNorm(5, 5, **kw), (2, 5, 3, 3)),
    "GroupNorm-nospatial": (lambda **kw: GroupNorm(2, 6, **kw), (3, 6)),
    "GroupNorm-3d-vec": (lambda **kw: GroupNorm(2, 4, **kw), (2, 4, 2, 2, 3)),
}


def make(name, rng, affine=True, epsilon=1e-5):
    factory, shape = CASES[name]
    module = factory(affine=affine, epsilon=epsilon)
    if affine:
        module.scale.set(rng.uniform(0.5, 1.5, module.scale.shape).astype(np.float32))
        module.bias.set(rng.normal(0, 1, module.bias.shape).astype(np.float32))
    return module, shape


def run(module, x, dy, **kw):
    out = module(gpuarray.to_gpu(x))
    dx = module.backward(gpuarray.to_gpu(dy), **kw)
    return out, dx


def host(a):
    return np.asarray(a.get(), np.float64)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(where, rng, name, affine):
    module, shape = make(name, rng, affine=affine)
    x = rng.normal(1.0, 3.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    out, dx = run(module, x, dy)
    y, rdx, rds, rdb, mean, invstd = reference(module, x, dy, host(module.scale), host(module.bias))
    np.testing.assert_allclose(out.get(), y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx.get(), rdx, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(module.savemean.get(), mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(module.saveinvvar.get(), invstd, rtol=RTOL, atol=ATOL)
    assert out is module.data and dx is module.grad and out.dtype == dx.dtype == np.float32
    if affine:
        np.testing.assert_allclose(module.vars["scale"].grad.get().ravel(), rds, rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(module.vars["bias"].grad.get().ravel(), rdb, rtol=1e-4,
                                   atol=1e-4)
    else:
        assert module.vars == {}
        np.testing.assert_array_equal(module.scale.get(), np.ones(module.paramShape))


def _torch_module(torch, module):
    if isinstance(module, LayerNorm):
        return torch.nn.LayerNorm(module.shape, eps=module.epsilon,
                                  elementwise_affine=module.affine)
    if isinstance(module, InstanceNorm2D):
        return torch.nn.InstanceNorm2d(module.maps, eps=module.epsilon, affine=module.affine)
    return torch.nn.GroupNorm(module.groups, module.maps, eps=module.epsilon, affine=module.affine)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(where, rng, name, affine):
    torch = pytest.importorskip("torch")
    module, shape = make(name, rng, affine=affine)
    tm = _torch_module(torch, module)
    if affine:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(module.scale.get().reshape(tm.weight.shape)))
            tm.bias.copy_(torch.from_numpy(module.bias.get().reshape(tm.bias.shape)))
    x = rng.normal(-2.0, 2.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    out, dx = run(module, x, dy)
    xt = torch.from_numpy(x).requires_grad_()
    yt = tm(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(out.get(), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.get(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    if affine:
        np.testing.assert_allclose(module.vars["scale"].grad.get().ravel(),
                                   tm.weight.grad.numpy().ravel(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(module.vars["bias"].grad.get().ravel(),
                                   tm.bias.grad.numpy().ravel(), rtol=1e-4, atol=1e-4)


def _ulp(v):
    return np.spacing(np.abs(np.float32(v)))


@pytest.mark.parametrize("name", ["LayerNorm-3x5", "InstanceNorm2D", "GroupNorm-3of9"])
def test_large_offset_statistics(where, rng, name):
    """Rows of 1e4 + N(0, 1): mean within 1 ulp of max(|mean|, std), invstd within 2 ulp."""
    module, shape = make(name, rng)
    x = (1e4 + rng.normal(0.0, 1.0, shape)).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    out, dx = run(module, x, dy)
    y, rdx, _, _, mean, invstd = reference(module, x, dy, host(module.scale), host(module.bias))
    std = 1.0 / invstd
    assert np.all(np.abs(host(module.savemean) - mean) <= _ulp(np.maximum(np.abs(mean), std)))
    assert np.all(np.abs(host(module.saveinvvar) - invstd) <= 2 * _ulp(invstd))
    # x - mean in float32 carries the rounding of the float32 mean, half an ulp of 1e4
    tol = 2 * _ulp(1e4) * 1.5
    np.testing.assert_allclose(out.get(), y, rtol=1e-4, atol=tol)
    np.testing.assert_allclose(dx.get(), rdx, rtol=1e-4, atol=tol)


def test_long_row_large_offset(where, rng):
    """One long LayerNorm row of 1e4 + N(0, 1) (several blocks of lanes per row)."""
    module = LayerNorm(5003)
    x = (1e4 + rng.normal(0.0, 1.0, (2, 5003))).astype(np.float32)
    out = module(gpuarray.to_gpu(x))
    y, _, _, _, mean, invstd = reference(module, x, x, np.ones(5003), np.zeros(5003))
    assert np.all(np.abs(host(module.savemean) - mean) <= _ulp(mean))
    assert np.all(np.abs(host(module.saveinvvar) - invstd) <= 2 * _ulp(invstd))
    np.testing.assert_allclose(out.get(), y, rtol=1e-4, atol=2 * _ulp(1e4))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["LayerNorm-24", "InstanceNorm2D", "GroupNorm-3d-vec",
                                  "GroupNorm-nospatial"])
def test_half_precision_on_cuda(rng, name, dtype):
    """float16/bfloat16 data with float32 statistics, on the CUDA backends present."""
    ran = False
    for backend in ("cudasim", "cuda"):
        if not config.probe(backend)[0]:
            continue
        with active_backend(backend):
            dt = np.dtype(dtype) if dtype == "float16" else __import__("ml_dtypes").bfloat16
            if np.dtype(dt) not in config.backend_module().supported_dtypes():
                continue
            rtol, atol = TOLERANCES[dtype]
            module, shape = make(name, rng)
            module.calcMode(dt)
            x = rng.normal(1.0, 2.0, shape).astype(dt)
            dy = rng.normal(0.0, 1.0, shape).astype(dt)
            out, dx = run(module, x, dy)
            assert out.dtype == dx.dtype == np.dtype(dt)
            y, rdx, rds, rdb, _, _ = reference(module, x.astype(np.float64), dy.astype(np.float64),
                                               host(module.scale), host(module.bias))
            np.testing.assert_allclose(host(out), y, rtol=rtol, atol=atol * 4)
            np.testing.assert_allclose(host(dx), rdx, rtol=rtol, atol=atol * 4)
            np.testing.assert_allclose(module.vars["scale"].grad.get().ravel(), rds, rtol=1e-4,
                                       atol=1e-3)
            np.testing.assert_allclose(module.vars["bias"].grad.get().ravel(), rdb, rtol=1e-4,
                                       atol=1e-3)
            ran = True
    if not ran:
        pytest.skip("no CUDA backend with %s here" % dtype)


def test_repeatable_and_threads_independent(where, rng):
    """Bitwise equal results on repeated runs (and, on the native path, with 1 or 2 threads)."""
    shape = (6, 40, 330)  # 79 200 values: above the single-thread threshold of the C kernels
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    if not where.startswith("cpu"):
        shape, x, dy = (3, 40, 5), x[:3, :, :5].copy(), dy[:3, :, :5].copy()
    results = []
    threads = [1, 2] if where == "cpu-native" else [None, None]
    before = cpu_kernels.get_num_threads() if where == "cpu-native" else None
    try:
        for t in threads:
            if t is not None:
                cpu_kernels.set_num_threads(t)
            for module in (LayerNorm(shape[-1]), GroupNorm(4, 40)):
                out, dx = run(module, x, dy)
                results.append([out.get(), dx.get(), module.vars["scale"].grad.get(),
                                module.vars["bias"].grad.get()])
    finally:
        if before is not None:
            cpu_kernels.set_num_threads(0)
    half = len(results) // 2
    for a, b in zip(results[:half], results[half:]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


# -- module behaviour ----------------------------------------------------------------------------

def test_param_grad_accumulation_and_updates(where, rng):
    module, shape = make("GroupNorm-3of9", rng)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    _, _, rds, rdb, _, _ = reference(module, x, dy, host(module.scale), host(module.bias))
    module(gpuarray.to_gpu(x))
    module.backward(gpuarray.to_gpu(dy))
    module.backward(gpuarray.to_gpu(dy), scale=0.5, momentum=1.0)
    np.testing.assert_allclose(module.vars["scale"].grad.get().ravel(), 1.5 * rds, rtol=1e-4,
                               atol=1e-4)
    # updGrad=False still computes the parameter gradients, and returns no input gradient
    assert module.backward(gpuarray.to_gpu(dy), updGrad=False, momentum=0.0) is None
    np.testing.assert_allclose(module.vars["bias"].grad.get().ravel(), rdb, rtol=1e-4, atol=1e-4)
    scale0 = module.scale.get()
    module.updateParams(0.1)
    np.testing.assert_allclose(module.scale.get().ravel(), scale0.ravel() + 0.1 * rds, rtol=1e-4,
                               atol=1e-4)
    module.zeroGradParams()
    assert not module.vars["scale"].grad.get().any()


def test_eval_mode_computes_the_same_and_keeps_parameter_grads(where, rng):
    module, shape = make("InstanceNorm2D", rng)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    y_train, dx_train = (a.get() for a in run(module, x, dy))
    grads = module.vars["scale"].grad.get()
    module.evalMode()
    y_eval, dx_eval = (a.get() for a in run(module, x, dy))
    np.testing.assert_array_equal(y_train, y_eval)
    np.testing.assert_array_equal(dx_train, dx_eval)
    np.testing.assert_array_equal(module.vars["scale"].grad.get(), grads)


def snapshot(module):
    arrays = {n: v.data.get() for n, v in module.vars.items()}
    arrays.update({"grad." + n: v.grad.get() for n, v in module.vars.items()})
    arrays.update({n: a.get() for n, a in module.attrs.items()})
    refs = (module.inData, module.data, module.grad, module.savemean, module.saveinvvar,
            module.scalegrad, module.biasgrad)
    return arrays, module.train, module.calctype, [id(r) for r in refs]


def assert_same(before, after):
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k], err_msg=k)


REFUSED_DATA = {
    "LayerNorm-3x5": [(2, 3, 5, 3), (3, 5), (2, 0, 3, 5)],
    "InstanceNorm2D": [(3, 5, 7), (3, 4, 7, 3), (3, 5, 1, 1), (0, 5, 2, 2)],
    "GroupNorm-3of9": [(2,), (2, 8, 5), (2, 9, 0)],
}


@pytest.mark.parametrize("name", sorted(REFUSED_DATA))
def test_refusals_leave_state_unchanged(where, rng, name):
    module, shape = make(name, rng)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    with pytest.raises(ModuleError, match="before any forward"):
        module.backward(gpuarray.to_gpu(x))
    run(module, x, x)
    before = snapshot(module)
    for bad in REFUSED_DATA[name]:
        with pytest.raises(ModuleError):
            module(gpuarray.to_gpu(np.zeros(bad, np.float32)))
        assert_same(before, snapshot(module))
    with pytest.raises(ModuleError, match="grad shape"):
        module.backward(gpuarray.to_gpu(x[:1]))
    with pytest.raises(ModuleError, match="dtype"):
        module(gpuarray.to_gpu(x.astype(np.float64)))
    with pytest.raises(ModuleError):
        module(x)  # a host array, not one of the backend
    with pytest.raises(ModuleError, match="momentum"):
        module.backward(gpuarray.to_gpu(x), momentum=float("nan"))
    with pytest.raises(ModuleError, match="not supported"):
        module.calcMode(np.float64)
    assert_same(before, snapshot(module))


@pytest.mark.parametrize("build", [
    lambda: GroupNorm(4, 6), lambda: GroupNorm(0, 6), lambda: GroupNorm(2, 0),
    lambda: InstanceNorm2D(3, epsilon=float("inf")), lambda: InstanceNorm2D(3, epsilon=-1.0),
    lambda: InstanceNorm2D(2.5), lambda: LayerNorm(()), lambda: LayerNorm((3, 0)),
    lambda: LayerNorm("abc"), lambda: LayerNorm(None), lambda: LayerNorm(4, epsilon="x"),
], ids=["indivisible", "no-groups", "no-maps", "inf-eps", "negative-eps", "float-maps",
        "empty-shape", "zero-axis", "str-shape", "none-shape", "str-eps"])
def test_construction_refusals(build):
    with pytest.raises(ModuleError):
        build()


def test_shapes_and_defaults(where):
    ln = LayerNorm((4, 3))
    assert ln.scale.shape == ln.bias.shape == (4, 3) and ln.epsilon == 1e-5 and ln.affine
    np.testing.assert_array_equal(ln.scale.get(), np.ones((4, 3)))
    np.testing.assert_array_equal(ln.bias.get(), np.zeros((4, 3)))
    assert InstanceNorm2D(6).scale.shape == (1, 6, 1, 1)
    assert GroupNorm(2, 6).bias.shape == (1, 6, 1, 1)
    assert LayerNorm(5).numOfParams() == 10 and LayerNorm(5, affine=False).numOfParams() == 0


def test_save_load_round_trip(where, rng, tmp_path):
    module, shape = make("GroupNorm-3of9", rng)
    path = str(tmp_path / "groupnorm")
    module.save(path)
    other = GroupNorm(3, 9)
    other.load(path)
    np.testing.assert_array_equal(other.scale.get(), module.scale.get())
    np.testing.assert_array_equal(other.bias.get(), module.bias.get())
    with pytest.raises(ModuleError):
        GroupNorm(3, 6).load(path)  # other channel count: refused, nothing changed


# -- properties ----------------------------------------------------------------------------------

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(["layer", "instance", "group"]))
    n = draw(st.integers(1, 4))
    if kind == "layer":
        shape = (n,) + tuple(draw(st.integers(1, 9)) for _ in range(draw(st.integers(1, 2))))
        tail = draw(st.integers(1, len(shape) - 1))
        module = LayerNorm(shape[len(shape) - tail:])
    elif kind == "instance":
        c = draw(st.integers(1, 5))
        shape = (n, c, draw(st.integers(1, 6)), draw(st.integers(2, 6)))
        module = InstanceNorm2D(c)
    else:
        groups = draw(st.integers(1, 4))
        c = groups * draw(st.integers(1, 3))
        shape = (n, c) + tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 2))))
        module = GroupNorm(groups, c)
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.sampled_from([0.0, -30.0, 1e3]))
    sd = draw(st.sampled_from([1e-1, 1.0, 20.0]))
    return module, shape, seed, loc, sd


@pytest.fixture(params=["native", "numpy"])
def cpu_path(request):
    if request.param == "native" and not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    with active_backend("cpu"):
        previous = cpu_kernels.active_path()
        cpu_kernels.use(request.param, quiet=True)
        try:
            yield request.param
        finally:
            cpu_kernels.use(previous, quiet=True)


@SETTINGS
@given(problems())
def test_properties_any_shape(cpu_path, problem):
    """Against the reference on any shape; each normalized group's dx sums to zero; the output
    does not change when the data is shifted and scaled per sample."""
    module, shape, seed, loc, sd = problem
    rng = np.random.default_rng(seed)
    module.scale.set(rng.uniform(0.5, 1.5, module.scale.shape).astype(np.float32))
    x = rng.normal(loc, sd, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    out, dx = run(module, x, dy)
    y, rdx, rds, rdb, _, invstd = reference(module, x, dy, host(module.scale), host(module.bias))
    # float32 x - mean carries the rounding of the mean, an ulp of the data's magnitude, scaled
    # by invstd once in the output and twice in dx
    err = float(_ulp(np.abs(x).max())) * float(invstd.max())
    np.testing.assert_allclose(out.get(), y, rtol=1e-4, atol=1e-4 + 2 * err)
    np.testing.assert_allclose(dx.get(), rdx, rtol=1e-4,
                               atol=(1e-4 + 8 * err) * float(invstd.max()))
    np.testing.assert_allclose(module.vars["bias"].grad.get().ravel(), rdb, rtol=1e-4, atol=1e-4)
    sums, _ = _groups_view(module, host(dx))
    slack = sums.shape[-1] * (1e-4 + 8 * err) * float(invstd.max())
    assert np.all(np.abs(sums.sum(axis=-1)) <= 1e-4 * np.abs(sums).sum(axis=-1) + slack)
    # affine invariance: 2 * x + 3 normalizes to the same output (up to eps: rows whose
    # variance is well above it)
    if sd >= 1 and invstd.max() < 3:
        out2 = module(gpuarray.to_gpu((x * 2 + 3).astype(np.float32)))
        np.testing.assert_allclose(out2.get(), out.get(), rtol=1e-3, atol=1e-3)
