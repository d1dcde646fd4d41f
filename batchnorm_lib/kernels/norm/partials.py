"""Per-channel partial results, for statistics and gradients merged across processes.

Both entries are composed from the engine's contract (:mod:`batchnorm_lib.kernels.norm`), so every
backend runs them with its own kernels and no backend needs new code:

``channel_partials(x, rows=False) -> (count, mean, m2)``
    ``count`` values per channel (an int), their mean and sum of squared deviations (float64
    (C,) arrays). A statistics pass of ``forward_train`` with eps = 0 on scratch arrays: its mean is
    the batch mean, ``1 / saveinvvar**2`` the biased variance.
``input_grad(x, dy, scale, savemean, saveinvvar, sum_dy, sum_dy_xhat, count, dx, rows=False)``
    ``dx = scale * invstd * (dy - sum_dy / m - xhat * sum_dy_xhat / m)`` with the sums and m given
    (the whole batch's, not this shard's), as ``dy * k + ((x - mean) * c1 + c0)``: one
    ``backward_infer``, one ``forward_infer`` (which keeps ``x - mean`` whole) and one ``axpby``.

``relu_mask(dy, y, rows=False) -> dy'``
    ``dy`` masked by the output ``y`` of a fused relu (the contract's ``y=`` rule), as a
    ``backward_infer`` with unit scale and variance: multiplying by exactly 1 leaves the rest.

``rows=True``: the data is (..., C) with the channels last (a module whose ``rowsLayout`` is set),
run through the rows x channels entries (``rows_*``) of the contract.
"""

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import norm


def _vector(values, c):
    return gpuarray.to_gpu(np.ascontiguousarray(np.broadcast_to(values, (c,)),
                                                dtype=np.float32).reshape(1, c))


def _layout(x, rows):
    """(channel count, the contract's entries for this layout)."""
    ops = norm.ops()
    if not rows:
        return x.shape[1], ops.forward_train, ops.forward_infer, ops.backward_infer
    return (x.shape[-1], ops.rows_forward_train, ops.rows_forward_infer,
            ops.rows_backward_infer)


def channel_partials(x, rows=False):
    c, forward_train, _, _ = _layout(x, rows)
    count = x.size // c if c else 0
    if count == 0:
        return 0, np.zeros(c), np.zeros(c)
    savemean = gpuarray.empty((1, c), np.float32)
    saveinvvar = gpuarray.empty((1, c), np.float32)
    forward_train(x, _vector(1.0, c), _vector(0.0, c), _vector(0.0, c), _vector(1.0, c), 0.0,
                      0.0, gpuarray.empty(x.shape, x.dtype), savemean, saveinvvar)
    mean = savemean.get().ravel().astype(np.float64)
    invstd = saveinvvar.get().ravel().astype(np.float64)
    with np.errstate(divide="ignore"):
        var = np.where(np.isinf(invstd), 0.0, 1.0 / (invstd * invstd))
    return count, mean, var * count


def input_grad(x, dy, scale, savemean, saveinvvar, sum_dy, sum_dy_xhat, count, dx, rows=False):
    c, _, forward_infer, backward_infer = _layout(x, rows)
    invstd = saveinvvar.get().ravel().astype(np.float64)
    k = scale.get().ravel().astype(np.float64) * invstd
    c1 = -k * invstd * np.asarray(sum_dy_xhat, np.float64) / count
    c0 = -k * np.asarray(sum_dy, np.float64) / count
    ones = _vector(1.0, c)
    backward_infer(dy, _vector(k, c), ones, 0.0, dx)
    rest = gpuarray.empty(x.shape, x.dtype)
    forward_infer(x, _vector(c1, c), _vector(c0, c), savemean, ones, 0.0, rest)
    norm.ops().axpby(rest.ravel(), dx.ravel(), 1.0, 1.0)


def relu_mask(dy, y, rows=False):
    c, _, _, backward_infer = _layout(dy, rows)
    ones = _vector(1.0, c)
    out = gpuarray.empty(dy.shape, dy.dtype)
    backward_infer(dy, ones, ones, 0.0, out, y=y)
    return out
