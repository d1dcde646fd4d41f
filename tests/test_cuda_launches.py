"""The CUDA reductions finish in their own launch (kernels/norm/batchnorm.cu and rows_channels.cu):
the last block of each channel group merges the group's partials, so a training pass is two
launches. On cudasim, on shapes with several blocks per channel group: two launches per pass,
results bitwise equal from run to run (the merge order is fixed, whichever block ends last),
close to the float64 reference, and the done-counters left at 0 for the next launch."""

import numpy as np
import pytest

from batchnorm_lib import config, kernels
from batchnorm_lib.backend.cudasim import profile
from batchnorm_lib.kernels.norm import cuda as norm_cuda
from conftest import TOLERANCES, active_backend
import reference

# (layout, shape): every reduction kernel family, each split over several blocks per group
CASES = {
    "nchw_scalar": ("nchw", (4, 3, 41, 41)),
    "nchw_vector": ("nchw", (8, 3, 48, 48)),
    "nchw_spatial1": ("nchw", (2100, 37)),
    "rows_scalar": ("rows", (700, 37)),
    "rows_vector": ("rows", (700, 40)),
}


@pytest.fixture(autouse=True)
def two_pass_kernels(monkeypatch):
    """The test-sized tensors fit on the simulated device's chip: keep them on the two-pass
    kernels these tests are about (the single-read ones are tests/test_persistent.py's)."""
    monkeypatch.setenv(norm_cuda.SINGLE_READ_ENV, "0")


def _splits(layout, shape, dtype):
    if layout == "rows":
        c = shape[-1]
        width = norm_cuda._vector(c, dtype)[1]
        return norm_cuda._rows_reduction(int(np.prod(shape[:-1])), c, width)[1]
    n, c, s = norm_cuda._ncs(shape)
    vec, width = norm_cuda._vector(s, dtype)
    return norm_cuda._reduction(norm_cuda._runtime(), "bn_stats_partial", "f32", n, c, s, vec,
                                width)[2]


def _passes(impl, layout, x, dy, scale, bias, relu):
    """Training forward and backward; every output (filled with NaN first, so a missing write
    shows) as host arrays, and the launches each pass took."""
    from batchnorm_lib.backend import gpuarray

    shape, dtype = x.shape, x.dtype
    c = shape[-1] if layout == "rows" else shape[1]
    f = (lambda name: getattr(impl, "rows_" + name)) if layout == "rows" else \
        (lambda name: getattr(impl, name))
    nan = lambda n: gpuarray.to_gpu(np.full(n, np.nan, np.float32))  # noqa: E731
    gx, gdy = gpuarray.to_gpu(x), gpuarray.to_gpu(dy)
    out = gpuarray.to_gpu(np.full(shape, np.nan, dtype))
    sm, siv = nan(c), nan(c)
    rm, rv = gpuarray.to_gpu(np.zeros(c, np.float32)), gpuarray.to_gpu(np.ones(c, np.float32))
    with profile() as fwd:
        f("forward_train")(gx, gpuarray.to_gpu(scale), gpuarray.to_gpu(bias), rm, rv, 1e-5, 0.25,
                           out, sm, siv, relu=relu)
    dx, dsc, dbs = gpuarray.to_gpu(np.full(shape, np.nan, dtype)), nan(c), nan(c)
    with profile() as bwd:
        f("backward_train")(gx, gdy, gpuarray.to_gpu(scale), sm, siv, dx, dsc, dbs,
                            y=out if relu else None)
    results = {name: a.get() for name, a in dict(out=out, savemean=sm, saveinvvar=siv,
                                                 run_mean=rm, run_var=rv, dx=dx, dscale=dsc,
                                                 dbias=dbs).items()}
    return results, [lp.name for lp in fwd.launches], [lp.name for lp in bwd.launches]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_launches_repeatable_and_counters_reset(case, relu, rng):
    with active_backend("cudasim"):
        impl = kernels.implementation("norm", "cudasim")
        layout, shape = CASES[case]
        dtype = np.dtype(np.float32)
        assert _splits(layout, shape, dtype) > 1
        c = shape[-1] if layout == "rows" else shape[1]
        x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32)

        first, fwd, bwd = _passes(impl, layout, x, dy, scale, bias, relu)
        assert len(fwd) == 2 and len(bwd) == 2, (fwd, bwd)
        assert "partial" in fwd[0] and "normalize" in fwd[1] and "partial" in bwd[0]
        counters = norm_cuda._COUNTERS[config.backend_module().runtime()].get()
        assert not counters.any()

        # again, and with other data in between: the counters served every launch
        _passes(impl, layout, x[::-1].copy(), dy, scale, bias, relu)
        again, _, _ = _passes(impl, layout, x, dy, scale, bias, relu)
        for name in first:
            assert first[name].tobytes() == again[name].tobytes(), name

        # against the float64 reference (channels on axis 1)
        to_nchw = (lambda a: np.moveaxis(a, -1, 1)) if layout == "rows" else (lambda a: a)
        x64, dy64 = to_nchw(x.astype(np.float64)), to_nchw(dy.astype(np.float64))
        y, mean, _, uvar, invstd = reference.forward_train(x64, scale, bias, 1e-5)
        if relu:
            y = np.where(y <= 0, 0.0, y)
            dy64 = np.where(to_nchw(first["out"]) <= 0, 0.0, dy64)  # the mask is the y given
        rtol, atol = TOLERANCES["float32"]
        np.testing.assert_allclose(first["savemean"], mean, rtol=1e-6)
        np.testing.assert_allclose(first["saveinvvar"], invstd, rtol=1e-5)
        np.testing.assert_allclose(first["run_mean"], 0.25 * mean, rtol=1e-6)
        np.testing.assert_allclose(first["run_var"], 0.75 + 0.25 * uvar, rtol=1e-5)
        np.testing.assert_allclose(to_nchw(first["out"]), y, rtol=rtol, atol=atol)
        dx, dscale, dbias = reference.backward_train(x64, dy64, scale, 1e-5)
        np.testing.assert_allclose(first["dbias"], dbias, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(first["dscale"], dscale, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(to_nchw(first["dx"]), dx, rtol=rtol, atol=atol)
