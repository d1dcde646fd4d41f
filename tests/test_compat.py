"""PuzzleLib compatibility: the sign convention, costs (MSE, CrossEntropy on spatial scores with
weights), activations, Cast, the Module/Sequential API and blueprints; on every backend against
float64 numpy references of PuzzleLib's formulas."""

import math

import numpy as np
import pytest

from batchnorm_lib import blueprint
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost import MSE, CostError, CrossEntropy
from batchnorm_lib.modules import (Activation, ActivationType, BatchNorm, BatchNorm2D, Cast,
                                   Linear, ModuleError, Sequential, clip, elu, leakyRelu, relu,
                                   sigmoid, softPlus, tanh)
from batchnorm_lib.optimizers import SGD, MomentumSGD


def g(a, dtype=np.float32):
    return gpuarray.to_gpu(np.asarray(a, dtype=dtype))


# -- activations -----------------------------------------------------------------------------------
def _act_ref(kind, x, args):
    x = x.astype(np.float64)
    if kind == "relu":
        y = np.maximum(x, 0)
        return y, (y > 0).astype(np.float64)
    if kind == "sigmoid":
        y = 1 / (1 + np.exp(-x))
        return y, y * (1 - y)
    if kind == "tanh":
        y = np.tanh(x)
        return y, 1 - y * y
    if kind == "leakyRelu":
        return np.where(x > 0, x, args[0] * x), np.where(x > 0, 1.0, args[0])
    if kind == "elu":
        return np.where(x > 0, x, args[0] * np.expm1(x)), np.where(x > 0, 1.0, args[0] * np.exp(x))
    if kind == "softPlus":
        return np.logaddexp(0, x), 1 / (1 + np.exp(-x))
    y = np.clip(x, args[0], args[1])
    return y, ((x > args[0]) & (x < args[1])).astype(np.float64)


@pytest.mark.parametrize("kind,args", [
    (relu, ()), (sigmoid, ()), (tanh, ()), (leakyRelu, ()), (leakyRelu, (0.3,)), (elu, ()),
    (elu, (0.7,)), (softPlus, ()), (clip, ()), (clip, (-0.5, 1.25)),
])
def test_activations_forward_backward(backend, rng, kind, args):
    x = (rng.standard_normal((5, 3, 7)) * 3).astype(np.float32)
    x[0, 0, :3] = [40.0, -40.0, 0.0]  # saturation: no overflow
    dy = rng.standard_normal(x.shape).astype(np.float32)
    act = Activation(kind, args=args)
    ref_args = args or {"leakyRelu": (0.01,), "elu": (1.0,), "clip": (0.0, 6.0)}.get(kind.value, ())
    y_ref, d_ref = _act_ref(kind.value, x, ref_args)
    y = act(g(x))
    np.testing.assert_allclose(y.get(), y_ref, rtol=2e-6, atol=2e-6)
    dx = act.backward(g(dy))
    np.testing.assert_allclose(dx.get(), dy * d_ref, rtol=2e-5, atol=2e-5)


def test_activation_names_inplace_and_refusals(backend, rng):
    assert Activation("leakyrelu").activation is ActivationType.leakyRelu
    assert Activation(ActivationType.softPlus).activation == "softPlus"
    x = rng.standard_normal((4, 9)).astype(np.float32)
    data = g(x)
    act = Activation(relu, inplace=True)
    y = act(data)
    assert y is data and np.array_equal(data.get(), np.maximum(x, 0))
    for bad, match in (((clip, (), "x", (1.0, 0.0)), "min < max"), ((elu, None, None, (1, 2)),
                                                                      "takes 1 args")):
        with pytest.raises(ModuleError, match=match):
            Activation(bad[0], args=bad[3])
    with pytest.raises(ModuleError, match="slc"):
        Activation(relu, slc=slice(0, 2))
    with pytest.raises(ModuleError, match="activation must be one of"):
        Activation("swish")


# -- Cast ------------------------------------------------------------------------------------------
def test_cast_float32_float16_round_trip(backend, rng):
    x = (rng.standard_normal((3, 5, 7)) * 100).astype(np.float32)
    cast = Cast(np.float32, np.float16)
    y = cast(g(x))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.get(), x.astype(np.float16))
    dy = rng.standard_normal(x.shape).astype(np.float16)
    dx = cast.backward(g(dy, np.float16))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx.get(), dy.astype(np.float32))
    back = Cast("float16", "float32")
    np.testing.assert_array_equal(back(y).get(), x.astype(np.float16).astype(np.float32))
    same = Cast(np.float32, np.float32)
    data = g(x)
    assert same(data) is data
    with pytest.raises(ModuleError, match="expected data dtype float16"):
        back(data)
    with pytest.raises(ModuleError, match="float32 or float16"):
        Cast(np.float64, np.float32)


# -- costs: PuzzleLib's normalization and the negative gradient ------------------------------------
def test_mse_error_gradient_and_validate(backend, rng):
    pred = rng.standard_normal((6, 5, 3)).astype(np.float32)
    target = rng.standard_normal((6, 5, 3)).astype(np.float32)
    d = target.astype(np.float64) - pred
    mse = MSE()
    error, grad = mse(g(pred), g(target))
    assert error == pytest.approx((d ** 2).sum() / (2 * d.size), rel=1e-6)
    np.testing.assert_allclose(grad.get(), d / d.size, rtol=1e-6, atol=1e-8)
    assert mse.error == error and mse.getError() == error
    assert mse.validate(g(pred), g(target)) == pytest.approx(error, rel=1e-6)
    assert mse.getValError() == mse.valError
    only = mse(g(pred), g(target), queryError=False)
    assert gpuarray.is_array(only)
    assert mse.getMeanError() == pytest.approx(error, rel=1e-6)
    with pytest.raises(CostError, match="same shape"):
        mse(g(pred), g(target[:, :4]))


def _ce_ref(scores, labels, weights=None):
    """PuzzleLib's CrossEntropy: error = mean over (sample, position) of -w[label] log p[label];
    gradient = w[c] (onehot - p) / N."""
    n, c = scores.shape[:2]
    s = scores.astype(np.float64).reshape(n, c, -1)
    lab = labels.reshape(n, -1)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = np.ones(c) if weights is None else weights.astype(np.float64)
    picked = np.take_along_axis(p, lab[:, None, :], axis=1)[:, 0, :]
    error = np.mean(-w[lab] * np.log(picked))
    onehot = (np.arange(c)[None, :, None] == lab[:, None, :])
    grad = w[None, :, None] * (onehot - p) / n
    return error, grad.reshape(scores.shape)


@pytest.mark.parametrize("spatial", [(), (7,), (3, 5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_spatial_and_weighted(backend, rng, spatial, weighted):
    n, c = 5, 4
    scores = (rng.standard_normal((n, c) + spatial) * 3).astype(np.float32)
    labels = rng.integers(0, c, (n,) + spatial).astype(np.int32)
    weights = rng.random(c).astype(np.float32) + 0.1 if weighted else None
    ce = CrossEntropy(weights=weights)
    error, grad = ce(g(scores), g(labels, np.int32))
    ref_error, ref_grad = _ce_ref(scores, labels, weights)
    assert error == pytest.approx(ref_error, rel=1e-5)
    np.testing.assert_allclose(grad.get(), ref_grad, rtol=1e-5, atol=1e-7)
    rate = ce.validate(g(scores), g(labels, np.int32))
    most = np.argmax(scores, axis=1)
    assert ce.mostProb.shape == labels.shape
    np.testing.assert_array_equal(ce.mostProb.get(), most)
    assert rate == pytest.approx(np.mean(most != labels)) and ce.getValError() == rate


def test_cross_entropy_gradient_is_the_negative_gradient(backend, rng):
    scores = rng.standard_normal((3, 4, 2)).astype(np.float64)
    labels = rng.integers(0, 4, (3, 2)).astype(np.int32)
    _, grad = CrossEntropy()(g(scores), g(labels, np.int32))
    h, num = 1e-2, np.zeros(scores.shape)
    for idx in np.ndindex(*scores.shape):
        for sign in (1, -1):
            s = scores.copy()
            s[idx] += sign * h
            num[idx] += sign * CrossEntropy()(g(s), g(labels, np.int32))[0] / (2 * h)
    # the error is a mean over N * positions, the gradient divided by N only (PuzzleLib)
    np.testing.assert_allclose(-grad.get() / labels[0].size, num, rtol=2e-2, atol=2e-4)


def test_cross_entropy_refusals(backend):
    s = g(np.zeros((3, 4, 5)))
    with pytest.raises(CostError, match=r"labels must have shape \(3, 5\)"):
        CrossEntropy()(s, g(np.zeros((3,)), np.int32))
    with pytest.raises(CostError, match="4 weights for 3 classes"):
        CrossEntropy(weights=np.ones(4, np.float32))(g(np.zeros((2, 3))), g([0, 1], np.int32))
    with pytest.raises(CostError, match="weights must be"):
        CrossEntropy(weights=np.ones((2, 2), np.float32))


# -- the sign convention end to end ----------------------------------------------------------------
def test_positive_rates_descend(backend, rng):
    np.random.seed(3)
    x = rng.standard_normal((31, 6)).astype(np.float32)
    t = (x @ rng.standard_normal((6, 2))).astype(np.float32)
    for step in ("updateParams", "sgd", "momentum"):
        np.random.seed(3)
        net = Sequential().append(Linear(6, 2))
        opt = {"sgd": SGD(0.5), "momentum": MomentumSGD(0.2, 0.5)}.get(step)
        if opt is not None:
            opt.setupOn(net)
        mse = MSE()
        first = mse(net(g(x)), g(t))[0]
        for _ in range(15):
            _, grad = mse(net(g(x)), g(t))
            net.zeroGradParams()
            net.backward(grad)
            net.updateParams(0.5) if opt is None else opt.update()
        assert mse(net(g(x)), g(t))[0] < first / 4, step


# -- Module and Sequential API ---------------------------------------------------------------------
def test_module_api(backend):
    bn = BatchNorm2D(5, name="bn")
    assert bn.numOfParams() == 10 and bn.paramSize() == 40
    assert bn.paramSize("kb") == 40 / 1024 and bn.paramSize("mb") == 40 / 1024 ** 2
    with pytest.raises(ModuleError, match="'kb' or 'mb'"):
        bn.paramSize("gb")
    assert bn.getBlueprint() == {"classname": "BatchNorm2D", "scheme": {
        "maps": 5, "epsilon": 1e-5, "initFactor": 1.0, "minFactor": 0.1, "sscale": 0.01,
        "affine": True, "name": "bn", "empty": False, "inplace": False,
        "layout": "channels_first", "comm": None, "activation": None}}
    table = bn.getVarTable()
    assert sorted(sum(table.values(), [])) == ["bnbias", "bnscale"]
    assert bn.dataShapeFrom((2, 5, 3, 3)) == (2, 5, 3, 3)
    bn.checkDataType(np.float32)
    with pytest.raises(ModuleError, match="expected dtype float32"):
        bn.checkDataType(np.float16)
    assert bn.optimizeForShape((2, 5, 3, 3)) is None
    lin = Linear(7, 3, initscheme=("xavier", "avg"))
    assert lin.dataShapeFrom((4, 7)) == (4, 3) and lin.gradShapeFrom((4, 3)) == (4, 7)
    assert lin.getBlueprint()["scheme"]["initscheme"] == ("xavier", "avg")


@pytest.mark.parametrize("scheme,factor,dist", [
    ("xavier", "in", ("u", 3)), ("xavier", "out", ("u", 3)), ("xavier", "avg", ("u", 3)),
    ("he", "out", ("n", 2)), ("xavier_normal", "in", ("n", 1)), ("xavierUniform", None, ("u", 3)),
])
def test_linear_initscheme_pairs(backend, scheme, factor, dist):
    insize, outsize = 11, 5
    n = {"in": insize, "out": outsize, "avg": (insize + outsize) / 2, None: insize}[factor]
    np.random.seed(7)
    lin = Linear(insize, outsize, initscheme=scheme if factor is None else (scheme, factor))
    np.random.seed(7)
    width = math.sqrt(dist[1] / n)
    ref = np.random.uniform(-width, width, (insize, outsize)) if dist[0] == "u" else \
        np.random.normal(0.0, width, (insize, outsize))
    np.testing.assert_allclose(lin.W.get(), ref, rtol=1e-6)
    with pytest.raises(ModuleError, match="factor must be one of"):
        Linear(3, 2, initscheme=("xavier", "sideways"))


def test_sequential_slicing_names_and_blueprint(backend, rng):
    inner = Sequential(name="inner").append(Linear(4, 4, name="deep"))
    seq = Sequential().append(Linear(6, 4)).append(BatchNorm(4, name="bn"))
    assert seq.append(Activation(tanh)) is seq
    seq.append(inner)
    assert [m.name for m in seq] == ["0", "bn", "2", "inner"]
    head = seq[:2]
    assert isinstance(head, Sequential) and head[0] is seq[0] and head[1] is seq[1]
    x = g(rng.standard_normal((9, 6)))
    np.testing.assert_array_equal(head(x).get(), seq[1].data.get())
    assert seq["bn"] is seq[1] and seq.getByName("deep") is inner[0]
    assert seq.getByName("missing") is None
    seq.append(BatchNorm(4, name="bn"))  # a taken name: renamed by position
    assert seq[-1].name == "4"
    with pytest.raises(ModuleError, match="already in this Sequential"):
        seq.append(Linear(4, 4, name="bn"), acquire=False)
    bp = seq.getBlueprint()
    assert bp["classname"] == "Sequential" and bp["graph"] == ["0", "bn", "2", "inner", "4"]
    assert bp["modules"]["inner"]["modules"]["deep"]["classname"] == "Linear"
    assert seq.dataShapeFrom((9, 6)) == (9, 4) and seq.gradShapeFrom((9, 4)) == (9, 6)
    names = sorted(sum(seq.getVarTable().values(), []))
    assert names == ["0.W", "0.b", "4.bias", "4.scale", "bn.bias", "bn.scale", "inner.deep.W",
                     "inner.deep.b"]
    assert seq.paramSize() == 4 * sum(v.data.size for v in seq.vars.values())


def test_blueprint_round_trip(backend, rng, tmp_path):
    net = Sequential(name="net").append(Linear(6, 5, initscheme=("he", "in")))
    net.append(BatchNorm(5)).append(Activation(leakyRelu, args=(0.2,))).append(Linear(5, 3))
    x = g(rng.standard_normal((8, 6)))
    net(x)
    net.evalMode()
    expected = net(x).get()
    path = str(tmp_path / "net.hdf")
    net.save(path, withBlueprint=True)
    rebuilt = blueprint.load(path)
    assert rebuilt is not net and [type(m) for m in rebuilt] == [type(m) for m in net]
    assert rebuilt[2].actArgs == (0.2,)
    rebuilt.evalMode()
    np.testing.assert_array_equal(rebuilt(x).get(), expected)
    np.testing.assert_array_equal(blueprint.load(net.save(withBlueprint=True))[3].W.get(),
                                  net[3].W.get())
    plain = str(tmp_path / "plain.hdf")
    net.save(plain)
    with pytest.raises(ModuleError, match="no blueprint"):
        blueprint.load(plain)
    with pytest.raises(ModuleError, match="cannot build a module of class 'Nope'"):
        blueprint.build({"classname": "Nope", "scheme": {}})


# -- float16 where dtypesSupported lists it ---------------------------------------------------------
def test_dtypes_supported_and_float16_network(backend, rng):
    dtypes = dict((np.dtype(d), atol) for d, atol in gpuarray.dtypesSupported())
    assert dtypes[np.dtype(np.float32)] == 1e-5
    net = Sequential().append(Linear(6, 5)).append(BatchNorm(5)).append(Activation(elu))
    net.append(Linear(5, 3)).append(Cast(np.float16, np.float32))
    if np.dtype(np.float16) not in dtypes:
        assert backend == "cpu"
        with pytest.raises(ModuleError, match="unsupported dtype float16"):
            Linear(3, 2).calcMode(np.float16)
        return
    assert dtypes[np.dtype(np.float16)] == 1e-2
    x = rng.standard_normal((9, 6)).astype(np.float16)
    reference = Sequential()  # the same modules in float32 on the float16-rounded data
    reference.modules = list(net.modules)[:-1]
    expected = reference(g(x.astype(np.float32))).get()
    dy = rng.standard_normal(expected.shape).astype(np.float16).astype(np.float32)
    expected_dx = reference.backward(g(dy)).get()
    for mod in list(net)[:-1]:
        mod.calcMode(np.float16)
    y = net(g(x, np.float16))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.get(), expected, atol=1e-2, rtol=1e-2)
    dx = net.backward(g(dy))
    assert dx.dtype == np.float16 and dx.shape == x.shape
    np.testing.assert_allclose(dx.get().astype(np.float32), expected_dx, atol=1e-2, rtol=1e-2)
    for mod in (Activation(relu, inplace=True),):
        mod.calcMode(np.float16)
        data = g(x, np.float16)
        assert mod(data) is data
        np.testing.assert_array_equal(data.get(), np.maximum(x, 0))
