"""Empty batches: a zero-length axis other than C gives an empty output in training and
evaluation, leaves the running statistics and numOfProps as they were, and the backward gives an
empty dx and a zero parameter-gradient contribution; no kernel sees an empty array."""

import numpy as np
import pytest

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND, kernels
from batchnorm_lib.backend import gpuarray

CASES = [(lambda c: BatchNorm(c), (0, 5)),
         (lambda c: BatchNorm1D(c), (0, 5, 7)), (lambda c: BatchNorm1D(c), (3, 5, 0)),
         (lambda c: BatchNorm2D(c), (0, 5, 3, 2)), (lambda c: BatchNorm2D(c), (2, 5, 3, 0)),
         (lambda c: BatchNorm3D(c), (2, 5, 0, 3, 1)),
         (lambda c: BatchNormND(4, c), (1, 5, 2, 0, 2, 3))]


@pytest.fixture
def no_empty_kernels(monkeypatch):
    """Every norm kernel call is checked: none may get an array without elements."""
    real = kernels.norm.ops

    class Checked:
        def __init__(self, impl):
            self.impl = impl

        def __getattr__(self, name):
            fn = getattr(self.impl, name)

            def call(*args, **kw):
                for a in args:
                    assert not (gpuarray.is_array(a) and a.size == 0), "%s got an empty array" % name
                return fn(*args, **kw)
            return call

    monkeypatch.setattr(kernels.norm, "ops", lambda backend=None: Checked(real(backend)))


def state(bn):
    return [a.get().copy() for a in (bn.scale, bn.bias, bn.mean, bn.var)] + [bn.numOfProps]


@pytest.mark.parametrize("factory,shape", CASES, ids=[str(s) for _, s in CASES])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_empty_batch(backend, rng, no_empty_kernels, factory, shape, momentum):
    bn = factory(shape[1])
    full = list(shape)
    full[0], full[2:] = 4, [max(d, 2) for d in full[2:]]
    x = gpuarray.to_gpu(rng.standard_normal(full).astype(np.float32))
    bn(x)
    bn.backward(gpuarray.to_gpu(rng.standard_normal(full).astype(np.float32)))
    before = state(bn)
    grads = [bn.vars[k].grad.get().copy() for k in ("scale", "bias")]
    assert all(np.any(g != 0) for g in grads)

    empty = gpuarray.to_gpu(np.zeros(shape, np.float32))
    for train in (True, False):
        (bn.trainMode if train else bn.evalMode)()
        y = bn(empty)
        assert y.shape == shape and y.dtype == np.float32
        dx = bn.backward(gpuarray.to_gpu(np.zeros(shape, np.float32)), momentum=momentum)
        assert dx.shape == shape
        after = state(bn)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        if train:  # g = scale * 0 + momentum * g
            for k, g in zip(("scale", "bias"), grads):
                np.testing.assert_array_equal(bn.vars[k].grad.get(), np.float32(momentum) * g)
    bn.trainMode()
    bn(x)  # a normal batch afterwards counts as the second one
    assert bn.numOfProps == 2


def test_one_value_per_channel_still_refused(backend):
    from batchnorm_lib import ModuleError

    with pytest.raises(ModuleError, match="more than one value per channel"):
        BatchNorm2D(3)(gpuarray.to_gpu(np.zeros((1, 3, 1, 1), np.float32)))
