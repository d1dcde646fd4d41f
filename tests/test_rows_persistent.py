"""The single-read training entries of the rows x channels kernels (rc_persist_* in
kernels/norm/rows_channels.cu) on the simulator: results against the float64 reference and the
two-pass kernels, the barrier between the row splits of a channel tile, the fit decision, in-place
calls and the module-level path."""

import numpy as np
import pytest

import reference as ref
from conftest import TOLERANCES

from batchnorm_lib.kernels.norm import cuda as bn_cuda
# the single-read path whatever the environment says, the simulator, a device of given limits,
# the kernels a call launches
from test_persistent import device_of, launched, sim, single_read_on  # noqa: F401

EPS = 1e-5
FACTOR = 0.3


@pytest.fixture
def small_device(device_of, monkeypatch):
    """A simulated device of 2 SMs with 64 KiB of shared memory each and 28 KiB a block (about 10
    KiB of it dynamic, beside the entries' static shared memory), so rows of a few thousand
    elements need several blocks per channel tile (whose blocks then wait for each other: the
    sanitizer is off) or do not fit at all."""
    from batchnorm_lib.backend.cudasim import instrument

    monkeypatch.delenv(instrument.SANITIZE_ENV, raising=False)
    return device_of(2, 64 * 1024, 28 * 1024)


def dtype_of(name, rt):
    from batchnorm_lib.backend.cuda.core import bfloat16_dtype

    dt = bfloat16_dtype() if name == "bfloat16" else np.dtype(name)
    if dt is None or dt not in rt.supported_dtypes():
        pytest.skip("%s is not supported by the simulated device here" % name)
    return dt


def data(rng, shape, dt=np.float32):
    c = shape[-1]
    x = rng.standard_normal(shape) * 2.0 + np.arange(c)
    dy = rng.standard_normal(shape)
    # values the dtype holds exactly, so the reference sees what the kernels see
    x, dy = (a.astype(dt).astype(np.float64) for a in (x, dy))
    return x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c), dy


def forward(rt, x, scale, bias, relu=False, dt=np.float32, inplace=False):
    c = x.shape[-1]
    g = lambda a, t=np.float32: rt.to_gpu(np.ascontiguousarray(a, t))  # noqa: E731
    run_mean, run_var = g(np.linspace(-1, 1, c)), g(np.linspace(0.5, 2, c))
    gx = g(x, dt)
    out = gx if inplace else rt.empty(x.shape, dt)
    savemean, saveinvvar = rt.empty((c,)), rt.empty((c,))
    bn_cuda.rows_forward_train(gx, g(scale), g(bias), run_mean, run_var, EPS, FACTOR, out,
                               savemean, saveinvvar, relu=relu)
    return (out.get().astype(np.float64), savemean.get(), saveinvvar.get(), run_mean.get(),
            run_var.get())


def backward(rt, x, dy, scale, savemean, saveinvvar, y=None, dt=np.float32, inplace=False):
    c = x.shape[-1]
    g = lambda a, t=np.float32: rt.to_gpu(np.ascontiguousarray(a, t))  # noqa: E731
    gdy = g(dy, dt)
    dx = gdy if inplace else rt.empty(x.shape, dt)
    dscale, dbias = rt.empty((c,)), rt.empty((c,))
    bn_cuda.rows_backward_train(g(x, dt), gdy, g(scale), g(savemean), g(saveinvvar), dx, dscale,
                                dbias, y=None if y is None else g(y, dt))
    return dx.get().astype(np.float64), dscale.get(), dbias.get()


def as_nc(a):
    """(..., C) -> (N, C) for the reference's channel axis 1."""
    return a.reshape(-1, a.shape[-1])


def check_forward(got, x, scale, bias, relu, dt=np.float32):
    rtol, atol = TOLERANCES[np.dtype(dt).name]
    y, mean, _, var_unbiased, invstd = ref.forward_train(as_nc(x), scale, bias, EPS)
    if relu:
        y = np.maximum(y, 0.0)
    c = x.shape[-1]
    np.testing.assert_allclose(as_nc(got[0]), y, rtol=rtol, atol=atol * max(1.0, np.abs(y).max()))
    np.testing.assert_allclose(got[1], mean, rtol=2e-6, atol=2e-6 * np.abs(x).max())
    np.testing.assert_allclose(got[2], invstd, rtol=1e-5)
    np.testing.assert_allclose(got[3], (1 - FACTOR) * np.linspace(-1, 1, c) + FACTOR * mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[4], (1 - FACTOR) * np.linspace(0.5, 2, c)
                               + FACTOR * var_unbiased, rtol=1e-5)


def check_backward(got, x, dy, scale, dt=np.float32):
    rtol, atol = TOLERANCES[np.dtype(dt).name]
    dx, dscale, dbias = ref.backward_train(as_nc(x), as_nc(dy), scale, EPS)
    big = lambda a: atol * max(1.0, np.abs(a).max())  # noqa: E731
    np.testing.assert_allclose(as_nc(got[0]), dx, rtol=rtol, atol=big(dx))
    np.testing.assert_allclose(got[1], dscale, rtol=rtol, atol=big(dscale) * 10)
    np.testing.assert_allclose(got[2], dbias, rtol=rtol, atol=big(dbias) * 10)


# (shape, entry suffix): odd C and C not a multiple of the pack take the scalar entries
SHAPES = [((37, 13), "f32"), ((41, 1), "f32"), ((29, 36), "f32_vec"), ((3, 5, 7, 12), "f32_vec"),
          ((2, 3, 4, 5, 6), "f32")]


@pytest.mark.parametrize("shape, entry", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_training_pass_against_reference_and_two_pass(sim, rng, monkeypatch, shape, entry, relu):
    x, scale, bias, dy = data(rng, shape)
    got, names = launched(lambda: forward(sim, x, scale, bias, relu))
    assert names == ["rc_persist_forward_" + entry]
    check_forward(got, x, scale, bias, relu)
    y = got[0]
    dy_masked = np.where(y <= 0, 0.0, dy) if relu else dy
    grads, names = launched(lambda: backward(sim, x, dy, scale, got[1], got[2],
                                             y=y if relu else None))
    assert names == ["rc_persist_backward_" + ("relu_" if relu else "") + entry]
    check_backward(grads, x, dy_masked, scale)

    with monkeypatch.context() as m:
        m.setenv(bn_cuda.SINGLE_READ_ENV, "0")
        base, names = launched(lambda: forward(sim, x, scale, bias, relu))
        assert not any(n.startswith("rc_persist") for n in names)
        base_grads, names = launched(lambda: backward(sim, x, dy, scale, got[1], got[2],
                                                      y=y if relu else None))
        assert not any(n.startswith("rc_persist") for n in names)
    # the same numerics as the two-pass kernels; equal bits where both take a tile in one block
    r, c = int(np.prod(shape[:-1])), shape[-1]
    width = 4 if entry.endswith("_vec") else 1
    whole = bn_cuda._rows_persist_plan(sim, "forward", entry, width, 4, 1, r, c)[2] == 1
    for a, b in zip(got + grads, base + base_grads):
        if whole:
            assert np.array_equal(a, b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape, vec", [((23, 11), ""), ((9, 2, 24), "_vec")])
def test_16_bit_data(sim, rng, dtype, shape, vec):
    dt = dtype_of(dtype, sim)
    suffix = {"float16": "f16", "bfloat16": "bf16"}[dtype] + vec
    x, scale, bias, dy = data(rng, shape, dt)
    got, names = launched(lambda: forward(sim, x, scale, bias, True, dt))
    assert names == ["rc_persist_forward_" + suffix]
    check_forward(got, x, scale, bias, True, dt)
    grads, names = launched(lambda: backward(sim, x, dy, scale, got[1], got[2], y=got[0], dt=dt))
    assert names == ["rc_persist_backward_relu_" + suffix]
    check_backward(grads, x, np.where(got[0] <= 0, 0.0, dy), scale, dt)


@pytest.mark.parametrize("shape, width", [((29, 64), 4), ((40, 5, 3), 1)])
def test_row_splits_meet_at_the_barrier(small_device, rng, monkeypatch, shape, width):
    """A tile's rows need several blocks that wait for each other; results are bitwise repeatable
    and every launch leaves the arrival counts at 0."""
    r, c = int(np.prod(shape[:-1])), shape[-1]
    suffix = "f32_vec" if width > 1 else "f32"
    for kind, arrays in (("forward", 1), ("backward", 2)):
        plan = bn_cuda._rows_persist_plan(small_device, kind, suffix, width, 4, arrays, r, c)
        assert plan is not None and plan[2] > 1, plan
        assert (plan[2] - 1) * -(-r // plan[2]) < r  # every split holds rows
    x, scale, bias, dy = data(rng, shape)
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert names == ["rc_persist_forward_" + suffix]
    check_forward(got, x, scale, bias, False)
    assert all(np.array_equal(a, b) for a, b in zip(got, forward(small_device, x, scale, bias)))
    grads, names = launched(lambda: backward(small_device, x, dy, scale, got[1], got[2]))
    assert names == ["rc_persist_backward_" + suffix]
    check_backward(grads, x, dy, scale)
    again = backward(small_device, x, dy, scale, got[1], got[2])
    assert all(np.array_equal(a, b) for a, b in zip(grads, again))
    assert not bn_cuda._persist_counters(small_device, 1).get()[0::2].any()

    with monkeypatch.context() as m:  # the two-pass kernels, within rounding
        m.setenv(bn_cuda.SINGLE_READ_ENV, "0")
        base = forward(small_device, x, scale, bias)
        base_grads = backward(small_device, x, dy, scale, got[1], got[2])
    for a, b in zip(got + grads, base + base_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


def test_tensors_that_do_not_fit_take_the_two_pass_kernels(small_device, rng):
    x, scale, bias, dy = data(rng, (400, 64))  # 100 KiB: more than 2 SMs hold
    assert bn_cuda._rows_persist_plan(small_device, "forward", "f32_vec", 4, 4, 1, 400, 64) is None
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert names == ["rc_normalize_f32_vec", "rc_stats_partial_f32_vec"]
    check_forward(got, x, scale, bias, False)


def test_sanitizer_finds_nothing(small_device, rng, monkeypatch):
    """One block a tile runs sanitized; a tile needing several blocks takes the two-pass kernels
    under the sanitizer (it follows one block's accesses at a time)."""
    from batchnorm_lib.backend.cudasim import instrument

    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    x, scale, bias, dy = data(rng, (19, 9))
    got, names = launched(lambda: forward(small_device, x, scale, bias, relu=True))
    assert names == ["rc_persist_forward_f32"]
    grads, names = launched(lambda: backward(small_device, x, dy, scale, got[1], got[2],
                                             y=got[0]))
    assert names == ["rc_persist_backward_relu_f32"]
    check_backward(grads, x, np.where(got[0] <= 0, 0.0, dy), scale)
    x, scale, bias, _ = data(rng, (29, 64))
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert not any(n.startswith("rc_persist") for n in names)
    check_forward(got, x, scale, bias, False)


@pytest.mark.parametrize("shape", [(37, 13), (29, 64)])
def test_in_place(small_device, rng, shape):
    """y may be x and dx may be dy, on one block a tile and over several."""
    x, scale, bias, dy = data(rng, shape)
    base = forward(small_device, x, scale, bias)
    got, names = launched(lambda: forward(small_device, x, scale, bias, inplace=True))
    assert names[0].startswith("rc_persist_forward")
    assert all(np.array_equal(a, b) for a, b in zip(got, base))
    base = backward(small_device, x, dy, scale, got[1], got[2])
    grads, names = launched(lambda: backward(small_device, x, dy, scale, got[1], got[2],
                                             inplace=True))
    assert names[0].startswith("rc_persist_backward")
    assert all(np.array_equal(a, b) for a, b in zip(grads, base))


def test_modules_take_the_single_read_entries(sim, rng):
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.modules import BatchNorm, BatchNorm2D

    for module, shape in ((BatchNorm(13), (29, 13)),
                          (BatchNorm2D(12, layout="channels_last"), (3, 5, 7, 12))):
        x, _, _, dy = data(rng, shape)
        gx = gpuarray.to_gpu(x.astype(np.float32))
        out, names = launched(lambda: module(gx))
        assert len(names) == 1 and names[0].startswith("rc_persist_forward_f32")
        scale, bias = module.scale.get().ravel(), module.bias.get().ravel()
        y, *_ = ref.forward_train(as_nc(x), scale, bias, module.epsilon)
        rtol, atol = TOLERANCES["float32"]
        np.testing.assert_allclose(as_nc(out.get()), y, rtol=rtol, atol=atol * np.abs(y).max())
        _, names = launched(lambda: module.backward(gpuarray.to_gpu(dy.astype(np.float32))))
        # (beside the parameter gradients' accumulation, bn_axpby)
        rows = [n for n in names if n.startswith("rc_")]
        assert len(rows) == 1 and rows[0].startswith("rc_persist_backward_f32")
        dx, _, _ = ref.backward_train(as_nc(x), as_nc(dy), scale, module.epsilon)
        np.testing.assert_allclose(as_nc(module.grad.get()), dx, rtol=rtol,
                                   atol=atol * np.abs(dx).max())
