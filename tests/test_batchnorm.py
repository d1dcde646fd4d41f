"""BatchNorm modules against the float64 reference, on every backend present."""

import numpy as np
import pytest

from batchnorm_lib import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND,
                           ModuleError)
from batchnorm_lib.backend import gpuarray

import reference as ref

RTOL, ATOL = 2e-5, 2e-5

# (factory, shape): odd sizes, not multiples of 4 or 32
CASES = [
    (lambda c, **kw: BatchNorm(c, **kw), (7, 5)),
    (lambda c, **kw: BatchNorm1D(c, **kw), (3, 5, 11)),
    (lambda c, **kw: BatchNorm2D(c, **kw), (3, 5, 7, 9)),
    (lambda c, **kw: BatchNorm3D(c, **kw), (2, 3, 5, 3, 7)),
    (lambda c, **kw: BatchNormND(4, c, **kw), (2, 3, 3, 1, 5, 2)),
]
IDS = ["BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "BatchNormND4"]


def make(factory, shape, rng, **kw):
    bn = factory(shape[1], **kw)
    C = shape[1]
    if bn.affine:
        bn.scale.set(rng.uniform(0.5, 1.5, bn.scale.shape).astype(np.float32))
        bn.bias.set(rng.normal(0, 1, bn.bias.shape).astype(np.float32))
    assert bn.scale.size == C
    return bn


def rand(rng, shape, loc=1.0, sd=3.0):
    return (rng.normal(loc, sd, shape)).astype(np.float32)


def vec(a):
    return a.get().ravel()


def snapshot(bn):
    """Everything a refused call must leave as it was."""
    arrays = {n: v.data.get() for n, v in bn.vars.items()}
    arrays.update({"grad." + n: v.grad.get() for n, v in bn.vars.items() if v.grad is not None})
    arrays.update({n: a.get() for n, a in bn.attrs.items() if a is not None})
    refs = (bn.inData, bn.data, bn.grad, bn.savemean, bn.saveinvvar, bn.scalegrad, bn.biasgrad)
    return arrays, bn.numOfProps, bn.train, bn.calctype, [id(r) for r in refs]


def assert_same_state(before, after):
    a0, *rest0 = before
    a1, *rest1 = after
    assert rest0 == rest1
    assert a0.keys() == a1.keys()
    for k in a0:
        np.testing.assert_array_equal(a0[k], a1[k], err_msg=k)


@pytest.mark.parametrize("factory,shape", CASES, ids=IDS)
def test_forward_train_matches_reference(backend, rng, factory, shape):
    bn = make(factory, shape, rng)
    x = rand(rng, shape)
    out = bn(gpuarray.to_gpu(x))
    y, mean, var, var_unb, invstd = ref.forward_train(x, vec(bn.scale), vec(bn.bias), bn.epsilon)
    np.testing.assert_allclose(out.get(), y, rtol=RTOL, atol=ATOL)
    assert out is bn.data and out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(vec(bn.savemean), mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(vec(bn.saveinvvar), invstd, rtol=RTOL, atol=ATOL)
    # first call: factor = max(1/1, 0.1) = 1, so running stats are the batch's (unbiased var)
    np.testing.assert_allclose(vec(bn.mean), mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(vec(bn.var), var_unb, rtol=RTOL, atol=ATOL)
    assert bn.numOfProps == 1
    expect = (1, shape[1]) + (1,) * max(len(shape) - 2, 2)
    assert bn.mean.shape == bn.var.shape == bn.scale.shape == bn.savemean.shape == expect


@pytest.mark.parametrize("initFactor,minFactor", [(1.0, 0.1), (0.1, 0.1), (1.0, 0.0), (0.7, 0.25)])
def test_running_statistics_factor_schedule(backend, rng, initFactor, minFactor):
    shape = (5, 3, 4, 3)
    bn = BatchNorm2D(3, initFactor=initFactor, minFactor=minFactor)
    batches = [rand(rng, shape, loc=i, sd=1 + i) for i in range(6)]
    for b in batches:
        bn(gpuarray.to_gpu(b))
    mean, var = ref.running_stats(batches, initFactor, minFactor)
    np.testing.assert_allclose(vec(bn.mean), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vec(bn.var), var, rtol=1e-5, atol=1e-5)
    assert bn.numOfProps == len(batches)


def test_seed_example_statistics(backend):
    data = gpuarray.to_gpu(np.arange(18).reshape(3, 6).astype(np.float32))
    bn = BatchNorm(6)
    bn(data)
    np.testing.assert_array_equal(vec(bn.mean), np.arange(6, 12))
    np.testing.assert_allclose(vec(bn.var), np.full(6, 36.0), rtol=1e-6)
    np.testing.assert_array_equal(bn.data.get()[1], np.zeros(6))  # values at the mean stay exact


@pytest.mark.parametrize("factory,shape", CASES, ids=IDS)
def test_eval_uses_running_statistics(backend, rng, factory, shape):
    bn = make(factory, shape, rng)
    bn.mean.set(rng.normal(0, 1, bn.mean.shape).astype(np.float32))
    bn.var.set(rng.uniform(0.5, 2, bn.var.shape).astype(np.float32))
    bn.evalMode()
    x = rand(rng, shape)
    before = (bn.mean.get(), bn.var.get())
    out = bn(gpuarray.to_gpu(x))
    y = ref.forward_eval(x, vec(bn.scale), vec(bn.bias), vec(bn.mean), vec(bn.var), bn.epsilon)
    np.testing.assert_allclose(out.get(), y, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(bn.mean.get(), before[0])
    np.testing.assert_array_equal(bn.var.get(), before[1])
    assert bn.numOfProps == 0


def test_eval_single_sample_is_allowed(backend, rng):
    bn = BatchNorm(4)
    bn.evalMode()
    out = bn(gpuarray.to_gpu(rand(rng, (1, 4))))
    assert out.shape == (1, 4)


@pytest.mark.parametrize("factory,shape", CASES, ids=IDS)
def test_backward_train_matches_reference(backend, rng, factory, shape):
    bn = make(factory, shape, rng)
    x, dy = rand(rng, shape), rand(rng, shape, loc=0.0, sd=1.0)
    bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    rdx, rds, rdb = ref.backward_train(x, dy, vec(bn.scale), bn.epsilon)
    assert dx is bn.grad
    np.testing.assert_allclose(dx.get(), rdx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vec(bn.vars["scale"].grad), rds, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vec(bn.vars["bias"].grad), rdb, rtol=1e-4, atol=1e-4)


def test_reference_backward_against_finite_differences(rng):
    """The float64 reference's gradient formula against central differences of its forward."""
    shape, eps = (4, 3, 5), 1e-5
    x, w = rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    scale, bias = rng.uniform(0.5, 1.5, 3), rng.normal(0, 1, 3)
    loss = lambda x_, s_, b_: float((ref.forward_train(x_, s_, b_, eps)[0] * w).sum())
    dx, ds, db = ref.backward_train(x, w, scale, eps)
    h = 1e-6
    for idx in [(0, 0, 0), (3, 2, 4), (1, 1, 2)]:
        e = np.zeros(shape)
        e[idx] = h
        num = (loss(x + e, scale, bias) - loss(x - e, scale, bias)) / (2 * h)
        assert num == pytest.approx(dx[idx], rel=1e-5, abs=1e-7)
    for c in range(3):
        e = np.zeros(3)
        e[c] = h
        assert (loss(x, scale + e, bias) - loss(x, scale - e, bias)) / (2 * h) == \
            pytest.approx(ds[c], rel=1e-5, abs=1e-7)
        assert (loss(x, scale, bias + e) - loss(x, scale, bias - e)) / (2 * h) == \
            pytest.approx(db[c], rel=1e-5, abs=1e-7)


def test_module_backward_against_finite_differences(backend, rng):
    """Directional derivative of the float32 module against its gradient."""
    shape = (5, 3, 7)
    bn = make(lambda c, **kw: BatchNorm1D(c, **kw), shape, rng)
    x = rand(rng, shape, loc=0.0, sd=1.0)
    w = rand(rng, shape, loc=0.0, sd=1.0)
    d = rand(rng, shape, loc=0.0, sd=1.0)

    def loss(xv):
        probe = BatchNorm1D(3)
        probe.scale.set(bn.scale.get())
        probe.bias.set(bn.bias.get())
        return float((probe(gpuarray.to_gpu(xv.astype(np.float32))).get().astype(np.float64) * w).sum())

    bn(gpuarray.to_gpu(x))
    grad = bn.backward(gpuarray.to_gpu(w)).get().astype(np.float64)
    h = 1e-2
    numeric = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
    assert numeric == pytest.approx(float((grad * d).sum()), rel=2e-3, abs=2e-3)


def test_param_grad_accumulation_scale_momentum(backend, rng):
    shape = (6, 4, 3)
    bn = make(lambda c, **kw: BatchNorm1D(c, **kw), shape, rng)
    x = rand(rng, shape)
    dys = [rand(rng, shape, 0.0, 1.0) for _ in range(3)]
    bn(gpuarray.to_gpu(x))
    expect_s, expect_b = np.zeros(4), np.zeros(4)
    for dy, (sc, mom) in zip(dys, [(1.0, 0.0), (0.5, 0.9), (2.0, 0.3)]):
        bn.backward(gpuarray.to_gpu(dy), scale=sc, momentum=mom)
        _, ds, db = ref.backward_train(x, dy, vec(bn.scale), bn.epsilon)
        expect_s, expect_b = sc * ds + mom * expect_s, sc * db + mom * expect_b
    np.testing.assert_allclose(vec(bn.vars["scale"].grad), expect_s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vec(bn.vars["bias"].grad), expect_b, rtol=1e-4, atol=1e-4)

    bn.zeroGradParams()
    assert not vec(bn.vars["scale"].grad).any() and not vec(bn.vars["bias"].grad).any()


def test_backward_flags(backend, rng):
    shape = (6, 4, 3)
    bn = make(lambda c, **kw: BatchNorm1D(c, **kw), shape, rng)
    x, dy = rand(rng, shape), rand(rng, shape, 0.0, 1.0)
    bn(gpuarray.to_gpu(x))
    assert bn.backward(gpuarray.to_gpu(dy), updGrad=False) is None and bn.grad is None
    _, ds, db = ref.backward_train(x, dy, vec(bn.scale), bn.epsilon)
    np.testing.assert_allclose(vec(bn.vars["scale"].grad), ds, rtol=1e-4, atol=1e-4)
    bn.zeroGradParams()
    dx = bn.backward(gpuarray.to_gpu(dy), updParamGrads=False)
    assert dx is not None and not vec(bn.vars["scale"].grad).any()


def test_update_params(backend, rng):
    shape = (6, 4)
    bn = make(lambda c, **kw: BatchNorm(c, **kw), shape, rng)
    bn(gpuarray.to_gpu(rand(rng, shape)))
    bn.backward(gpuarray.to_gpu(rand(rng, shape, 0.0, 1.0)))
    s0, g = bn.scale.get(), bn.vars["scale"].grad.get()
    b0, gb = bn.bias.get(), bn.vars["bias"].grad.get()
    bn.updateParams(-0.1)
    np.testing.assert_allclose(bn.scale.get(), s0 - 0.1 * g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.bias.get(), b0 - 0.1 * gb, rtol=1e-6, atol=1e-7)


def test_backward_in_eval_mode(backend, rng):
    shape = (3, 5, 4, 3)
    bn = make(lambda c, **kw: BatchNorm2D(c, **kw), shape, rng)
    bn.var.set(rng.uniform(0.5, 2, bn.var.shape).astype(np.float32))
    bn.evalMode()
    x, dy = rand(rng, shape), rand(rng, shape, 0.0, 1.0)
    bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    k = vec(bn.scale).astype(np.float64) / np.sqrt(vec(bn.var).astype(np.float64) + bn.epsilon)
    np.testing.assert_allclose(dx.get(), dy * k.reshape(1, -1, 1, 1), rtol=RTOL, atol=ATOL)
    assert not vec(bn.vars["scale"].grad).any()  # frozen: no parameter gradients in evaluation


def test_affine_false(backend, rng):
    shape = (4, 3, 5)
    bn = BatchNorm1D(3, affine=False, sscale=0.5)
    assert bn.vars == {}
    np.testing.assert_array_equal(vec(bn.scale), np.ones(3))
    np.testing.assert_array_equal(vec(bn.bias), np.zeros(3))
    x, dy = rand(rng, shape), rand(rng, shape, 0.0, 1.0)
    out = bn(gpuarray.to_gpu(x))
    np.testing.assert_allclose(out.get(), ref.forward_train(x, np.ones(3), np.zeros(3), 1e-5)[0],
                               rtol=RTOL, atol=ATOL)
    dx = bn.backward(gpuarray.to_gpu(dy))
    np.testing.assert_allclose(dx.get(), ref.backward_train(x, dy, np.ones(3), 1e-5)[0],
                               rtol=1e-4, atol=1e-4)
    bn.updateParams(1.0)
    np.testing.assert_array_equal(vec(bn.scale), np.ones(3))


def test_inplace_eval_writes_into_input(backend, rng):
    shape = (4, 3, 5)
    bn = make(lambda c, **kw: BatchNorm1D(c, **kw), shape, rng, inplace=True)
    bn.evalMode()
    x = rand(rng, shape)
    xg = gpuarray.to_gpu(x)
    out = bn(xg)
    assert out is xg
    y = ref.forward_eval(x, vec(bn.scale), vec(bn.bias), vec(bn.mean), vec(bn.var), bn.epsilon)
    np.testing.assert_allclose(xg.get(), y, rtol=RTOL, atol=ATOL)


def test_not_inplace_leaves_input(backend, rng):
    x = rand(rng, (4, 3))
    xg = gpuarray.to_gpu(x)
    BatchNorm(3)(xg)
    np.testing.assert_array_equal(xg.get(), x)


def test_large_offset_numerics(backend, rng):
    """1e4 + N(0, 1) in float32: a sum-of-squares formula would lose the variance entirely."""
    shape = (64, 3, 33)
    x = (1e4 + rng.normal(0, 1, shape)).astype(np.float32)
    bn = BatchNorm1D(3, affine=False)
    out = bn(gpuarray.to_gpu(x))
    y, mean, var, var_unb, _ = ref.forward_train(x, np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(vec(bn.var), var_unb, rtol=1e-4)
    np.testing.assert_allclose(vec(bn.mean), mean, rtol=1e-7)
    # x is only known to ~1e-3 absolute in float32 at 1e4, so outputs carry that error / std
    np.testing.assert_allclose(out.get(), y, atol=3e-3)


def test_pytorch_momentum_equivalences(backend, rng):
    """PyTorch momentum=m is initFactor=minFactor=m; momentum=None is initFactor=1, minFactor=0."""
    shape = (5, 2, 3)
    batches = [rand(rng, shape, loc=i) for i in range(4)]
    for kw, factors in [(dict(initFactor=0.3, minFactor=0.3), [0.3] * 4),
                        (dict(initFactor=1.0, minFactor=0.0), [1, 1 / 2, 1 / 3, 1 / 4])]:
        bn = BatchNorm1D(2, **kw)
        mean, var = np.zeros(2), np.ones(2)
        for b, f in zip(batches, factors):
            bn(gpuarray.to_gpu(b))
            _, bm, _, bv, _ = ref.forward_train(b, np.ones(2), np.zeros(2), 1e-5)
            mean, var = (1 - f) * mean + f * bm, (1 - f) * var + f * bv
        np.testing.assert_allclose(vec(bn.mean), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(vec(bn.var), var, rtol=1e-5, atol=1e-5)


# -- refusals: each raises ModuleError and leaves the module as it was -----------------------------

def _trained(rng, **kw):
    """A module after one forward and one backward pass, so every piece of state is set."""
    bn = make(lambda c, **k: BatchNorm2D(c, **k), (3, 4, 5, 3), rng, **kw)
    bn(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3))))
    bn.backward(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3), 0.0, 1.0)))
    assert bn.scalegrad is not None and bn.grad is not None
    return bn


REFUSALS = {
    "too few axes": lambda bn, rng: bn(gpuarray.to_gpu(rand(rng, (3, 4, 5)))),
    "too many axes": lambda bn, rng: bn(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3, 2)))),
    "wrong channels": lambda bn, rng: bn(gpuarray.to_gpu(rand(rng, (3, 5, 5, 3)))),
    "wrong dtype": lambda bn, rng: bn(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3)).astype(np.float64))),
    "host ndarray": lambda bn, rng: bn(rand(rng, (3, 4, 5, 3))),
    "one value per channel": lambda bn, rng: bn(gpuarray.to_gpu(rand(rng, (1, 4, 1, 1)))),
    "grad shape": lambda bn, rng: bn.backward(gpuarray.to_gpu(rand(rng, (3, 4, 5, 2)))),
    "grad dtype": lambda bn, rng: bn.backward(
        gpuarray.to_gpu(rand(rng, (3, 4, 5, 3)).astype(np.float64))),
    "non-finite scale": lambda bn, rng: bn.backward(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3))),
                                                    scale=float("nan")),
    "unsupported calcMode": lambda bn, rng: bn.calcMode(np.int32),
    "non-finite learnRate": lambda bn, rng: bn.updateParams(float("inf")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_leave_state(backend, rng, case):
    bn = _trained(rng)
    before = snapshot(bn)
    with pytest.raises(ModuleError):
        REFUSALS[case](bn, rng)
    assert_same_state(before, snapshot(bn))


def test_backward_before_forward(backend, rng):
    bn = BatchNorm(3)
    before = snapshot(bn)
    with pytest.raises(ModuleError, match="before any forward"):
        bn.backward(gpuarray.to_gpu(rand(rng, (4, 3))))
    assert_same_state(before, snapshot(bn))
    bn(gpuarray.to_gpu(rand(rng, (4, 3))))
    bn.evalMode()  # a mode switch forgets the last forward pass, and the message says so
    with pytest.raises(ModuleError, match=r"forward pass \(trainMode, evalMode and reset forget"):
        bn.backward(gpuarray.to_gpu(rand(rng, (4, 3))))


def test_inplace_training_refused(backend, rng):
    bn = BatchNorm(3, inplace=True)
    x = rand(rng, (4, 3))
    xg = gpuarray.to_gpu(x)
    before = snapshot(bn)
    with pytest.raises(ModuleError, match="inplace"):
        bn(xg)
    assert_same_state(before, snapshot(bn))
    np.testing.assert_array_equal(xg.get(), x)


@pytest.mark.parametrize("kw", [dict(epsilon=float("nan")), dict(epsilon=float("inf")),
                                dict(epsilon=-1e-5), dict(initFactor=float("nan")),
                                dict(minFactor=float("-inf")), dict(minFactor=1.5),
                                dict(initFactor=-0.1), dict(sscale=float("nan")),
                                dict(epsilon="small")])
def test_constructor_refuses_bad_hyperparameters(backend, kw):
    with pytest.raises(ModuleError):
        BatchNorm2D(3, **kw)


@pytest.mark.parametrize("maps", [0, -2, 2.5, True, "3"])
def test_constructor_refuses_bad_maps(backend, maps):
    with pytest.raises(ModuleError, match="maps"):
        BatchNorm2D(maps)


def test_empty_module_needs_parameters(backend, rng):
    bn = BatchNorm2D(4, empty=True)
    assert bn.scale is None and bn.vars == {}
    with pytest.raises(ModuleError, match="empty=True"):
        bn(gpuarray.to_gpu(rand(rng, (2, 4, 3, 3))))
    assert bn.numOfProps == 0


# -- modes, dtype, persistence --------------------------------------------------------------------

def test_modes_and_reset(backend, rng):
    bn = _trained(rng)
    assert bn.train and bn.data is not None and bn.savemean is not None
    bn.evalMode()
    assert not bn.train and bn.data is None and bn.inData is None and bn.savemean is None
    bn.trainMode()
    assert bn.train


def test_calc_mode(backend):
    from batchnorm_lib import config

    bn = BatchNorm(3)
    supported = config.backend_module().supported_dtypes()
    for dt in (np.float16, np.float64):
        if np.dtype(dt) in supported:
            bn.calcMode(dt)
            assert bn.calctype == np.dtype(dt)
        else:
            with pytest.raises(ModuleError, match="not supported"):
                bn.calcMode(dt)
    bn.calcMode(np.float32)
    assert bn.calctype == np.float32 and bn.scale.dtype == np.float32


def test_save_load_round_trip(backend, rng, tmp_path):
    bn = _trained(rng, name="bn1")
    bn(gpuarray.to_gpu(rand(rng, (3, 4, 5, 3))))
    path = tmp_path / "bn.h5"
    bn.save(str(path))

    other = BatchNorm2D(4, name="bn1")
    other.load(str(path))
    for attr in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(getattr(other, attr).get(), getattr(bn, attr).get())
    assert other.numOfProps == bn.numOfProps == 2

    empty = BatchNorm2D(4, empty=True)
    empty.load(str(path), name="bn1")
    np.testing.assert_array_equal(empty.var.get(), bn.var.get())
    assert set(empty.vars) == {"scale", "bias"} and empty.vars["scale"].grad is not None
    x = rand(rng, (2, 4, 3, 3))
    empty.evalMode()
    bn.evalMode()
    np.testing.assert_array_equal(empty(gpuarray.to_gpu(x)).get(), bn(gpuarray.to_gpu(x)).get())


def test_load_refuses_mismatch(backend, rng, tmp_path):
    path = tmp_path / "bn.h5"
    _trained(rng).save(str(path))
    for target in (BatchNorm2D(5), BatchNorm3D(4), BatchNorm2D(4, affine=False)):
        before = snapshot(target)
        with pytest.raises(ModuleError):
            target.load(str(path))
        assert_same_state(before, snapshot(target))
    with pytest.raises(ModuleError, match="cannot read"):
        BatchNorm2D(4).load(str(tmp_path / "missing.npz"))
