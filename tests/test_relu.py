"""Batch norm with a fused relu (``activation="relu"``) on every backend and CPU kernel path, against
an independent float64 reference: relu of the batch norm forward, and the batch norm backward of
the gradient masked by the module's output (the kernel contract's rule)."""

import numpy as np
import pytest
from conftest import TOLERANCES, active_backend

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, ModuleError, blueprint
from batchnorm_lib.modules import Sequential
from batchnorm_lib.backend import gpuarray

import reference as ref

RTOL, ATOL = TOLERANCES["float32"]

# (factory, channels-first shape, layout): odd sizes; shapes whose spatial size is a multiple of
# the 16-byte pack take the vector kernels, the others the scalar ones
CASES = [
    (BatchNorm, (37, 5), "channels_first"),
    (BatchNorm1D, (5, 7, 11), "channels_first"),
    (BatchNorm2D, (3, 5, 4, 8), "channels_first"),
    (BatchNorm2D, (3, 37, 5, 9), "channels_first"),
    (BatchNorm2D, (3, 6, 5, 7), "channels_last"),
    (BatchNorm3D, (2, 3, 5, 3, 7), "channels_first"),
]
IDS = ["NC", "NCL", "NCHW-vec", "NCHW", "NHWC", "NCDHW"]


def last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def first(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    expected = np.asarray(expected, np.float64)
    atol = atol * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def _module(factory, shape, layout, rng, **kw):
    bn = factory(shape[1], layout=layout, activation="relu", **kw)
    scale = rng.uniform(0.5, 1.5, bn.scale.shape).astype(np.float32)
    bias = rng.normal(0.0, 0.5, bn.bias.shape).astype(np.float32)
    bn.scale.set(scale)
    bn.bias.set(bias)
    return bn, scale.ravel().astype(np.float64), bias.ravel().astype(np.float64)


def _io(layout):
    """(to the module's layout, back to channels first)"""
    if layout == "channels_last":
        return last, first
    return (lambda a: a), (lambda a: a)


@pytest.mark.parametrize("factory,shape,layout", CASES, ids=IDS)
def test_train_forward_backward(where, rng, factory, shape, layout):
    to, back = _io(layout)
    bn, scale, bias = _module(factory, shape, layout, rng)
    x = rng.normal(0.3, 1.7, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)

    y = back(bn(gpuarray.to_gpu(to(x))).get())
    dx = back(bn.backward(gpuarray.to_gpu(to(dy))).get())

    yr, mean, var, unbiased, invstd = ref.forward_train(x, scale, bias, bn.epsilon)
    _close(y, np.maximum(yr, 0.0))
    assert np.all(y >= 0) and 0.2 < np.mean(y > 0) < 0.8  # the mask has both sides here
    _close(bn.savemean.get().ravel(), mean)
    _close(bn.saveinvvar.get().ravel(), invstd)
    # the gradient passes where the module's output is positive (its own output decides an
    # element within rounding of zero, as the contract says)
    masked = np.where(y > 0, dy, 0.0)
    dxr, dsr, dbr = ref.backward_train(x, masked, scale, bn.epsilon)
    _close(dx, dxr)
    _close(bn.vars["scale"].grad.get().ravel(), dsr)
    _close(bn.vars["bias"].grad.get().ravel(), dbr)


@pytest.mark.parametrize("factory,shape,layout", CASES, ids=IDS)
def test_eval_forward_backward(where, rng, factory, shape, layout):
    to, back = _io(layout)
    bn, scale, bias = _module(factory, shape, layout, rng)
    run_mean = rng.normal(0.0, 1.0, bn.mean.shape).astype(np.float32)
    run_var = rng.uniform(0.5, 2.0, bn.var.shape).astype(np.float32)
    bn.mean.set(run_mean)
    bn.var.set(run_var)
    bn.evalMode()
    x = rng.normal(0.0, 1.5, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)

    y = back(bn(gpuarray.to_gpu(to(x))).get())
    dx = back(bn.backward(gpuarray.to_gpu(to(dy))).get())

    yr = ref.forward_eval(x, scale, bias, run_mean.ravel(), run_var.ravel(), bn.epsilon)
    _close(y, np.maximum(yr, 0.0))
    k = scale / np.sqrt(run_var.ravel().astype(np.float64) + bn.epsilon)
    _close(dx, np.where(y > 0, dy, 0.0) * k.reshape(ref.channel_shape(x)))


def test_mask_rule_zero_and_nan(where, rng):
    """An output of exactly 0 stops the gradient, a NaN output passes it (as PyTorch's relu
    backward), NaN stays NaN forward; in evaluation, where every value is exact."""
    C = 3
    bn = BatchNorm2D(C, activation="relu")
    bn.bias.set(np.zeros(bn.bias.shape, np.float32))
    bn.scale.set(np.ones(bn.scale.shape, np.float32))
    run_mean = np.array([0.5, -1.0, 2.0], np.float32)
    bn.mean.set(run_mean.reshape(bn.mean.shape))
    bn.var.set(np.ones(bn.var.shape, np.float32))
    bn.evalMode()
    x = rng.normal(0.0, 2.0, (2, C, 3, 5)).astype(np.float32)
    x[0, :, 0, 0] = run_mean  # exactly the mean: (x - mean) * a + 0 is exactly 0
    x[1, 1, 2, 3] = np.nan
    x[1, 2, 1, 1] = -np.inf
    dy = rng.normal(0.0, 1.0, x.shape).astype(np.float32)

    y = bn(gpuarray.to_gpu(x)).get()
    dx = bn.backward(gpuarray.to_gpu(dy)).get()

    assert np.all(y[0, :, 0, 0] == 0) and np.isnan(y[1, 1, 2, 3]) and y[1, 2, 1, 1] == 0
    k = 1.0 / np.sqrt(1.0 + bn.epsilon)
    expected = np.where(np.isnan(y) | (y > 0), dy * k, 0.0)
    _close(dx, expected)
    assert np.all(dx[0, :, 0, 0] == 0) and dx[1, 1, 2, 3] != 0


def test_relu_off_is_unchanged(where, rng):
    """activation=None gives the plain batch norm bit for bit, and relu the same values where
    they are positive."""
    shape = (4, 6, 5, 7)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    plain, fused = BatchNorm2D(6), BatchNorm2D(6, activation="relu")
    fused.scale.set(plain.scale.get())
    y0 = plain(gpuarray.to_gpu(x)).get()
    y1 = fused(gpuarray.to_gpu(x)).get()
    np.testing.assert_array_equal(np.where(y0 > 0, y0, 0), y1)
    # with every output positive the mask passes all: the gradients equal the plain ones
    plain.bias.set(np.full(plain.bias.shape, 50.0, np.float32))
    fused.bias.set(np.full(fused.bias.shape, 50.0, np.float32))
    plain(gpuarray.to_gpu(x)), fused(gpuarray.to_gpu(x))
    np.testing.assert_array_equal(plain.backward(gpuarray.to_gpu(dy)).get(),
                                  fused.backward(gpuarray.to_gpu(dy)).get())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_on_simulator(rng, dtype):
    """16-bit data: the mask is the stored (rounded) output's."""
    with active_backend("cudasim"):
        dt = np.dtype(dtype) if dtype == "float16" else np.dtype(__import__("ml_dtypes").bfloat16)
        rtol, atol = TOLERANCES[dtype]
        shape = (3, 5, 6, 7)
        bn, scale, bias = _module(BatchNorm2D, shape, "channels_first", rng)
        bn.calcMode(dt)
        x = rng.normal(0.3, 1.5, shape).astype(dt)
        dy = rng.normal(0.0, 1.0, shape).astype(dt)
        y = bn(gpuarray.to_gpu(x)).get().astype(np.float64)
        dx = bn.backward(gpuarray.to_gpu(dy)).get().astype(np.float64)
        xf, dyf = x.astype(np.float64), dy.astype(np.float64)
        yr = ref.forward_train(xf, scale, bias, bn.epsilon)[0]
        _close(y, np.maximum(yr, 0.0), rtol, atol)
        dxr = ref.backward_train(xf, np.where(y > 0, dyf, 0.0), scale, bn.epsilon)[0]
        _close(dx, dxr, rtol, atol)


@pytest.mark.parametrize("activation", ["tanh", "ReLU", 1, True])
def test_bad_activation_refused(activation):
    with pytest.raises(ModuleError, match="activation must be one of None, 'relu'"):
        BatchNorm2D(4, activation=activation)


def test_blueprint_keeps_activation(backend, rng, tmp_path):
    net = Sequential()
    net.append(BatchNorm2D(5, activation="relu", name="bn"))
    x = rng.normal(0.0, 1.0, (2, 5, 3, 3)).astype(np.float32)
    net(gpuarray.to_gpu(x))
    path = str(tmp_path / "net.hdf")
    net.save(path, withBlueprint=True)
    again = blueprint.load(path)
    assert again["bn"].activation == "relu"
    net.evalMode()
    again.evalMode()
    np.testing.assert_array_equal(again(gpuarray.to_gpu(x)).get(), net(gpuarray.to_gpu(x)).get())


def test_matches_torch_batch_norm_then_relu(rng):
    torch = pytest.importorskip("torch")
    from batchnorm_lib import interop

    with active_backend("cpu"):
        shape = (4, 6, 5, 7)
        bn, _, _ = _module(BatchNorm2D, shape, "channels_first", rng, initFactor=0.1,
                           minFactor=0.1)  # PyTorch momentum=0.1
        tm = interop.to_torch(bn)
        assert [type(m).__name__ for m in tm] == ["BatchNorm2d", "ReLU"]
        x = rng.normal(0.0, 1.0, shape).astype(np.float32)
        dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = tm(tx)
        ty.backward(torch.from_numpy(dy))
        y = bn(gpuarray.to_gpu(x)).get()
        dx = bn.backward(gpuarray.to_gpu(dy)).get()
        _close(y, ty.detach().numpy())
        _close(dx, tx.grad.numpy())
        _close(bn.vars["scale"].grad.get().ravel(), tm[0].weight.grad.numpy())
        _close(bn.vars["bias"].grad.get().ravel(), tm[0].bias.grad.numpy())
