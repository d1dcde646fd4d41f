"""Batch normalization on the CPU backend, numpy path (any machine, no compiler needed).

Statistics are a shifted two-pass in float64: the mean first, then the mean of squared deviations
from it, so data far from zero (``1e4 + N(0, 1)``) keeps its variance. Results go out as float32.
The per-channel constants and the order of the float32 elementwise steps are the ones the compiled
path (bn_cpu.c) uses, so both paths give the same results up to the order of the float64 sums.
"""

import numpy as np

from batchnorm_lib.backend.cpu import as_ndarray


def _nd(a):
    return as_ndarray(a)


def _view3(a):
    """(N, C, *spatial) -> (N, C, S) view."""
    ary = as_ndarray(a)
    return ary.reshape(ary.shape[0], ary.shape[1], -1)


def _flat(a):
    return as_ndarray(a).reshape(-1)


def _channel(v):
    return v.reshape(1, -1, 1)


def batch_stats(x3):
    """Per-channel mean and biased variance of an (N, C, S) array, in float64."""
    mean = x3.mean(axis=(0, 2), dtype=np.float64)
    dev = x3 - _channel(mean)
    var = np.einsum("ncs,ncs->c", dev, dev) / (x3.shape[0] * x3.shape[2])
    return mean, var


def _invstd(var, eps):
    """``1 / sqrt(var + eps)`` in float32, each step correctly rounded, as the CUDA kernels do."""
    var32 = np.asarray(var, dtype=np.float32)
    return np.float32(1.0) / np.sqrt(var32 + np.float32(eps))


def _normalize(x3, mean, a, bias, o3):
    """``o = (x - mean) * a + bias`` in float32, the form every backend uses: subtracting the mean
    first keeps values equal to it exactly zero."""
    np.subtract(x3, _channel(mean.astype(np.float32)), out=o3)
    o3 *= _channel(a.astype(np.float32))
    o3 += _channel(bias.astype(np.float32))


def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar):
    x3 = _view3(x)
    m = x3.shape[0] * x3.shape[2]
    mean, var = batch_stats(x3)
    invstd = _invstd(var, eps)

    _normalize(x3, mean, _flat(scale) * invstd, _flat(bias), _view3(out))

    _flat(savemean)[:] = mean
    _flat(saveinvvar)[:] = invstd
    rm, rv = _flat(run_mean), _flat(run_var)
    rm[:] = (1.0 - factor) * rm + factor * mean
    rv[:] = (1.0 - factor) * rv + factor * var * (m / (m - 1))


def forward_infer(x, scale, bias, run_mean, run_var, eps, out):
    a = _flat(scale) * _invstd(_flat(run_var), eps)
    _normalize(_view3(x), _flat(run_mean), a, _flat(bias), _view3(out))


def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias):
    x3, dy3 = _view3(x), _view3(dy)
    m = x3.shape[0] * x3.shape[2]
    mean32 = _flat(savemean)
    invstd = _flat(saveinvvar).astype(np.float64)

    # x - mean in float32 is exact for values near the mean (Sterbenz), so data far from zero
    # keeps its small deviations; the products and sums are float64
    xmu = x3 - _channel(mean32)
    sum_dy = dy3.sum(axis=(0, 2), dtype=np.float64)
    sum_dy_xmu = np.einsum("ncs,ncs->c", dy3, xmu, dtype=np.float64)
    gb = sum_dy
    gs = sum_dy_xmu * invstd
    _flat(dbias)[:] = gb
    _flat(dscale)[:] = gs

    if dx is not None:
        # dx = k * (dy - gb / m - xhat * gs / m) = (dy * k - c0) - (x - mean) * c1, in float32;
        # keeping (x - mean) whole avoids the cancellation of x * c1 - mean * c1
        k = _flat(scale) * invstd
        c1 = k * invstd * gs / m
        c0 = k * gb / m
        dx3 = _view3(dx)
        np.multiply(dy3, _channel(k.astype(np.float32)), out=dx3, casting="same_kind")
        dx3 -= _channel(c0.astype(np.float32))
        xmu *= _channel(c1.astype(np.float32))
        dx3 -= xmu


def backward_infer(dy, scale, run_var, eps, dx):
    k = _flat(scale) * _invstd(_flat(run_var), eps)
    np.multiply(_view3(dy), _channel(k.astype(np.float32)), out=_view3(dx), casting="same_kind")


def axpby(x, y, alpha, beta):
    yv = as_ndarray(y)
    if beta == 0:  # overwrite, so stale non-finite values in y do not survive as NaN
        np.multiply(as_ndarray(x), np.float32(alpha), out=yv)
        return
    yv *= np.float32(beta)
    yv += np.float32(alpha) * as_ndarray(x)


# -- rows x channels: (..., C) data is the (R, C, 1) case of the functions above -------------------

def _rows(a):
    """(..., C) array -> (R, C, 1) view of it (None stays None)."""
    return None if a is None else a.reshape(-1, a.shape[-1], 1)


def rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar):
    forward_train(_rows(x), scale, bias, run_mean, run_var, eps, factor, _rows(out), savemean,
                  saveinvvar)


def rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out):
    forward_infer(_rows(x), scale, bias, run_mean, run_var, eps, _rows(out))


def rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias):
    backward_train(_rows(x), _rows(dy), scale, savemean, saveinvvar, _rows(dx), dscale, dbias)


def rows_backward_infer(dy, scale, run_var, eps, dx):
    backward_infer(_rows(dy), scale, run_var, eps, _rows(dx))
