"""Fused ReLU in the CUDA kernels (kernels/norm/batchnorm.cu and rows_channels.cu), on cudasim,
against an independent float64 numpy reference: every path (16-byte vector and scalar NCHW,
spatial size 1, rows x channels vector and scalar) in float32, float16 and bfloat16, training and
inference, forward and backward, with exact zeros and NaNs where the mask rule decides
(relu(v) = v <= 0 ? 0 : v; the gradient is dy where y > 0 or y is NaN, else 0)."""

import numpy as np
import pytest

from batchnorm_lib import config, kernels
from batchnorm_lib.backend.cudasim import instrument
from batchnorm_lib.kernels.norm import cuda as norm_cuda
from conftest import TOLERANCES, active_backend, to_gpu_misaligned
import reference

# (layout, shape, whether the 16-byte path is taken for 4-byte / 2-byte data)
CASES = {
    "nchw_scalar": ("nchw", (3, 5, 7, 9), (False, False)),    # spatial 63: no whole packs
    "nchw_vector": ("nchw", (3, 5, 8, 6), (True, True)),      # spatial 48: whole 16-byte packs
    "nchw_spatial1": ("nchw", (67, 37), (False, False)),      # (N, C): the column reductions
    # spatial 7x7: scalar reductions; the elementwise packs run across channel boundaries
    "nchw_flat": ("nchw", (8, 5, 7, 7), (False, False)),
    # one element off 16-byte alignment: the scalar elementwise entries
    "nchw_misaligned": ("nchw", (3, 5, 7, 9), (False, False)),
    "rows_scalar": ("rows", (3, 23, 37), (False, False)),     # C = 37 along the last axis
    "rows_vector": ("rows", (69, 40), (True, True)),          # C = 40: whole packs of 4 and 8
}


def _dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _relu(v):
    return np.where(v <= 0, 0.0, v)  # NaN stays NaN


def _masked(dy, y):
    return np.where(y <= 0, 0.0, dy)  # a NaN y passes dy


def _to_nchw(a, layout):
    """Channels moved to axis 1 (the reference's layout)."""
    return np.moveaxis(a, -1, 1) if layout == "rows" else a


def _check(got, want, dtype_name):
    rtol, atol = TOLERANCES[dtype_name]
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    # relu's zeros are exact +0 (not -0, not a rounded tiny value)
    zero = want == 0
    assert np.all(got[zero] == 0) and not np.any(np.signbit(got[zero]))


def run_case(case, dtype_name, rng):
    """Every relu entry of one path against the float64 reference."""
    from batchnorm_lib.backend import gpuarray

    impl = kernels.implementation("norm", "cudasim")
    dtype = _dtype(dtype_name)
    if dtype not in config.backend_module().supported_dtypes():
        pytest.skip("cudasim lacks %s here" % dtype_name)
    layout, shape, vector = CASES[case]
    c = shape[-1] if layout == "rows" else shape[1]
    rows = layout == "rows"
    f = (lambda name: getattr(impl, "rows_" + name)) if rows else (lambda name: getattr(impl, name))
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    bias[0] = 0.0  # channel 0's values equal to its running mean come out exactly 0
    # representable in the data's dtype, so inputs can equal it exactly
    run_mean = rng.standard_normal(c).astype(dtype).astype(np.float32)
    run_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    vec = lambda v: gpuarray.to_gpu(np.asarray(v, np.float32))  # noqa: E731

    def upload(a):
        return to_gpu_misaligned(a, case == "nchw_misaligned")

    gx, gdy = upload(x), upload(dy)
    assert (int(gx.ptr) % 16 == 0) == (case != "nchw_misaligned")
    assert bool(norm_cuda._vector(shape[-1] if rows else int(np.prod(shape[2:])), dtype,
                                  gx, gdy)[0]) == vector[dtype.itemsize == 2]
    if case == "nchw_flat":  # the elementwise passes take 16-byte packs all the same
        assert norm_cuda._flat_vector(dtype, gx, gdy)[0] == "_vec"
    x64 = _to_nchw(x.astype(np.float64), layout)
    cs = reference.channel_shape(x64)

    # training forward
    out = upload(np.zeros(shape, dtype))
    sm, siv = vec(np.zeros(c)), vec(np.zeros(c))
    f("forward_train")(gx, vec(scale), vec(bias), vec(run_mean), vec(run_var), 1e-5, 0.1, out, sm,
                       siv, relu=True)
    y, mean, _, _, invstd = reference.forward_train(x64, scale, bias, 1e-5)
    np.testing.assert_allclose(sm.get(), mean, rtol=1e-5, atol=1e-5)
    _check(_to_nchw(out.get(), layout), _relu(y), dtype_name)
    assert np.any(_relu(y) == 0) and np.any(_relu(y) > 0)

    # inference, in place, with a NaN input and values at channel 0's running mean
    xi = x.copy()
    flat = _to_nchw(xi, layout)  # a view: writes land in xi
    flat[0, 0, ...] = run_mean[0]
    flat[-1, -1, ...].flat[0] = np.nan
    gxi = upload(xi)
    f("forward_infer")(gxi, vec(scale), vec(bias), vec(run_mean), vec(run_var), 1e-5, gxi, relu=True)
    ry = _relu(reference.forward_eval(_to_nchw(xi.astype(np.float64), layout), scale, bias,
                                      run_mean, run_var, 1e-5))
    got = _to_nchw(gxi.get(), layout).astype(np.float64)
    assert np.isnan(got[-1, -1].flat[0]) and np.all(got[0, 0] == 0)
    _check(got, ry, dtype_name)

    # backward: a mask with exact zeros, negatives, -0, NaN; a NaN gradient where the mask is 0
    ym = rng.standard_normal(shape).astype(np.float32)
    ym[rng.random(shape) < 0.2] = 0.0
    ym.flat[1] = -0.0
    ym.flat[2] = np.nan
    ym = ym.astype(dtype)
    dyn = dy.copy()
    dyn.flat[3] = np.nan
    ym.flat[3] = -1.0
    gym, gdyn = upload(ym), upload(dyn)
    g64 = _masked(_to_nchw(dyn.astype(np.float64), layout), _to_nchw(ym.astype(np.float64), layout))
    assert np.isfinite(g64).all()

    dx, dsc, dbs = upload(np.zeros(shape, dtype)), vec(np.zeros(c)), vec(np.zeros(c))
    f("backward_train")(gx, gdyn, vec(scale), vec(mean), vec(invstd), dx, dsc, dbs, y=gym)
    rdx, rdsc, rdbs = reference.backward_train(x64, g64, scale, 1e-5)
    np.testing.assert_allclose(dbs.get(), rdbs, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dsc.get(), rdsc, rtol=1e-4, atol=1e-3)
    rtol, atol = TOLERANCES[dtype_name]
    np.testing.assert_allclose(_to_nchw(dx.get(), layout).astype(np.float64), rdx, rtol=rtol,
                               atol=atol)

    # frozen statistics: exact zeros where the mask is
    f("backward_infer")(gdyn, vec(scale), vec(run_var), 1e-5, dx, y=gym)
    rdx = g64 * (scale / np.sqrt(run_var.astype(np.float64) + 1e-5)).reshape(cs)
    _check(_to_nchw(dx.get(), layout), rdx, dtype_name)


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_relu_cudasim(case, dtype_name, rng):
    with active_backend("cudasim"):
        run_case(case, dtype_name, rng)


@pytest.mark.parametrize("case, dtype_name", [("nchw_vector", "float32"),
                                              ("nchw_scalar", "float16"),
                                              ("nchw_flat", "float16"),
                                              ("nchw_spatial1", "float32"),
                                              ("rows_vector", "float16"),
                                              ("rows_scalar", "float32")])
def test_fused_relu_cudasim_sanitized(case, dtype_name, rng, monkeypatch):
    """The same under the simulator's sanitizer (races, uninitialized and out-of-bounds accesses
    fail the launch)."""
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    with active_backend("cudasim"):
        run_case(case, dtype_name, rng)


def test_relu_mask_shape_refused(rng):
    with active_backend("cudasim"):
        from batchnorm_lib.backend import gpuarray

        impl = kernels.implementation("norm", "cudasim")
        x = gpuarray.to_gpu(rng.standard_normal((3, 4, 5)).astype(np.float32))
        dx = gpuarray.to_gpu(np.full((3, 4, 5), 7.0, np.float32))
        ones = gpuarray.to_gpu(np.ones(4, np.float32))
        bad = gpuarray.to_gpu(np.ones((3, 4, 6), np.float32))
        with pytest.raises(ValueError, match="mask"):
            impl.backward_infer(x, ones, ones, 1e-5, dx, y=bad)
        with pytest.raises(ValueError, match="mask"):
            impl.rows_backward_infer(x, ones, ones, 1e-5, dx, y=bad)
        with pytest.raises(TypeError):
            impl.backward_infer(x, ones, ones, 1e-5, dx, y=gpuarray.to_gpu(
                np.ones((3, 4, 5), np.float16)))
        assert np.all(dx.get() == 7.0)  # nothing launched
