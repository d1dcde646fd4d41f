"""Batch normalization on the CPU backend, numpy path (any machine, no compiler needed).

Statistics are a shifted two-pass in float64: the mean first, then the mean of squared deviations
from it, so data far from zero (``1e4 + N(0, 1)``) keeps its variance. Results go out as float32.
The per-channel constants are computed in float64 and rounded once, as in the compiled path
(bn_cpu.c) and the CUDA kernels; their fused multiply-adds ``fmaf(a, b, c)`` are evaluated here as
``a * b + c`` in float64 (the product of two float32 values is exact there) rounded to float32, which
equals ``fmaf`` except when the float64 sum falls exactly on a float32 rounding boundary.
"""

import functools

import numpy as np

from batchnorm_lib.backend.cpu import as_ndarray


def _quiet(fn):
    """Non-finite data propagates as in PyTorch (NaN statistics, +-Inf outputs): numpy's warnings
    about it would only repeat what the results say, and the other paths do not warn."""
    @functools.wraps(fn)
    def wrapper(*args):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args)
    return wrapper


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


def _correction(v):
    """A rounding-level correction term, or 0 where it is not finite: with an Inf in dy the result
    is PyTorch's formula without it, not the Inf - Inf = NaN the correction would add."""
    return np.where(np.isfinite(v), v, 0.0)


def _factor(scale, var, eps):
    """``scale / sqrt(var + eps)`` per channel in float64, rounded once to float32."""
    var = np.asarray(var, np.float64)
    return (np.asarray(scale, np.float64) / np.sqrt(var + eps)).astype(np.float32)


def _fma(a, b, c, out):
    """``fmaf(a, b, c)`` of float32 operands into the float32 ``out`` (see the module doc)."""
    t = a.astype(np.float64)
    t *= b
    t += c
    out[...] = t


def _normalize(x3, mean, a, bias, o3, relu=False):
    """``o = fmaf(x - mean, a, bias)``, the form every backend uses: subtracting the mean first
    keeps values equal to it exactly zero. ``relu``: then ``o = 0 where o <= 0`` (NaN is not
    <= 0 and stays; -0 becomes +0)."""
    xmu = np.subtract(x3, _channel(mean.astype(np.float32)), dtype=np.float32)
    _fma(xmu, _channel(a.astype(np.float32)), _channel(bias.astype(np.float32)), o3)
    if relu:
        np.copyto(o3, np.float32(0), where=o3 <= 0)


def _masked(dy3, y):
    """The gradient through the fused relu: ``dy`` where the forward's output ``y`` is not <= 0,
    else 0 (a NaN output passes its gradient); ``dy3`` itself when there is no ``y``."""
    if y is None:
        return dy3
    return np.where(_view3(y).reshape(dy3.shape) <= 0, np.float32(0), dy3)


@_quiet
def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                  relu=False):
    x3 = _view3(x)
    m = x3.shape[0] * x3.shape[2]
    mean, var = batch_stats(x3)

    _normalize(x3, mean, _factor(_flat(scale), var, eps), _flat(bias), _view3(out), relu)

    _flat(savemean)[:] = mean
    _flat(saveinvvar)[:] = 1.0 / np.sqrt(var + eps)
    rm, rv = _flat(run_mean), _flat(run_var)
    rm[:] = (1.0 - factor) * rm.astype(np.float64) + factor * mean
    rv[:] = (1.0 - factor) * rv.astype(np.float64) + factor * (var * (m / (m - 1)))


@_quiet
def forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    a = _factor(_flat(scale), _flat(run_var), eps)
    _normalize(_view3(x), _flat(run_mean), a, _flat(bias), _view3(out), relu)


@_quiet
def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    x3 = _view3(x)
    dy3 = _masked(_view3(dy), y)
    m = x3.shape[0] * x3.shape[2]
    mean32 = _flat(savemean)
    invstd = _flat(saveinvvar).astype(np.float64)

    # x - mean in float32 is exact for values near the mean (Sterbenz), so data far from zero
    # keeps its small deviations; the products and sums are float64. r = mean(x - mean) is the
    # exact batch mean's offset from the float32 savemean: the gradients are the exact mean's.
    xmu = x3 - _channel(mean32)
    sum_dy = dy3.sum(axis=(0, 2), dtype=np.float64)
    sum_dy_xmu = np.einsum("ncs,ncs->c", dy3, xmu, dtype=np.float64)
    r = xmu.sum(axis=(0, 2), dtype=np.float64) / m
    gb = sum_dy
    gs = (sum_dy_xmu - _correction(r * sum_dy)) * invstd
    _flat(dbias)[:] = gb
    _flat(dscale)[:] = gs

    if dx is not None:
        # dx = k * (dy - gb / m - xhat * gs / m) = fmaf(dy, k, -fmaf(x - mean, c1, c0)); keeping
        # (x - mean) whole avoids the cancellation of x * c1 - mean * c1
        k = _flat(scale) * invstd
        c1 = k * invstd * gs / m
        c0 = k * gb / m - _correction(r * c1)
        f32 = lambda v: _channel(v.astype(np.float32))  # noqa: E731
        _fma(xmu, f32(c1), f32(c0), xmu)
        _fma(dy3, f32(k), -xmu, _view3(dx))


@_quiet
def backward_infer(dy, scale, run_var, eps, dx, y=None):
    k = _factor(_flat(scale), _flat(run_var), eps)
    np.multiply(_masked(_view3(dy), y), _channel(k.astype(np.float32)), out=_view3(dx),
                casting="same_kind")


def axpby(x, y, alpha, beta):
    yv = as_ndarray(y)
    if beta == 0:  # overwrite, so stale non-finite values in y do not survive as NaN
        np.multiply(as_ndarray(x), np.float32(alpha), out=yv)
        return
    yv *= np.float32(beta)
    yv += np.float32(alpha) * as_ndarray(x)


# -- pattern (a): statistics per contiguous row (LayerNorm, InstanceNorm2D, GroupNorm) -------------

def _rows4(a, rows, groups, spatial):
    """(R, L) data -> (R / groups, groups, L / spatial, spatial) view: sample, group, channel of
    the group, position."""
    ary = as_ndarray(a)
    return ary.reshape(rows // groups, groups, -1, spatial)


def _row_channels(v, groups):
    """Per-channel vector -> (1, groups, channels per group, 1), broadcasting over _rows4."""
    return v.reshape(1, groups, -1, 1)


def row_stats(x4):
    """Per-row mean and biased variance of a _rows4 view, in float64 (shifted two-pass)."""
    mean = x4.mean(axis=(2, 3), dtype=np.float64)
    dev = x4 - mean[:, :, None, None]
    var = np.einsum("ngcs,ngcs->ng", dev, dev) / (x4.shape[2] * x4.shape[3])
    return mean, var


def per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd):
    rows = savemean.size
    x4, o4 = _rows4(x, rows, groups, spatial), _rows4(out, rows, groups, spatial)
    mean, var = row_stats(x4)
    # 1 / sqrt(var + eps) in float64, rounded once (as per_row.cu's stats_finalize)
    invstd = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    mean32 = mean.astype(np.float32)
    _flat(savemean)[:] = mean32.ravel()
    _flat(saveinvstd)[:] = invstd.ravel()
    # o = (x - mean) * a + bias with a = scale * invstd, each step in float32 as the kernels do
    a = _row_channels(_flat(scale), groups) * invstd[:, :, None, None]
    np.subtract(x4, mean32[:, :, None, None], out=o4)
    o4 *= a
    o4 += _row_channels(_flat(bias), groups)


def per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias):
    rows = savemean.size
    x4, dy4 = _rows4(x, rows, groups, spatial), _rows4(dy, rows, groups, spatial)
    length = x4.shape[2] * x4.shape[3]
    mean32 = _flat(savemean).reshape(x4.shape[:2])
    invstd = _flat(saveinvstd).reshape(x4.shape[:2]).astype(np.float64)
    sc = _row_channels(_flat(scale), groups)

    xmu = x4 - mean32[:, :, None, None]  # float32, exact near the mean (Sterbenz)
    sum_dy = dy4.sum(axis=3, dtype=np.float64)  # per (sample, group, channel)
    sum_dy_xmu = np.einsum("ngcs,ngcs->ngc", dy4, xmu, dtype=np.float64)
    _flat(dbias)[:] = sum_dy.sum(axis=0).ravel()
    _flat(dscale)[:] = (sum_dy_xmu * invstd[:, :, None]).sum(axis=0).ravel()

    if dx is not None:
        # g = dy * scale; dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) per row
        #    = (dy * k - c0) - (x - mean) * c1, k = scale * invstd, in float32
        s2 = sc[..., 0].astype(np.float64)
        sum_g = (sum_dy * s2).sum(axis=2)
        sum_g_xmu = (sum_dy_xmu * s2).sum(axis=2)
        c0 = (invstd * sum_g / length).astype(np.float32)[:, :, None, None]
        c1 = (invstd ** 3 * sum_g_xmu / length).astype(np.float32)[:, :, None, None]
        k = sc * invstd.astype(np.float32)[:, :, None, None]
        dx4 = _rows4(dx, rows, groups, spatial)
        np.multiply(dy4, k, out=dx4)
        dx4 -= c0
        xmu *= c1
        dx4 -= xmu


# -- rows x channels: (..., C) data is the (R, C, 1) case of the functions above ---------------------

def _rows(a):
    """(..., C) array -> (R, C, 1) view of it (None stays None)."""
    return None if a is None else a.reshape(-1, a.shape[-1], 1)


def rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                       relu=False):
    forward_train(_rows(x), scale, bias, run_mean, run_var, eps, factor, _rows(out), savemean,
                  saveinvvar, relu)


def rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    forward_infer(_rows(x), scale, bias, run_mean, run_var, eps, _rows(out), relu)


def rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    backward_train(_rows(x), _rows(dy), scale, savemean, saveinvvar, _rows(dx), dscale, dbias,
                   _rows(y))


def rows_backward_infer(dy, scale, run_var, eps, dx, y=None):
    backward_infer(_rows(dy), scale, run_var, eps, _rows(dx), _rows(y))
