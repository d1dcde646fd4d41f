"""The rows x channels CUDA kernels (kernels/norm/rows_channels.cu) on cudasim: each elementwise
thread keeps one column of channels, the block's per-channel constants staged once, and inference
(forward and frozen-statistics backward) runs in one launch that computes the channel factor
itself. Shapes of odd sizes cover the tails: C not a multiple of the pack (scalar entries), more
columns than a block has threads (a block's columns wrap at the row end), C = 1, and grids with
threads left past the last whole row."""

import numpy as np
import pytest

from batchnorm_lib import kernels
from batchnorm_lib.backend.cudasim import profile
from batchnorm_lib.kernels.norm import cuda as norm_cuda
from conftest import TOLERANCES, active_backend
import reference

EPS = 1e-3
# (R, C): scalar C = 37; vector C = 40 (packs of 4 and 8); 2056 = 257 packs of 8, 514 of 4 (a
# block's 256 columns wrap); 300 scalar columns (wrap, and 212 threads past the last whole row);
# C = 1
SHAPES = [(61, 37), (23, 40), (5, 2056), (7, 300), (45, 1)]


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _data(rng, shape, dtype):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32).astype(dtype)
    dy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    run_mean = rng.standard_normal(c).astype(np.float32)
    run_var = rng.uniform(0.2, 3.0, c).astype(np.float32)
    return x, dy, scale, bias, run_mean, run_var


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_inference_one_launch_equals_two_launch_path(shape, dtype_name, relu, rng):
    """One launch each; the output bitwise equal to the training normalize entry given the
    factor in float64 rounded once (bn::frozen_factor's expression, here on the host) (the two-launch path), and to dy * a rounded once for the backward;
    close to the float64 reference."""
    with active_backend("cudasim"):
        from batchnorm_lib.backend import gpuarray

        impl = kernels.implementation("norm", "cudasim")
        dtype = _dtype(dtype_name)
        x, dy, scale, bias, run_mean, run_var = _data(rng, shape, dtype)
        g = gpuarray.to_gpu
        gx, gs, gb, grm, grv = g(x), g(scale), g(bias), g(run_mean), g(run_var)
        y = g(np.zeros(shape, dtype))
        with profile() as fwd:
            impl.rows_forward_infer(gx, gs, gb, grm, grv, EPS, y, relu=relu)
        dx = g(np.zeros(shape, dtype))
        with profile() as bwd:
            impl.rows_backward_infer(g(dy), gs, grv, EPS, dx, y=y if relu else None)
        assert len(fwd.launches) == 1 and len(bwd.launches) == 1

        # the two-launch path: the factor (IEEE division and sqrt: the device's bits), then the
        # training normalize entry
        rt, suffix, r, c, vec, width = norm_cuda._rows_setup(gx, y)
        a = g((scale.astype(np.float64) / np.sqrt(run_var.astype(np.float64) + EPS))
              .astype(np.float32))
        two = g(np.zeros(shape, dtype))
        norm_cuda._rows_normalize(rt, suffix + vec, gx, two, grm, a, gb, r, c, width, relu)
        assert y.get().tobytes() == two.get().tobytes()
        a = a.get()
        mask = y.get().astype(np.float32) > 0 if relu else True
        expect = np.where(mask, dy.astype(np.float32) * a, np.float32(0)).astype(dtype)
        assert dx.get().tobytes() == expect.tobytes()

        rtol, atol = TOLERANCES[dtype_name]
        k = scale.astype(np.float64) / np.sqrt(run_var.astype(np.float64) + EPS)
        ref = (x.astype(np.float64) - run_mean) * k + bias
        if relu:
            ref = np.maximum(ref, 0.0)
        np.testing.assert_allclose(y.get().astype(np.float64), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("single_read", ["1", "0"], ids=["single-read", "two-pass"])
@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES[2:], ids=lambda s: "x".join(map(str, s)))
def test_training_wrapped_columns_against_float64(shape, dtype_name, single_read, rng,
                                                  monkeypatch):
    """Training forward and backward where a block's columns wrap at the row end, threads are
    left past the last whole row, or C = 1: against the float64 reference, on the single-read
    entries (these shapes fit on chip) and on the two-pass kernels."""
    monkeypatch.setenv(norm_cuda.SINGLE_READ_ENV, single_read)
    with active_backend("cudasim"):
        from batchnorm_lib.backend import gpuarray

        impl = kernels.implementation("norm", "cudasim")
        dtype = _dtype(dtype_name)
        x, dy, scale, bias, _, _ = _data(rng, shape, dtype)
        c = shape[-1]
        g = gpuarray.to_gpu
        zeros = lambda: g(np.zeros(c, np.float32))  # noqa: E731
        y, sm, si = g(np.zeros(shape, dtype)), zeros(), zeros()
        gx, gs = g(x), g(scale)
        impl.rows_forward_train(gx, gs, g(bias), zeros(), g(np.ones(c, np.float32)), EPS, 1.0, y,
                                sm, si)
        dx, dsc, dbi = g(np.zeros(shape, dtype)), zeros(), zeros()
        impl.rows_backward_train(gx, g(dy), gs, sm, si, dx, dsc, dbi)

        rtol, atol = TOLERANCES[dtype_name]
        x64 = np.moveaxis(x.astype(np.float64), -1, 1)
        dy64 = np.moveaxis(dy.astype(np.float64), -1, 1)
        ref_y = reference.forward_train(x64, scale, bias, EPS)[0]
        np.testing.assert_allclose(np.moveaxis(y.get().astype(np.float64), -1, 1), ref_y,
                                   rtol=rtol, atol=atol)
        ref_dx, ref_dscale, ref_dbias = reference.backward_train(x64, dy64, scale, EPS)
        np.testing.assert_allclose(np.moveaxis(dx.get().astype(np.float64), -1, 1), ref_dx,
                                   rtol=rtol, atol=atol)
        np.testing.assert_allclose(dbi.get(), ref_dbias, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dsc.get(), ref_dscale, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("dtype_name, c", [("float32", 40), ("float16", 40), ("float32", 37),
                                           ("float16", 4104)])
def test_reduction_grid_is_one_resident_wave(dtype_name, c):
    """The reductions' grid: at most the blocks the device holds at once (by the kernel's
    registers and shared memory), at least 128 rows per block, and exactly one full wave where
    the rows allow."""
    with active_backend("cudasim"):
        from batchnorm_lib import config

        rt = config.backend_module().runtime()
        dtype = _dtype(dtype_name)
        for kind in ("rc_stats_partial_", "rc_backward_partial_", "rc_backward_partial_relu_"):
            vec, width = norm_cuda._vector(c, dtype)
            name = kind + norm_cuda._SUFFIX[dtype_name] + vec
            slots = norm_cuda._rows_resident(rt, name)
            fn = rt.functions_of(norm_cuda.ROWS_SOURCE)[name]
            if fn.num_regs:  # ptxas's figure known: the register limit applies
                assert slots % 132 == 0 and 1 <= slots // 132 <= 8
                assert slots // 132 <= 65536 // (-(-fn.num_regs * 32 // 256) * 256 * 8)
            else:
                assert slots == norm_cuda.TARGET_BLOCKS
            for rows in (200, 5000, 10 ** 7):
                (tiles, nsplit), again = norm_cuda._rows_reduction(rows, c, width, rt, name)
                assert tiles == -(-c // (32 * width)) and nsplit == again
                assert nsplit == max(1, min(slots // tiles, rows // norm_cuda.ROWS_MIN_BLOCK_ROWS))
                assert tiles * nsplit <= max(slots, tiles)
