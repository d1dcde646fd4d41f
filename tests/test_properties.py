"""Property-based checks over random shapes and data (hypothesis)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchnorm_lib import BatchNormND
from batchnorm_lib.backend import gpuarray

import reference as ref

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw):
    nd = draw(st.integers(0, 3))
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    if n * int(np.prod(spatial, dtype=np.int64)) < 2:
        n = 2
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.sampled_from([0.0, 3.0, -50.0, 1e3]))
    sd = draw(st.sampled_from([1e-2, 1.0, 20.0]))
    return nd, (n, c) + spatial, seed, loc, sd


@SETTINGS
@given(problems())
def test_forward_backward_any_shape(backend, problem):
    nd, shape, seed, loc, sd = problem
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, sd, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    bn = BatchNormND(nd, shape[1])
    scale = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    bn.scale.set(scale.reshape(bn.scale.shape))

    out = bn(gpuarray.to_gpu(x))
    y, mean, var, var_unb, _ = ref.forward_train(x, scale, np.zeros(shape[1]), bn.epsilon)
    # float32 rounding of the data and of the saved mean, relative to the channel's actual spread,
    # bounds what any float32 implementation can do
    spread = np.sqrt(var.min() + bn.epsilon)
    tol = 2e-5 + 8 * np.finfo(np.float32).eps * (np.abs(x).max() + spread) / spread
    np.testing.assert_allclose(out.get(), y, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.mean.get().ravel(), mean, rtol=1e-5, atol=1e-5 * sd)
    np.testing.assert_allclose(bn.var.get().ravel(), var_unb, rtol=5e-4, atol=1e-6 * sd * sd)

    dx = bn.backward(gpuarray.to_gpu(dy))
    rdx, rds, rdb = ref.backward_train(x, dy, scale, bn.epsilon)
    m = x.size // shape[1]
    # dx is a difference of terms of size scale * invstd * |dy|; float32 errors scale with that,
    # not with dx itself (which can nearly cancel, e.g. for two values per channel)
    unit = float(scale.max() / spread * np.abs(dy).max())
    gtol = 1e-4 * max(1.0, np.sqrt(m)) + tol * np.sqrt(m)
    np.testing.assert_allclose(dx.get(), rdx, rtol=gtol, atol=(1e-4 + 4 * tol) * unit)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), rdb, rtol=1e-4, atol=1e-4 * m)


@SETTINGS
@given(problems())
def test_output_statistics_are_normalized(backend, problem):
    """With scale 1 and bias 0, each channel of the output has mean 0 and variance var/(var+eps)."""
    nd, shape, seed, loc, sd = problem
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, sd, shape).astype(np.float32)
    bn = BatchNormND(nd, shape[1], affine=False)
    y = bn(gpuarray.to_gpu(x)).get().astype(np.float64)
    axes = (0,) + tuple(range(2, y.ndim))
    _, _, var, _, _ = ref.forward_train(x, np.ones(shape[1]), np.zeros(shape[1]), bn.epsilon)
    spread = np.sqrt(var.min() + bn.epsilon)
    tol = 1e-3 + 8 * np.finfo(np.float32).eps * np.abs(x).max() / spread
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=tol)
    np.testing.assert_allclose(y.var(axis=axes), var / (var + bn.epsilon), rtol=2 * tol, atol=2 * tol)


@pytest.mark.parametrize("nd", [0, 1, 2, 3])
def test_channel_independence(backend, nd):
    """Changing one channel's data changes only that channel's output and statistics."""
    rng = np.random.default_rng(nd)
    shape = (3, 4) + (3,) * nd
    x = rng.normal(0, 1, shape).astype(np.float32)
    bn1, bn2 = BatchNormND(nd, 4, sscale=0), BatchNormND(nd, 4, sscale=0)
    y1 = bn1(gpuarray.to_gpu(x)).get()
    x[:, 2] = x[:, 2] * 7 + 3
    y2 = bn2(gpuarray.to_gpu(x)).get()
    keep = [0, 1, 3]
    np.testing.assert_array_equal(y1[:, keep], y2[:, keep])
    np.testing.assert_array_equal(bn1.mean.get().ravel()[keep], bn2.mean.get().ravel()[keep])
    assert not np.array_equal(bn1.mean.get().ravel()[2], bn2.mean.get().ravel()[2])
