"""Independent float64 reference for batch normalization, written from the formulas in
docs/modules/BatchNormND.md."""

import numpy as np


def axes_but_channel(x):
    return (0,) + tuple(range(2, x.ndim))


def channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def forward_train(x, scale, bias, eps):
    """Returns (y, mean, biased var, unbiased var, invstd); scale/bias are length-C vectors."""
    x = np.asarray(x, dtype=np.float64)
    ax, cs = axes_but_channel(x), channel_shape(x)
    m = x.size // x.shape[1]
    mean = x.mean(axis=ax)
    var = ((x - mean.reshape(cs)) ** 2).mean(axis=ax)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean.reshape(cs)) * invstd.reshape(cs) * np.asarray(scale, np.float64).reshape(cs) \
        + np.asarray(bias, np.float64).reshape(cs)
    return y, mean, var, var * m / (m - 1), invstd


def forward_eval(x, scale, bias, mean, var, eps):
    x = np.asarray(x, dtype=np.float64)
    cs = channel_shape(x)
    f = lambda v: np.asarray(v, np.float64).reshape(cs)
    return (x - f(mean)) / np.sqrt(f(var) + eps) * f(scale) + f(bias)


def backward_train(x, dy, scale, eps):
    """Returns (dx, dscale, dbias) of y = forward_train(x, ...)[0] for upstream gradient dy."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    ax, cs = axes_but_channel(x), channel_shape(x)
    m = x.size // x.shape[1]
    _, mean, var, _, invstd = forward_train(x, scale, np.zeros_like(scale), eps)
    xhat = (x - mean.reshape(cs)) * invstd.reshape(cs)
    dbias = dy.sum(axis=ax)
    dscale = (dy * xhat).sum(axis=ax)
    dx = np.asarray(scale, np.float64).reshape(cs) * invstd.reshape(cs) * (
        dy - dbias.reshape(cs) / m - xhat * dscale.reshape(cs) / m)
    return dx, dscale, dbias


def running_stats(batches, initFactor, minFactor, mean0=None, var0=None):
    """Running mean/var after training calls on each of ``batches`` (PuzzleLib's factor schedule)."""
    C = batches[0].shape[1]
    mean = np.zeros(C) if mean0 is None else np.asarray(mean0, np.float64).ravel().copy()
    var = np.ones(C) if var0 is None else np.asarray(var0, np.float64).ravel().copy()
    for n, x in enumerate(batches, start=1):
        factor = max(initFactor / n, minFactor)
        _, bm, _, bv_unbiased, _ = forward_train(x, np.ones(C), np.zeros(C), 1e-5)
        mean = (1 - factor) * mean + factor * bm
        var = (1 - factor) * var + factor * bv_unbiased
    return mean, var
