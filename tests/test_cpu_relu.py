"""The CPU kernels' fused relu (both paths, compiled and numpy) against the float64 reference.

The contract (batchnorm_lib/kernels/norm/__init__.py): the forwards take ``relu=True`` and write
``relu(fmaf(x - mean, a, bias))`` with ``relu(v) = 0 if v <= 0 else v`` (NaN stays, -0 becomes
+0); the backwards take the forward's output ``y`` and use ``dy' = 0 if y <= 0 else dy`` in the
sums and in dx. Shapes reach the code paths of bn_cpu.c (short rows, long rows, one tile or several
per channel) and rows_channels_cpu.c ((N, C) and channels-last data, odd C for the vector tails).
"""

import numpy as np
import pytest
from conftest import active_backend

from batchnorm_lib import kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.kernels.norm import cpu_native

import reference as ref
from test_cpu_paths import cpu_path  # noqa: F401 (the fixture: each case on both CPU paths)

EPS = 1e-5
RTOL, ATOL = 2e-5, 2e-5

# (stored shape, rows x channels?): rows x channels data is stored (..., C)
CASES = [
    ((3, 5, 7, 9), False),        # short rows
    ((13, 6, 49), False),         # 7x7 maps
    ((2, 3, 4, 300), False),      # long rows, one tile per channel
    ((40, 2, 6001), False),       # long rows, several tiles per channel
    ((1500, 40, 7), False),       # short rows in channel groups, several tiles
    ((7, 5), True),               # (N, C)
    ((3001, 37), True),           # (N, C), odd C
    ((5, 7, 9, 13), True),        # channels last (N, H, W, C)
    ((4, 33, 72), True),          # channels last (N, L, C), C a multiple of 8
    ((9, 1024), True),            # (N, C), 4 rows per elementwise step and one left over
    ((5, 1031), True),            # (N, C), 2 rows per step, a scalar tail of 7 channels
]
IDS = ["x".join(map(str, s)) + ("-rows" if r else "") for s, r in CASES]


def _first(a, rows):
    """Stored data -> channels first (N, C, ...), as the reference takes it."""
    return np.moveaxis(a, -1, 1) if rows and a.ndim > 2 else a


def _op(name, rows):
    return getattr(kernels.norm.ops("cpu"), ("rows_" if rows else "") + name)


def _vec(v):
    return gpuarray.to_gpu(np.asarray(v, np.float32))


def _train(x, scale, bias, rows, **kw):
    C = scale.size
    rm, rv = _vec(np.zeros(C)), _vec(np.ones(C))
    out, sm, si = gpuarray.empty(x.shape, np.float32), _vec(np.zeros(C)), _vec(np.zeros(C))
    _op("forward_train", rows)(gpuarray.to_gpu(x), _vec(scale), _vec(bias), rm, rv, EPS, 0.25,
                               out, sm, si, **kw)
    return out.get(), sm.get(), si.get(), rm.get(), rv.get()


def _backward(x, dy, scale, mean, invstd, rows, with_dx=True, **kw):
    C = scale.size
    dx = gpuarray.empty(x.shape, np.float32) if with_dx else None
    ds, db = _vec(np.zeros(C)), _vec(np.zeros(C))
    if "y" in kw and kw["y"] is not None:
        kw["y"] = gpuarray.to_gpu(kw["y"])
    _op("backward_train", rows)(gpuarray.to_gpu(x), gpuarray.to_gpu(dy), _vec(scale), _vec(mean),
                                _vec(invstd), dx, ds, db, **kw)
    return (dx.get() if with_dx else None), ds.get(), db.get()


def _close(actual, expected, scale_by_max=False):
    expected = np.asarray(expected, np.float64)
    atol = ATOL * max(1.0, float(np.max(np.abs(expected)))) if scale_by_max else ATOL
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=atol)


def _data(shape, rows, rng):
    C = shape[-1] if rows else shape[1]
    x = rng.normal(0.3, 2.0, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bias = rng.normal(0, 0.5, C).astype(np.float32)
    return x, dy, scale, bias


@pytest.mark.parametrize("shape,rows", CASES, ids=IDS)
def test_train_relu_against_reference(cpu_path, shape, rows, rng):
    x, dy, scale, bias = _data(shape, rows, rng)
    y, mean, invstd, rm, rv = _train(x, scale, bias, rows, relu=True)

    ry, rmean, _, rvar_u, rinv = ref.forward_train(_first(x, rows), scale, bias, EPS)
    ry = np.maximum(ry, 0.0)
    _close(_first(y, rows), ry)
    _close(mean, rmean)
    _close(invstd, rinv)
    _close(rm, 0.25 * rmean)
    _close(rv, 0.75 + 0.25 * rvar_u)
    # clearly negative pre-activations are exactly +0, positive ones pass
    yf = _first(y, rows)
    assert np.all(yf[ry == 0.0] <= 1e-4)
    neg = (ry == 0.0) & (yf == 0.0)
    assert neg.sum() > 0.3 * y.size and not np.signbit(yf[neg]).any()
    assert np.all(yf >= 0)

    # the gradient through the relu: dy masked by the output the kernel wrote
    masked = np.where(y <= 0, np.float32(0), dy)
    dx, dscale, dbias = _backward(x, dy, scale, mean, invstd, rows, y=y)
    rdx, rdscale, rdbias = ref.backward_train(_first(x, rows), _first(masked, rows), scale, EPS)
    _close(_first(dx, rows), rdx)
    _close(dscale, rdscale, scale_by_max=True)
    _close(dbias, rdbias, scale_by_max=True)
    # the parameter gradients alone are the same numbers
    _, dscale2, dbias2 = _backward(x, dy, scale, mean, invstd, rows, with_dx=False, y=y)
    np.testing.assert_array_equal(dscale2, dscale)
    np.testing.assert_array_equal(dbias2, dbias)


@pytest.mark.parametrize("shape,rows", CASES, ids=IDS)
def test_relu_false_is_the_default_and_relu_is_fused_exactly(cpu_path, shape, rows, rng):
    x, dy, scale, bias = _data(shape, rows, rng)
    plain = _train(x, scale, bias, rows)
    off = _train(x, scale, bias, rows, relu=False)
    on = _train(x, scale, bias, rows, relu=True)
    for a, b in zip(plain, off):
        np.testing.assert_array_equal(a, b)
    # the statistics do not depend on relu; the output is relu of the plain output, bitwise
    for a, b in zip(plain[1:], on[1:]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(on[0], np.where(plain[0] <= 0, np.float32(0), plain[0]))

    _, mean, invstd = plain[:3]
    base = _backward(x, dy, scale, mean, invstd, rows)
    none = _backward(x, dy, scale, mean, invstd, rows, y=None)
    # y > 0 everywhere masks nothing: the same bits as without y
    ones = _backward(x, dy, scale, mean, invstd, rows, y=np.ones(shape, np.float32))
    for a, b, c in zip(base, none, ones):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # masking in the kernel equals masking dy beforehand, bitwise
    y = on[0]
    fused = _backward(x, dy, scale, mean, invstd, rows, y=y)
    pre = _backward(x, np.where(y <= 0, np.float32(0), dy), scale, mean, invstd, rows)
    for a, b in zip(fused, pre):
        np.testing.assert_array_equal(a, b)


def _special_values(shape, rows, rng):
    """Data hitting every case of the mask rule: exact zeros, -0, negatives, NaN, +Inf."""
    v = rng.normal(0, 1, shape).astype(np.float32)
    flat = v.reshape(-1)
    idx = rng.permutation(flat.size)
    k = max(1, flat.size // 8)
    flat[idx[:k]] = 0.0
    flat[idx[k:2 * k]] = -0.0
    flat[idx[2 * k:3 * k]] = np.nan
    flat[idx[3 * k:4 * k]] = np.inf
    return v


@pytest.mark.parametrize("shape,rows", [CASES[0], CASES[2], CASES[6], CASES[7]],
                         ids=[IDS[0], IDS[2], IDS[6], IDS[7]])
def test_inference_relu_mask_rule(cpu_path, shape, rows, rng):
    C = shape[-1] if rows else shape[1]
    cs = (1,) * (len(shape) - 1) + (C,) if rows else (1, C) + (1,) * (len(shape) - 2)
    # zero running mean, bias -0: x itself comes out (times a), with its sign of zero and NaN
    x = _special_values(shape, rows, rng)
    scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bias = np.full(C, -0.0, np.float32)
    mean, var = np.zeros(C, np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32)
    a = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + EPS)).astype(np.float32)
    args = [_vec(v) for v in (scale, bias, mean, var)]
    xd = gpuarray.to_gpu(x)
    out = gpuarray.empty(shape, np.float32)
    _op("forward_infer", rows)(xd, *args, EPS, out)
    plain = out.get()
    assert np.signbit(plain[(x == 0) & np.signbit(x)]).all()  # -0 survives without relu
    _op("forward_infer", rows)(xd, *args, EPS, out, relu=True)
    y = out.get()
    expect = x * a.reshape(cs)
    expect = np.where(expect <= 0, np.float32(0), expect)
    np.testing.assert_array_equal(y, expect)  # NaN in the same places, zeros all +0
    assert np.isnan(y[np.isnan(x)]).all() and not np.signbit(y[y == 0]).any()
    _op("forward_infer", rows)(xd, *args, EPS, xd, relu=True)  # in place
    np.testing.assert_array_equal(xd.get(), y)

    # backward: dy passes where y > 0 or y is NaN, else 0 (also a NaN or Inf dy)
    dy = _special_values(shape, rows, rng)
    dx = gpuarray.empty(shape, np.float32)
    _op("backward_infer", rows)(gpuarray.to_gpu(dy), args[0], args[3], EPS, dx,
                                y=gpuarray.to_gpu(y))
    k = a.reshape(cs)
    np.testing.assert_array_equal(dx.get(), np.where(y <= 0, np.float32(0), dy) * k)
    _op("backward_infer", rows)(gpuarray.to_gpu(dy), args[0], args[3], EPS, dx)
    np.testing.assert_array_equal(dx.get(), dy * k)


@pytest.mark.parametrize("shape,rows", [CASES[1], CASES[3], CASES[6]],
                         ids=[IDS[1], IDS[3], IDS[6]])
def test_train_relu_nan_channel(cpu_path, shape, rows, rng):
    """A NaN in a channel makes its statistics and outputs NaN; relu keeps them NaN, and the
    backward passes dy through NaN outputs."""
    x, dy, scale, bias = _data(shape, rows, rng)
    xf = _first(x, rows)
    xf[(0, 1) + (0,) * (x.ndim - 2)] = np.nan  # channel 1 (a view into x)
    y, mean, invstd, _, _ = _train(x, scale, bias, rows, relu=True)
    yf = _first(y, rows)
    assert np.isnan(yf[:, 1]).all() and not np.isnan(np.delete(yf, 1, axis=1)).any()
    dx, dscale, dbias = _backward(x, dy, scale, mean, invstd, rows, y=y)
    dyf = _first(dy, rows)
    masked = np.where(yf <= 0, 0.0, dyf.astype(np.float64))
    sum_axes = (0,) + tuple(range(2, x.ndim))
    # channel 1's dbias is the whole sum of dy (nothing masked), the others as the reference says
    np.testing.assert_allclose(dbias, masked.sum(axis=sum_axes), rtol=1e-5,
                               atol=1e-4 * np.abs(dyf).sum(axis=sum_axes).max())
    assert np.isnan(_first(dx, rows)[:, 1]).all()


def test_cpu_benchmark_relu_rows(capsys, monkeypatch):
    """--relu times the bn+relu rows on the --shape shapes, both layouts."""
    from batchnorm_lib.bench import cpu as bench_cpu

    monkeypatch.setattr(bench_cpu, "WARMUP_SECONDS", 0.0)
    argv = ["--relu", "--shape", "6,3,5,5", "--shape", "9,4", "--layout", "both", "--rounds", "1",
            "--per-round", "1", "--warmup", "0", "--threads", "1", "--no-naive"]
    try:
        import torch  # noqa: F401
    except ImportError:
        argv.append("--no-torch")
    assert bench_cpu.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("bn+relu ")]
    assert sorted({(r[1], r[2]) for r in rows}) == [("6x3x5x5", "NCHW"), ("6x3x5x5", "NHWC"),
                                                    ("9x4", "NC")]
    assert len(rows) == 3 * len(bench_cpu.PASSES)
    if "--no-torch" not in argv:
        diff = float(out.rsplit("relative to max |value|): ", 1)[1].split()[0])
        assert diff < 1e-4

