"""Channels-last data and the rows x channels kernels, on every backend and CPU path.

A channels-last module must give the channels-first module's results on the transposed data, and
both must match the independent float64 reference; the rows x channels kernels (``rows_*`` in the
kernel contract) are also checked directly on odd sizes, one channel and very wide rows.
"""

import numpy as np
import pytest
from conftest import TOLERANCES, active_backend

from batchnorm_lib import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND,
                           ModuleError, config, kernels)
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.kernels.norm import cpu_native

import reference as ref

RTOL, ATOL = TOLERANCES["float32"]

# (class, channels-first shape): odd sizes, not multiples of 4 or 32
MODULES = [
    (lambda c, **kw: BatchNorm1D(c, **kw), (5, 7, 11)),
    (lambda c, **kw: BatchNorm2D(c, **kw), (3, 37, 5, 9)),
    (lambda c, **kw: BatchNorm3D(c, **kw), (2, 3, 5, 3, 7)),
    (lambda c, **kw: BatchNormND(4, c, **kw), (2, 5, 3, 1, 5, 2)),
]
MODULE_IDS = ["BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "BatchNormND4"]


def last(a):
    """Channels-first array -> the same values channels-last (C-contiguous)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def first(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def _pair(factory, C, rng, **kw):
    """A channels-first and a channels-last module with the same parameters."""
    cf, cl = factory(C, **kw), factory(C, layout="channels_last", **kw)
    scale = rng.uniform(0.5, 1.5, cf.scale.shape).astype(np.float32)
    bias = rng.normal(0, 1, cf.bias.shape).astype(np.float32)
    for bn in (cf, cl):
        bn.scale.set(scale)
        bn.bias.set(bias)
    return cf, cl, scale.ravel(), bias.ravel()


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    expected = np.asarray(expected, np.float64)
    atol = atol * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("factory,shape", MODULES, ids=MODULE_IDS)
def test_channels_last_train_matches_transposed(where, rng, factory, shape):
    C = shape[1]
    cf, cl, scale, bias = _pair(factory, C, rng)
    x = rng.normal(1.5, 2.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    for step in range(2):  # the running statistics over two calls
        y_cf = cf(gpuarray.to_gpu(x)).get()
        y_cl = cl(gpuarray.to_gpu(last(x))).get()
        dx_cf = cf.backward(gpuarray.to_gpu(dy)).get()
        dx_cl = cl.backward(gpuarray.to_gpu(last(dy))).get()

    assert y_cl.shape == last(x).shape and cl.scale.shape == cf.scale.shape
    _close(first(y_cl), y_cf)
    _close(first(dx_cl), dx_cf)
    for name in ("savemean", "saveinvvar", "mean", "var"):
        _close(getattr(cl, name).get(), getattr(cf, name).get())
    for name in ("scale", "bias"):
        _close(cl.vars[name].grad.get(), cf.vars[name].grad.get())

    # and the independent float64 reference, on the channels-first view of the data
    y, mean, var, _, invstd = ref.forward_train(x, scale, bias, cl.epsilon)
    dxr, dsr, dbr = ref.backward_train(x, dy, scale, cl.epsilon)
    rm, rv = ref.running_stats([x, x], cl.initFactor, cl.minFactor)
    _close(first(y_cl), y)
    _close(cl.savemean.get().ravel(), mean)
    _close(cl.saveinvvar.get().ravel(), invstd)
    _close(cl.mean.get().ravel(), rm)
    _close(cl.var.get().ravel(), rv)
    _close(first(dx_cl), dxr)
    _close(cl.vars["scale"].grad.get().ravel(), dsr)  # one backward per step, no accumulation
    _close(cl.vars["bias"].grad.get().ravel(), dbr)


@pytest.mark.parametrize("factory,shape", MODULES, ids=MODULE_IDS)
def test_channels_last_eval_matches_transposed(where, rng, factory, shape):
    C = shape[1]
    cf, cl, scale, bias = _pair(factory, C, rng)
    run_mean = rng.normal(0, 1, cf.mean.shape).astype(np.float32)
    run_var = rng.uniform(0.5, 2.0, cf.var.shape).astype(np.float32)
    for bn in (cf, cl):
        bn.mean.set(run_mean)
        bn.var.set(run_var)
        bn.evalMode()
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    y_cl = cl(gpuarray.to_gpu(last(x))).get()
    dx_cl = cl.backward(gpuarray.to_gpu(last(dy))).get()
    _close(first(y_cl), cf(gpuarray.to_gpu(x)).get())
    _close(first(dx_cl), cf.backward(gpuarray.to_gpu(dy)).get())
    _close(first(y_cl), ref.forward_eval(x, scale, bias, run_mean.ravel(), run_var.ravel(),
                                         cl.epsilon))
    k = scale / np.sqrt(run_var.ravel().astype(np.float64) + cl.epsilon)
    _close(dx_cl, last(dy) * k)


def test_channels_last_inplace_eval(where, rng):
    bn = BatchNorm2D(5, layout="channels_last", inplace=True)
    bn.evalMode()
    x = rng.normal(0.5, 2.0, (3, 4, 7, 5)).astype(np.float32)
    data = gpuarray.to_gpu(x)
    out = bn(data)
    expected = last(ref.forward_eval(first(x), bn.scale.get().ravel(), np.zeros(5), np.zeros(5),
                                     np.ones(5), bn.epsilon))
    _close(data.get(), expected)
    _close(out.get(), expected)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_batchnorm_nc_either_layout(where, rng, layout):
    """(N, C) data is rows x channels whatever the layout says."""
    bn = BatchNorm(13, layout=layout)
    x = rng.normal(-2.0, 3.0, (29, 13)).astype(np.float32)
    dy = rng.normal(0.0, 1.0, (29, 13)).astype(np.float32)
    scale = bn.scale.get().ravel()
    y = bn(gpuarray.to_gpu(x)).get()
    dx = bn.backward(gpuarray.to_gpu(dy)).get()
    _close(y, ref.forward_train(x, scale, np.zeros(13), bn.epsilon)[0])
    _close(dx, ref.backward_train(x, dy, scale, bn.epsilon)[0])


# -- the rows x channels kernels, directly ---------------------------------------------------------

ROWS = [
    (2, 3),           # two rows
    (7, 5),
    (1000, 1),        # one channel
    (3001, 129),      # several row parts (CPU) and splits (CUDA), odd tail of the vectors
    (20000, 37),      # many parts
    (5, 4099),        # wider than one channel chunk, odd
    (3, 13, 7, 33),   # channels-last 4-D, seen as 273 rows
    (301, 132),       # whole 16-byte packs of float32 along C (the CUDA _vec entries)
    (9, 5, 3, 20),
]
ROWS_CPU_ONLY = [(3, 65536), (130, 65536),  # very wide rows (on the simulator: (5, 4099) above)
                 (9, 1024), (7, 2056)]      # 4 and 2 rows per elementwise step, rows left over


def _rows_run(shape, x, dy, scale, bias, eps=1e-5, factor=0.25, dtype=np.float32):
    """The four rows_* kernels through the dispatch; host float64 copies of what they wrote."""
    C = shape[-1]
    ops = kernels.norm.ops()
    ps = (1, C, 1, 1)
    f32 = lambda a: gpuarray.to_gpu(np.asarray(a, np.float32).reshape(ps))  # noqa: E731
    sc, bi, rm, rv = f32(scale), f32(bias), f32(np.zeros(C)), f32(np.ones(C))
    xd, gd = gpuarray.to_gpu(x.astype(dtype)), gpuarray.to_gpu(dy.astype(dtype))
    out, dx = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    sm, si, ds, db = (gpuarray.empty(ps, np.float32) for _ in range(4))
    ops.rows_forward_train(xd, sc, bi, rm, rv, eps, factor, out, sm, si)
    ops.rows_backward_train(xd, gd, sc, sm, si, dx, ds, db)
    res = {"y": out.get(), "mean": sm.get().ravel(), "invstd": si.get().ravel(),
           "rm": rm.get().ravel(), "rv": rv.get().ravel(), "dx": dx.get(),
           "dscale": ds.get().ravel(), "dbias": db.get().ravel()}
    inf, dxi = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    ops.rows_forward_infer(xd, sc, bi, rm, rv, eps, inf)
    ops.rows_backward_infer(gd, sc, rv, eps, dxi)
    res.update(infer=inf.get(), dx_infer=dxi.get())
    return {k: np.asarray(v, np.float64) for k, v in res.items()}


def _rows_reference(x, dy, scale, bias, eps=1e-5, factor=0.25):
    C = x.shape[-1]
    xc, gc = x.reshape(-1, C).T[None], dy.reshape(-1, C).T[None]  # (1, C, R) channels first
    y, mean, var, uvar, invstd = ref.forward_train(xc, scale, bias, eps)
    dx, dscale, dbias = ref.backward_train(xc, gc, scale, eps)
    rm, rv = factor * mean, (1 - factor) + factor * uvar
    infer = ref.forward_eval(xc, scale, bias, rm, rv, eps)
    k = scale / np.sqrt(rv + eps)
    back = lambda a: a[0].T.reshape(x.shape)  # noqa: E731
    return {"y": back(y), "mean": mean, "invstd": invstd, "rm": rm, "rv": rv, "dx": back(dx),
            "dscale": dscale, "dbias": dbias, "infer": back(infer),
            "dx_infer": dy * k.astype(np.float64)}


def _check_rows(where, shape, rng, loc=0.7, sd=1.9):
    x = rng.normal(loc, sd, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    C = shape[-1]
    scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bias = rng.normal(0, 1, C).astype(np.float32)
    got = _rows_run(shape, x, dy, scale, bias)
    want = _rows_reference(x.astype(np.float64), dy.astype(np.float64), scale, bias)
    for k in want:
        _close(got[k], want[k], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape", ROWS, ids=["x".join(map(str, s)) for s in ROWS])
def test_rows_kernels_match_reference(where, rng, shape):
    _check_rows(where, shape, rng)


@pytest.mark.parametrize("shape", ROWS_CPU_ONLY, ids=["x".join(map(str, s)) for s in ROWS_CPU_ONLY])
def test_rows_kernels_wide_rows(cpu_where, rng, shape):
    _check_rows(cpu_where, shape, rng)


@pytest.mark.parametrize("shape", [(4001, 19), (300, 7, 5, 3)])
def test_rows_kernels_far_from_zero(where, rng, shape):
    """1e4 + N(0, 1), also after leading rows of zero padding and sorted down the rows: every tile
    of rows far from its neighbours' mean, and sum(x^2) - sum(x)^2 would lose the variance."""
    C = shape[-1]
    scale, bias = np.ones(C, np.float32), np.zeros(C, np.float32)
    x = (1e4 + rng.normal(0, 1, shape)).astype(np.float32)
    padded = x.copy()
    padded[: shape[0] // 4] = 0.0
    dy = rng.normal(0, 1, shape).astype(np.float32)
    for data in (x, padded, np.sort(padded, axis=0)):
        got = _rows_run(shape, data, dy, scale, bias)
        want = _rows_reference(data.astype(np.float64), dy.astype(np.float64), scale, bias)
        _close(got["invstd"], want["invstd"], rtol=1e-5, atol=0)
        _close(got["mean"], want["mean"], rtol=1e-6, atol=0)
        # y is x - mean32 scaled: the float32 rounding of the mean (ulp(1e4) / 2) bounds its error
        np.testing.assert_allclose(got["y"], want["y"], rtol=2e-5,
                                   atol=1e-3 * float(got["invstd"].max()))


def _native_bitwise_equal(rng, shape, settings):
    """Runs the rows kernels on the native path once per setting (``setting()`` is called
    first; the last entry restores) and checks that every result is bitwise the same."""
    if not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    x = rng.normal(3, 2, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, shape[-1]), rng.normal(0, 1, shape[-1])
    *settings, restore = settings
    with active_backend("cpu"):
        previous_path = cpu_kernels.active_path()
        runs = []
        try:
            cpu_kernels.use("native", quiet=True)
            for setting in settings:
                setting()
                runs.append(_rows_run(shape, x, dy, scale, bias))
        finally:
            restore()
            cpu_kernels.use(previous_path, quiet=True)
    for other in runs[1:]:
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], other[k], err_msg=k)


@pytest.mark.parametrize("shape", [(301, 136), (40, 1024), (7, 8), (301, 129)])
def test_rows_native_streaming_stores_same_results(rng, shape):
    """Large outputs are written with non-temporal stores (rows of whole 32-byte blocks; normal
    stores for other C): bitwise the results of normal stores."""
    previous = cpu_native.rows_stream_bytes() if cpu_native.probe()[0] else None
    _native_bitwise_equal(rng, shape, [lambda: cpu_native.rows_stream_bytes(0),  # always
                                       lambda: cpu_native.rows_stream_bytes(1 << 62),  # never
                                       lambda: cpu_native.rows_stream_bytes(previous)])


@pytest.mark.parametrize("shape", [(20000, 37), (3001, 129), (130, 4099)])
def test_rows_native_independent_of_threads(rng, shape):
    """Row parts depend on the shape only and merge in a fixed order: bitwise equal results on
    1, 2 or 3 threads."""
    previous = cpu_native.get_num_threads() if cpu_native.probe()[0] else None
    _native_bitwise_equal(rng, shape, [lambda n=n: cpu_kernels.set_num_threads(n)
                                       for n in (1, 2, 3)] +
                          [lambda: cpu_kernels.set_num_threads(previous)])


def _rows_lib_run(lib, x, dy, scale, bias, relu):
    """Every rows x channels entry of a loaded library on (R, C) float32 data; its outputs."""
    import ctypes

    R, C = x.shape
    p = lambda a: a.ctypes.data  # noqa: E731
    vec = lambda v: np.array(v, np.float32)  # noqa: E731
    sc, bi, rm, rv, sm, si, ds, db = (vec(v) for v in (scale, bias, np.zeros(C), np.ones(C),
                                                         np.zeros(C), np.zeros(C), np.zeros(C),
                                                         np.zeros(C)))
    out, dx, ev, evdx = (np.empty_like(x) for _ in range(4))
    lib.bn_set_num_threads(2)
    assert lib.rc_forward_train(p(x), p(out), R, C, p(sc), p(bi), p(rm), p(rv), 1e-5, 0.3, p(sm),
                                p(si), relu) == 0
    mask = ctypes.c_void_p(p(out)) if relu else None
    assert lib.rc_backward_train(p(x), p(dy), p(dx), R, C, p(sc), p(sm), p(si), p(ds), p(db),
                                 mask) == 0
    assert lib.rc_forward_infer(p(x), p(ev), R, C, p(sc), p(bi), p(rm), p(rv), 1e-5, relu) == 0
    assert lib.rc_backward_infer(p(dy), p(evdx), R, C, p(sc), p(rv), 1e-5, mask) == 0
    return dict(y=out, dx=dx, dscale=ds, dbias=db, mean=sm, invstd=si, rm=rm, rv=rv, infer=ev,
                dx_infer=evdx)


def test_rows_native_same_bits_without_vector_instructions(rng, tmp_path):
    """The vector loops (AVX and FMA with -march=native) and the scalar loops do per channel the
    same float operations in the same order, fmaf where the vectors fuse: a library built without
    -march=native gives bitwise the same results, so they do not depend on the machine."""
    import ctypes
    import subprocess

    if not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    cc, flags = cpu_native.build_info()["compiler"], cpu_native.build_info()["flags"]
    path = str(tmp_path / "plain.so")
    cmd = [cc] + cpu_native.BASE_FLAGS + [f for f in flags if f == "-fopenmp"] + ["-o", path] \
        + cpu_native.SOURCES + ["-lm"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    plain = ctypes.CDLL(path)
    cpu_native._declare(plain)
    native = cpu_native._library()
    previous = cpu_native.get_num_threads()
    try:
        # odd C (vector and scalar channels), 4 and 2 rows per elementwise step, many row parts
        for shape in [(3001, 37), (9, 1024), (77, 1031), (20000, 24)]:
            x = rng.normal(5, 2, shape).astype(np.float32)
            dy = rng.normal(0, 1, shape).astype(np.float32)
            scale, bias = rng.uniform(-1.5, 1.5, shape[1]), rng.normal(0, 1, shape[1])
            for relu in (0, 1):
                want = _rows_lib_run(native, x, dy, scale, bias, relu)
                got = _rows_lib_run(plain, x, dy, scale, bias, relu)
                for k in want:
                    np.testing.assert_array_equal(got[k], want[k], err_msg="%s %s relu=%d"
                                                  % (shape, k, relu))
    finally:
        cpu_native.set_num_threads(previous)


def test_rows_simulator_vector_path_and_repeatable(rng):
    """C a multiple of the pack width takes the 16-byte entries; two runs are bitwise equal."""
    from batchnorm_lib.kernels.norm import cuda as cuda_kernels

    with active_backend("cudasim"):
        shape = (2001, 36)
        x = rng.normal(3, 2, shape).astype(np.float32)
        dy = rng.normal(0, 1, shape).astype(np.float32)
        assert cuda_kernels._rows_vector(36, np.float32, gpuarray.to_gpu(x))[0] == "_vec"
        scale, bias = rng.uniform(0.5, 1.5, 36), rng.normal(0, 1, 36)
        runs = [_rows_run(shape, x, dy, scale, bias) for _ in range(2)]
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(37, 45), (3, 5, 7, 24), (6, 5, 11), (301, 264)])
def test_rows_16bit_on_simulator(rng, dtype, shape):
    """float16 / bfloat16 data, float32 statistics, on the simulated GPU."""
    with active_backend("cudasim"):
        dt = np.dtype(dtype) if dtype == "float16" else np.dtype(__import__("ml_dtypes").bfloat16)
        if dt not in config.backend_module().supported_dtypes():
            pytest.skip("%s is not supported on cudasim here" % dtype)
        C = shape[-1]
        x = rng.normal(0.5, 2.0, shape).astype(dt)
        dy = rng.normal(0.0, 1.0, shape).astype(dt)
        scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
        bias = rng.normal(0, 1, C).astype(np.float32)
        got = _rows_run(shape, x.astype(np.float32), dy.astype(np.float32), scale, bias, dtype=dt)
        want = _rows_reference(x.astype(np.float64), dy.astype(np.float64), scale, bias)
        rtol, atol = TOLERANCES[dtype]
        for k in want:
            _close(got[k], want[k], rtol=rtol, atol=atol)


# -- refusals, save/load ---------------------------------------------------------------------------

def test_layout_refused_at_construction(where):
    for bad in ("NHWC", "channels-last", None, 1):
        with pytest.raises(ModuleError, match="layout"):
            BatchNorm2D(3, layout=bad)


def _snapshot(bn):
    arrays = {n: v.data.get() for n, v in bn.vars.items()}
    arrays.update({n: a.get() for n, a in bn.attrs.items() if a is not None})
    return arrays, bn.numOfProps, id(bn.inData), id(bn.data), id(bn.savemean)


def _same(a, b):
    assert a[1:] == b[1:]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)


@pytest.mark.parametrize("shape,match", [
    ((3, 5, 7, 4), r"5 channels on axis 3 \(\(N, H, W, C\), layout='channels_last'\)"),  # NCHW data
    ((3, 7, 5), r"expects 4-D data \(N, H, W, C\), layout='channels_last'"),
    ((3, 7, 5, 5, 5), r"expects 4-D data \(N, H, W, C\)"),
])
def test_mismatched_shape_names_layout(where, rng, shape, match):
    bn = BatchNorm2D(5, layout="channels_last")
    bn(gpuarray.to_gpu(rng.normal(0, 1, (3, 4, 7, 5)).astype(np.float32)))
    before = _snapshot(bn)
    with pytest.raises(ModuleError, match=match):
        bn(gpuarray.to_gpu(rng.normal(0, 1, shape).astype(np.float32)))
    _same(before, _snapshot(bn))
    with pytest.raises(ModuleError, match="grad shape"):
        bn.backward(gpuarray.to_gpu(rng.normal(0, 1, (3, 5, 4, 7)).astype(np.float32)))
    _same(before, _snapshot(bn))


def test_channels_first_message_unchanged(where, rng):
    bn = BatchNorm1D(5)
    with pytest.raises(ModuleError, match=r"expects 5 channels on axis 1, got shape"):
        bn(gpuarray.to_gpu(rng.normal(0, 1, (3, 7, 5)).astype(np.float32)))


def test_save_load_across_layouts(where, rng, tmp_path):
    """Parameter and statistics shapes do not depend on the layout: a file saved by a
    channels-last module loads into a channels-first one and gives the same outputs."""
    cl = BatchNorm3D(3, layout="channels_last")
    x = rng.normal(1, 2, (2, 3, 5, 3, 7)).astype(np.float32)
    cl(gpuarray.to_gpu(last(x)))
    cl.vars["scale"].data.set(rng.uniform(0.5, 1.5, cl.scale.shape).astype(np.float32))
    path = str(tmp_path / "bn.hdf")
    cl.save(path)
    cf = BatchNorm3D(3, name=cl.name)
    cf.load(path)
    for name in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(getattr(cf, name).get(), getattr(cl, name).get())
    cl.evalMode()
    cf.evalMode()
    _close(first(cl(gpuarray.to_gpu(last(x))).get()), cf(gpuarray.to_gpu(x)).get())


def test_cpu_benchmark_layout_rows(capsys):
    """The CPU benchmark times channels-last rows with their own label, (N, C) data once."""
    from batchnorm_lib.bench import cpu as bench_cpu

    argv = ["--shape", "6,3,5,5", "--shape", "9,4", "--layout", "both", "--rounds", "1",
            "--per-round", "1", "--warmup", "0", "--threads", "1", "--pass", "train"]
    try:
        import torch  # noqa: F401
    except ImportError:
        argv.append("--no-torch")
    assert bench_cpu.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = [tuple(line.split()[:2]) for line in lines if line.startswith(("6x3x5x5", "9x4"))]
    assert labels == [("6x3x5x5", "NCHW"), ("6x3x5x5", "NHWC"), ("9x4", "NC")]
