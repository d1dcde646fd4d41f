"""The CUDA kernels' unrolled loops (several packs loaded per thread before any is used) and their
remainders, on cudasim, against the float64 reference: shapes large enough that every thread of
the reductions and the elementwise passes takes more packs than one unrolled step (8 of 16-bit
scalars at most), with odd sizes so the remainders run too; and shapes whose elementwise packs run across channel boundaries."""

import numpy as np
import pytest

from batchnorm_lib import config, kernels
from conftest import TOLERANCES, active_backend, to_gpu_misaligned
import reference

SHAPES = {
    "scalar": (5, 3, 23, 37),     # spatial 851: no 16-byte packs; 4255 values per channel
    "vector": (5, 3, 24, 36),     # spatial 864: whole 16-byte packs
    "columns": (700, 45),         # (N, C): the column reductions, 70 rows per block split
    # spatial 777: scalar reductions, but whole 16-byte packs over the flat index, so the
    # elementwise passes take packs that run across channel boundaries
    "flat": (8, 3, 21, 37),
    "flat_tiny": (64, 5, 3),      # spatial 3 < the pack: packs span two or three channels
    # data one element off 16-byte alignment: the scalar elementwise entries
    "misaligned": (5, 3, 23, 37),
}


def _dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("path", sorted(SHAPES))
def test_unrolled_paths_match_reference(dtype_name, path, rng):
    with active_backend("cudasim"):
        from batchnorm_lib.backend import gpuarray

        impl = kernels.implementation("norm", "cudasim")
        dtype = _dtype(dtype_name)
        if dtype not in config.backend_module().supported_dtypes():
            pytest.skip("cudasim lacks %s here" % dtype_name)
        shape = SHAPES[path]
        c = shape[1]
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32)
        run_mean = rng.standard_normal(c).astype(np.float32)
        run_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        rtol, atol = TOLERANCES[dtype_name]
        vec = lambda v: gpuarray.to_gpu(np.asarray(v, np.float32))  # noqa: E731

        def upload(a):
            return to_gpu_misaligned(a, path == "misaligned")

        gx, gdy = upload(x), upload(dy)
        out = upload(np.zeros(shape, dtype))
        assert (int(gx.ptr) % 16 == 0) == (path != "misaligned")
        sm, siv = vec(np.zeros(c)), vec(np.zeros(c))
        impl.forward_train(gx, vec(scale), vec(bias), vec(run_mean), vec(run_var), 1e-5, 0.1,
                           out, sm, siv)
        y, mean, _, _, invstd = reference.forward_train(x64, scale, bias, 1e-5)
        np.testing.assert_allclose(sm.get(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(siv.get(), invstd, rtol=1e-5)
        np.testing.assert_allclose(out.get().astype(np.float64), y, rtol=rtol, atol=atol)

        dx, dsc, dbs = upload(np.zeros(shape, dtype)), vec(np.zeros(c)), vec(np.zeros(c))
        # the kernels take the saved statistics they are given: the reference's, rounded
        impl.backward_train(gx, gdy, vec(scale), vec(mean), vec(invstd), dx, dsc, dbs)
        rdx, rdsc, rdbs = reference.backward_train(x64, dy64, scale, 1e-5)
        np.testing.assert_allclose(dbs.get(), rdbs, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dsc.get(), rdsc, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dx.get().astype(np.float64), rdx, rtol=rtol, atol=atol)

        # inference in place: every pack is loaded before its step stores
        impl.forward_infer(gx, vec(scale), vec(bias), vec(run_mean), vec(run_var), 1e-5, gx)
        ry = reference.forward_eval(x64, scale, bias, run_mean, run_var, 1e-5)
        np.testing.assert_allclose(gx.get().astype(np.float64), ry, rtol=rtol, atol=atol)

        impl.backward_infer(gdy, vec(scale), vec(run_var), 1e-5, dx)
        cs = reference.channel_shape(dy64)
        rdx = dy64 * (scale / np.sqrt(run_var.astype(np.float64) + 1e-5)).reshape(cs)
        np.testing.assert_allclose(dx.get().astype(np.float64), rdx, rtol=rtol, atol=atol)
