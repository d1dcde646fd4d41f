"""Non-temporal stores in the compiled CPU kernels: large outputs that are not written in place go
out with streaming stores (whole 64-byte lines; heads and tails of runs normally). Forcing them on
(threshold 0) and off must give bitwise the same results, on every code path of bn_cpu.c (with and
without the fused relu) and per_row_cpu.c (LayerNorm, InstanceNorm2D, GroupNorm rows).
"""

import numpy as np
import pytest
from conftest import active_backend

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.kernels.norm import cpu_native
from test_cpu_relu import CASES, EPS, IDS, _backward, _data, _op, _train, _vec  # noqa: E402


def _native_runs(fn):
    """fn() with streaming stores forced on, then off, on the native path."""
    if not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    previous = cpu_native.rows_stream_bytes()
    with active_backend("cpu"):
        previous_path = cpu_kernels.active_path()
        runs = []
        try:
            cpu_kernels.use("native", quiet=True)
            for threshold in (0, 1 << 62):  # always, never
                cpu_native.rows_stream_bytes(threshold)
                runs.append(fn())
        finally:
            cpu_native.rows_stream_bytes(previous)
            cpu_kernels.use(previous_path, quiet=True)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def _all_outputs(x, dy, scale, bias, rows, relu):
    """Every output of the four kernels, training and frozen statistics, with and without relu."""
    y, mean, invstd, rm, rv = _train(x, scale, bias, rows, relu=relu)
    mask = {"y": y} if relu else {}
    dx, dscale, dbias = _backward(x, dy, scale, mean, invstd, rows, **mask)
    C = scale.size
    args = [_vec(v) for v in (scale, bias, mean, rv)]
    inf, idx = gpuarray.empty(x.shape, np.float32), gpuarray.empty(x.shape, np.float32)
    _op("forward_infer", rows)(gpuarray.to_gpu(x), *args, EPS, inf, relu=relu)
    _op("backward_infer", rows)(gpuarray.to_gpu(dy), args[0], args[3], EPS, idx,
                                y=gpuarray.to_gpu(y) if relu else None)
    assert C == mean.size
    return [y, mean, invstd, rm, rv, dx, dscale, dbias, inf.get(), idx.get()]


@pytest.mark.parametrize("shape,rows", [c for c in CASES if not c[1]] + [((9, 5, 61, 60), False)],
                         ids=[i for c, i in zip(CASES, IDS) if not c[1]] + ["9x5x61x60"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_native_streaming_stores_same_results(shape, rows, relu, rng):
    """Batch norm on NCHW data, every code path of bn_cpu.c."""
    x, dy, scale, bias = _data(shape, rows, rng)
    _native_runs(lambda: _all_outputs(x, dy, scale, bias, rows, relu))


# (data shape, groups, spatial, parameter count): LayerNorm rows not a whole number of lines,
# InstanceNorm2D rows of 3660, GroupNorm rows of 2 channels x 63
PER_ROW = [((301, 1003), 1, 1, 1003), ((3, 5, 61, 60), 5, 3660, 5), ((4, 6, 7, 9), 3, 63, 6)]


@pytest.mark.parametrize("shape,groups,spatial,nparams", PER_ROW,
                         ids=["layernorm", "instancenorm", "groupnorm"])
def test_native_streaming_stores_same_results_per_row(shape, groups, spatial, nparams, rng):
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, nparams).astype(np.float32)
    bias = rng.normal(0, 0.5, nparams).astype(np.float32)
    rows = shape[0] * groups if spatial > 1 else shape[0]  # LayerNorm: one row per sample here

    def run():
        ops = cpu_kernels
        out, dx = gpuarray.empty(shape, np.float32), gpuarray.empty(shape, np.float32)
        sm, si = _vec(np.zeros(rows)), _vec(np.zeros(rows))
        ds, db = _vec(np.zeros(nparams)), _vec(np.zeros(nparams))
        xd, sc = gpuarray.to_gpu(x), _vec(scale)
        ops.per_row_forward(xd, sc, _vec(bias), groups, spatial, EPS, out, sm, si)
        ops.per_row_backward(xd, gpuarray.to_gpu(dy), sc, sm, si, groups, spatial, dx, ds, db)
        return [out.get(), sm.get(), si.get(), dx.get(), ds.get(), db.get()]

    _native_runs(run)
