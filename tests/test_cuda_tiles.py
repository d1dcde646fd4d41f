"""The NCHW two-pass reductions (kernels/norm/batchnorm.cu: bn_stats_partial_*, bn_backward_partial_*)
run C x nsplit tiles, nsplit from the shape alone, on a grid of at most the blocks the device holds
at once, each block walking every gridDim-th tile. A tile's partial does not depend on which block
computes it, so the results are bitwise the same whatever the grid: one block, a few, or a block
per tile."""

import numpy as np
import pytest

from batchnorm_lib import kernels
from batchnorm_lib.kernels.norm import cuda as norm_cuda
from conftest import TOLERANCES, active_backend
import reference


@pytest.fixture(autouse=True)
def two_pass_kernels(monkeypatch):
    """Test-sized tensors fit the simulated chip: keep them on the two-pass kernels."""
    monkeypatch.setenv(norm_cuda.SINGLE_READ_ENV, "0")


def _train(impl, x, dy, scale, bias, relu):
    from batchnorm_lib.backend import gpuarray

    c = x.shape[1]
    gx, gdy = gpuarray.to_gpu(x), gpuarray.to_gpu(dy)
    out, dx = gpuarray.empty(x.shape, x.dtype), gpuarray.empty(x.shape, x.dtype)
    sm, siv, dsc, dbs = (gpuarray.empty((c,), np.float32) for _ in range(4))
    rm, rv = gpuarray.to_gpu(np.zeros(c, np.float32)), gpuarray.to_gpu(np.ones(c, np.float32))
    gs, gb = gpuarray.to_gpu(scale), gpuarray.to_gpu(bias)
    impl.forward_train(gx, gs, gb, rm, rv, 1e-5, 0.5, out, sm, siv, relu=relu)
    impl.backward_train(gx, gdy, gs, sm, siv, dx, dsc, dbs, y=out if relu else None)
    return [a.get() for a in (out, sm, siv, rm, rv, dx, dsc, dbs)]


@pytest.mark.parametrize("shape, relu", [((8, 3, 25, 23), False), ((4, 2, 64, 68), True)])
def test_tiles_bitwise_equal_on_any_grid(shape, relu, rng, monkeypatch):
    with active_backend("cudasim"):
        impl = kernels.implementation("norm", "cudasim")
        n, c, s = norm_cuda._ncs(shape)
        vec, width = norm_cuda._vector(s, np.float32)
        _, _, nsplit, _ = norm_cuda._reduction(norm_cuda._runtime(), "bn_stats_partial", "f32",
                                               n, c, s, vec, width)
        assert nsplit > 1  # several tiles per channel, so blocks walk several
        x = (rng.standard_normal(shape) * 2 + 30).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32)
        results = {}
        for blocks in (1, 4, c * nsplit):
            monkeypatch.setattr(norm_cuda, "_resident_blocks", lambda rt, name, b=blocks: b)
            results[blocks] = _train(impl, x, dy, scale, bias, relu)
        for blocks in (4, c * nsplit):
            for got, want in zip(results[blocks], results[1]):
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        out, sm, siv, _, _, dx, dsc, dbs = results[1]
        rtol, atol = TOLERANCES["float32"]
        y, mean, var, _, invstd = reference.forward_train(x, scale, bias, 1e-5)
        np.testing.assert_allclose(sm, mean, rtol=rtol, atol=atol)
        np.testing.assert_allclose(siv, invstd, rtol=rtol)
        np.testing.assert_allclose(out, np.maximum(y, 0) if relu else y, rtol=rtol, atol=atol)
        g = np.where(out > 0, dy, 0) if relu else dy  # the relu mask of the output
        want_dx, want_dscale, want_dbias = reference.backward_train(x, g, scale, 1e-5)
        np.testing.assert_allclose(dx, want_dx, rtol=rtol, atol=atol)
        np.testing.assert_allclose(dsc, want_dscale, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dbs, want_dbias, rtol=1e-4, atol=1e-4)
