"""Non-finite data in the statistics kernels."""

import numpy as np
import pytest

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, InstanceNorm2D
from batchnorm_lib.backend import gpuarray


# -- faults the fuzzing found, kept as plain cases ------------------------------------------------
@pytest.mark.parametrize("make, shape, axis", [
    (lambda: BatchNorm(3), (4, 3), 1),                  # rows x channels kernels
    (lambda: BatchNorm2D(3), (2, 3, 2, 3), 1),          # per-channel kernels
    (lambda: BatchNorm1D(3, layout="channels_last"), (2, 5, 3), 2),
], ids=["rows", "nchw", "channels_last"])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_poisoned_channel_variance_stays_nan(backend, make, shape, axis, poison):
    """The statistics kernels clamped a negative-from-rounding variance with fmaxf(var, 0), which
    also turned a NaN variance (non-finite data) into 0: a plausible running variance."""
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    pos = [1] * len(shape)
    pos[axis] = 1  # channel 1
    x[tuple(pos)] = poison
    bn = make()
    bn(gpuarray.to_gpu(x))
    assert np.isnan(bn.var.get().ravel()[1]) and np.isnan(bn.saveinvvar.get().ravel()[1])
    assert np.isfinite(bn.var.get().ravel()[[0, 2]]).all()


def test_poisoned_row_stays_nan(backend):
    """The per-row kernels had the same fmaxf clamp: a poisoned row's saved inverse deviation
    came out as 1 / sqrt(eps)."""
    x = np.random.default_rng(6).normal(size=(3, 2, 3, 4)).astype(np.float32)
    x[1, 0, 2, 1] = np.inf
    module = InstanceNorm2D(2)
    y = module(gpuarray.to_gpu(x)).get()
    assert np.isnan(y[1, 0]).all() and np.isfinite(np.delete(y.reshape(6, -1), 2, 0)).all()
    invstd = module.saveinvvar.get()
    assert np.isnan(invstd[2]) and np.isfinite(np.delete(invstd, 2)).all()
