"""The CPU backend's two kernel paths (compiled C and numpy) against the float64 reference.

Every case runs once per path (``cpu_path`` fixture); the compiled path is skipped with its reason
where it cannot build. Shapes are picked to reach each code path of bn_cpu.c: long rows (S >= 256)
and short rows, channels that fit one cache tile (single read) and channels split into several
tiles (partial results merged), sizes that are not multiples of the vector width.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import active_backend

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, config, kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.kernels.norm import cpu_native

import reference as ref

RTOL, ATOL = 2e-5, 2e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = [
    (2, 3),              # two values per channel
    (7, 5),
    (5000, 37),          # short rows, one tile per channel
    (30000, 9),          # short rows, several row tiles per channel
    (1500, 40, 7),       # short rows in channel groups, several row tiles
    (3, 5, 7, 9),
    (2, 1, 17),          # one channel
    (13, 6, 49),         # 7x7 maps
    (4, 3, 255),
    (3, 4, 257),         # just past the long-row threshold, odd tail
    (2, 3, 4, 300),      # long rows in one tile
    (40, 2, 6001),       # long rows, several row tiles per channel
    (2, 2, 3, 3, 31),
]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


@pytest.fixture
def cpu_backend():
    """Arrays made in the test are CPU arrays, whatever backend the process started with."""
    with active_backend("cpu"):
        yield


@pytest.fixture(params=cpu_kernels.PATHS)
def cpu_path(request):
    name = request.param
    if name == "native":
        ok, reason = cpu_native.probe()
        if not ok:
            pytest.skip("native CPU kernels unavailable: %s" % reason)
    previous_backend = config.get_backend()
    previous_path = cpu_kernels.active_path()
    config.set_backend("cpu")
    cpu_kernels.use(name, quiet=True)
    yield name
    cpu_kernels.use(previous_path, quiet=True)
    config.set_backend(previous_backend)


def _params(C, rng):
    return (rng.uniform(0.5, 1.5, C).astype(np.float32), rng.normal(0, 1, C).astype(np.float32))


def _run_train(x, scale, bias, eps=1e-5, factor=0.25, rm0=None, rv0=None):
    """forward_train through the dispatch; returns host copies of everything it wrote."""
    C = x.shape[1]
    ops = kernels.norm.ops("cpu")
    ps = (1, C, 1, 1)
    rm = gpuarray.to_gpu((np.zeros(C) if rm0 is None else rm0).astype(np.float32).reshape(ps))
    rv = gpuarray.to_gpu((np.ones(C) if rv0 is None else rv0).astype(np.float32).reshape(ps))
    xd = gpuarray.to_gpu(x)
    out = gpuarray.empty(x.shape, np.float32)
    sm, si = gpuarray.empty(ps, np.float32), gpuarray.empty(ps, np.float32)
    ops.forward_train(xd, gpuarray.to_gpu(scale.reshape(ps)), gpuarray.to_gpu(bias.reshape(ps)),
                      rm, rv, eps, factor, out, sm, si)
    return {"y": out.get(), "mean": sm.get().ravel(), "invstd": si.get().ravel(),
            "rm": rm.get().ravel(), "rv": rv.get().ravel()}


def _run_backward(x, dy, scale, mean, invstd, with_dx=True):
    C = x.shape[1]
    ops = kernels.norm.ops("cpu")
    ps = (1, C, 1, 1)
    dx = gpuarray.empty(x.shape, np.float32) if with_dx else None
    ds, db = gpuarray.empty(ps, np.float32), gpuarray.empty(ps, np.float32)
    ops.backward_train(gpuarray.to_gpu(x), gpuarray.to_gpu(dy), gpuarray.to_gpu(scale.reshape(ps)),
                       gpuarray.to_gpu(mean.reshape(ps)), gpuarray.to_gpu(invstd.reshape(ps)),
                       dx, ds, db)
    return (dx.get() if with_dx else None), ds.get().ravel(), db.get().ravel()


def _close(actual, expected, rtol=RTOL, atol=ATOL, scale_by_max=False):
    expected = np.asarray(expected, np.float64)
    if scale_by_max:  # sums: error relative to the largest magnitude in the vector
        atol = atol * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# -- kernels against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_forward_train(cpu_path, shape, rng):
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    scale, bias = _params(shape[1], rng)
    got = _run_train(x, scale, bias, factor=0.25)
    y, mean, var, var_unbiased, invstd = ref.forward_train(x, scale, bias, 1e-5)
    _close(got["y"], y)
    _close(got["mean"], mean)
    _close(got["invstd"], invstd)
    _close(got["rm"], 0.25 * mean)
    _close(got["rv"], 0.75 + 0.25 * var_unbiased)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_backward_train(cpu_path, shape, rng):
    x = rng.normal(-0.3, 1.5, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = _params(shape[1], rng)
    fwd = _run_train(x, scale, bias)
    dx, dscale, dbias = _run_backward(x, dy, scale, fwd["mean"], fwd["invstd"])
    rdx, rdscale, rdbias = ref.backward_train(x, dy, scale, 1e-5)
    _close(dx, rdx, atol=1e-4 if x.size // shape[1] <= 3 else ATOL)
    _close(dscale, rdscale, scale_by_max=True)
    _close(dbias, rdbias, scale_by_max=True)

    # without dx only the parameter gradients are computed, and they are the same
    none_dx, dscale2, dbias2 = _run_backward(x, dy, scale, fwd["mean"], fwd["invstd"], False)
    assert none_dx is None
    np.testing.assert_array_equal(dscale2, dscale)
    np.testing.assert_array_equal(dbias2, dbias)


def _frozen_case(shape, rng, loc):
    """Data, gradient, parameters and running statistics, and the four per-channel arrays as
    device arrays (scale, bias, mean, var), for the frozen-statistics kernels."""
    C = shape[1]
    x = rng.normal(loc, 3.0, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = _params(C, rng)
    mean = rng.normal(0, 1, C).astype(np.float32)
    var = rng.uniform(0.2, 4.0, C).astype(np.float32)
    args = [gpuarray.to_gpu(v.reshape(1, C, 1, 1)) for v in (scale, bias, mean, var)]
    return x, dy, scale, bias, mean, var, args


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_inference(cpu_path, shape, rng):
    C = shape[1]
    x, dy, scale, bias, mean, var, args = _frozen_case(shape, rng, 1.0)
    ops = kernels.norm.ops("cpu")
    xd = gpuarray.to_gpu(x)
    out = gpuarray.empty(shape, np.float32)
    ops.forward_infer(xd, *args, 1e-5, out)
    _close(out.get(), ref.forward_eval(x, scale, bias, mean, var, 1e-5))

    ops.forward_infer(xd, *args, 1e-5, xd)  # in place
    np.testing.assert_array_equal(xd.get(), out.get())

    dx = gpuarray.empty(shape, np.float32)
    ops.backward_infer(gpuarray.to_gpu(dy), args[0], args[3], 1e-5, dx)
    cs = (1, C) + (1,) * (len(shape) - 2)
    expect = dy.astype(np.float64) * (scale / np.sqrt(var.astype(np.float64) + 1e-5)).reshape(cs)
    _close(dx.get(), expect)


# Short rows (16 <= S < 256) in the elementwise passes run as one stream across the (n, c) rows:
# vectors straddle row boundaries, and in these shapes the last whole vector straddles one with a
# tail after it (21 x 17 = 357 values per sample: the vector at 336 spans the row starting at 340).
SHORT_ROWS = [(1, 21, 17), (3, 7, 17), (5, 3, 33), (2, 9, 196), (3, 5, 16), (3, 13, 255)]


@pytest.mark.parametrize("shape", SHORT_ROWS, ids=_ids(SHORT_ROWS))
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_inference_short_rows_across_boundaries(cpu_path, shape, relu, rng):
    C = shape[1]
    x, dy, scale, bias, mean, var, args = _frozen_case(shape, rng, 0.5)
    ops = kernels.norm.ops("cpu")
    out = gpuarray.empty(shape, np.float32)
    ops.forward_infer(gpuarray.to_gpu(x), *args, 1e-5, out, relu=relu)
    expect = ref.forward_eval(x, scale, bias, mean, var, 1e-5)
    _close(out.get(), np.maximum(expect, 0.0) if relu else expect)

    y = out.get() if relu else None
    dx = gpuarray.empty(shape, np.float32)
    ops.backward_infer(gpuarray.to_gpu(dy), args[0], args[3], 1e-5, dx,
                       y=None if y is None else gpuarray.to_gpu(y))
    g = np.where(y > 0, dy, 0.0) if relu else dy.astype(np.float64)
    expect = g * (scale / np.sqrt(var.astype(np.float64) + 1e-5)).reshape(1, C, 1)
    _close(dx.get(), expect)


def test_large_offset_keeps_variance(cpu_path, rng):
    """1e4 + N(0, 1) in float32: sum(x^2) - sum(x)^2 would lose the variance entirely."""
    for shape in [(64, 3, 40, 40), (4096, 5), (256, 7, 49)]:
        x = (1e4 + rng.normal(0, 1, shape)).astype(np.float32)
        scale, bias = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
        got = _run_train(x, scale, bias)
        _, mean, var, _, invstd = ref.forward_train(x, scale, bias, 1e-5)
        _close(got["invstd"], invstd, rtol=1e-5)
        _close(got["mean"], mean, rtol=1e-7, atol=0)
        # the output is x - mean32 scaled: float32 mean rounding (ulp(1e4)/2) bounds its error
        y = ref.forward_train(x, scale, bias, 1e-5)[0]
        _close(got["y"], y, atol=1e-3)


@pytest.mark.parametrize("shape", [(4000, 3), (300, 4, 300), (600, 3, 7, 7)],
                         ids=_ids([(4000, 3), (300, 4, 300), (600, 3, 7, 7)]))
def test_awkward_data(cpu_path, shape, rng):
    """Zero padding before data far from zero, and sorted data: tiles whose first values are far
    from their mean must still give the right statistics."""
    x = (1e4 + rng.normal(0, 1, shape)).astype(np.float32)
    x[: shape[0] // 4] = 0.0  # leading rows of padding
    scale, bias = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
    for data in (x, np.sort(x, axis=0)):
        got = _run_train(data, scale, bias)
        _, mean, var, _, invstd = ref.forward_train(data, scale, bias, 1e-5)
        _close(got["invstd"], invstd, rtol=1e-5)
        _close(got["mean"], mean, rtol=1e-6)


def test_constant_channel(cpu_path):
    x = np.full((5, 2, 33), 3.25, np.float32)
    x[:, 1] = -7.0
    got = _run_train(x, np.ones(2, np.float32), np.array([0.5, -1.5], np.float32))
    np.testing.assert_array_equal(got["y"][:, 0], 0.5)  # values equal to the mean give the bias
    np.testing.assert_array_equal(got["y"][:, 1], -1.5)
    np.testing.assert_allclose(got["invstd"], 1 / np.sqrt(1e-5), rtol=1e-6)


def test_axpby(cpu_path, rng):
    ops = kernels.norm.ops("cpu")
    x = rng.normal(0, 1, 37).astype(np.float32)
    y0 = rng.normal(0, 1, 37).astype(np.float32)
    y = gpuarray.to_gpu(y0)
    ops.axpby(gpuarray.to_gpu(x), y, 0.5, -2.0)
    _close(y.get(), 0.5 * x.astype(np.float64) - 2.0 * y0)
    y.fill(np.nan)
    ops.axpby(gpuarray.to_gpu(x), y, 3.0, 0.0)  # beta == 0 overwrites, NaN does not survive
    _close(y.get(), 3.0 * x.astype(np.float64))


# -- modules on both paths --------------------------------------------------------------------------

@pytest.mark.parametrize("cls,shape", [(BatchNorm, (300, 70)), (BatchNorm1D, (6, 4, 130)),
                                       (BatchNorm2D, (4, 3, 17, 19))],
                         ids=["BatchNorm", "BatchNorm1D", "BatchNorm2D"])
def test_module_train_steps(cpu_path, cls, shape, rng):
    C = shape[1]
    bn = cls(C, initFactor=1.0, minFactor=0.2)
    scale, bias = _params(C, rng)
    bn.scale.set(scale.reshape(bn.scale.shape))
    bn.bias.set(bias.reshape(bn.bias.shape))
    batches = [rng.normal(i, 1 + i, shape).astype(np.float32) for i in range(3)]
    for x in batches:
        y = bn(gpuarray.to_gpu(x)).get()
    _close(y, ref.forward_train(batches[-1], scale, bias, 1e-5)[0])
    rmean, rvar = ref.running_stats(batches, 1.0, 0.2)
    _close(bn.mean.get().ravel(), rmean)
    _close(bn.var.get().ravel(), rvar)

    dy = rng.normal(0, 1, shape).astype(np.float32)
    dx = bn.backward(gpuarray.to_gpu(dy)).get()
    rdx, rds, rdb = ref.backward_train(batches[-1], dy, scale, 1e-5)
    _close(dx, rdx)
    _close(bn.vars["scale"].grad.get().ravel(), rds, scale_by_max=True)
    _close(bn.vars["bias"].grad.get().ravel(), rdb, scale_by_max=True)

    bn.evalMode()
    _close(bn(gpuarray.to_gpu(batches[0])).get(),
           ref.forward_eval(batches[0], scale, bias, rmean, rvar, 1e-5))


# -- the paths agree, and the compiled one does not depend on its thread count -----------------------

def _native_or_skip():
    ok, reason = cpu_native.probe()
    if not ok:
        pytest.skip("native CPU kernels unavailable: %s" % reason)


@pytest.mark.parametrize("shape", [(3000, 41), (64, 12, 7, 7), (9, 5, 61, 60), (40, 2, 6001)],
                         ids=_ids([(3000, 41), (64, 12, 7, 7), (9, 5, 61, 60), (40, 2, 6001)]))
def test_paths_agree(shape, rng, cpu_backend):
    _native_or_skip()
    x = rng.normal(0.2, 1.3, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = _params(shape[1], rng)
    previous = cpu_kernels.active_path()
    results = {}
    try:
        for path in cpu_kernels.PATHS:
            cpu_kernels.use(path, quiet=True)
            fwd = _run_train(x, scale, bias)
            results[path] = (fwd["y"], fwd["mean"], fwd["invstd"]) + \
                _run_backward(x, dy, scale, fwd["mean"], fwd["invstd"])
    finally:
        cpu_kernels.use(previous, quiet=True)
    for a, b in zip(results["native"], results["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("shape", [(5000, 37), (40, 2, 6001), (1500, 40, 7), (30000, 9)],
                         ids=_ids([(5000, 37), (40, 2, 6001), (1500, 40, 7), (30000, 9)]))
def test_native_result_independent_of_threads(shape, rng, cpu_backend):
    """Partial results merge in a fixed order: bitwise the same on 1, 2 or 3 threads."""
    _native_or_skip()
    x = rng.normal(3, 2, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = _params(shape[1], rng)
    previous_path = cpu_kernels.active_path()
    previous_threads = cpu_native.get_num_threads()
    runs = []
    try:
        cpu_kernels.use("native", quiet=True)
        for threads in (1, 2, 3):
            cpu_kernels.set_num_threads(threads)
            fwd = _run_train(x, scale, bias)
            runs.append([fwd["y"], fwd["mean"], fwd["invstd"], fwd["rv"],
                         *_run_backward(x, dy, scale, fwd["mean"], fwd["invstd"])])
    finally:
        cpu_kernels.set_num_threads(previous_threads)
        cpu_kernels.use(previous_path, quiet=True)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


# -- choosing the path --------------------------------------------------------------------------------

def _python(code, **env):
    full = dict(os.environ)
    full.pop("BATCHNORM_LIB_CPU_KERNELS", None)
    full.update(env)
    full["PYTHONPATH"] = REPO + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=300)


_PROGRAM = """
import logging, numpy as np
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from batchnorm_lib import BatchNorm, config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu
config.set_backend("cpu")
bn = BatchNorm(6)
y = bn(gpuarray.to_gpu(np.arange(18, dtype=np.float32).reshape(3, 6)))
print("PATH", cpu.active_path(), float(bn.var.get().ravel()[0]))
"""


def test_numpy_path_chosen_by_env():
    proc = _python(_PROGRAM, BATCHNORM_LIB_CPU_KERNELS="numpy")
    assert proc.returncode == 0, proc.stderr
    assert "PATH numpy 36.0" in proc.stdout
    lines = [l for l in proc.stderr.splitlines() if "CPU kernels" in l]
    assert len(lines) == 1 and "numpy" in lines[0], proc.stderr


def test_without_compiler_auto_falls_back_and_says_why(tmp_path):
    proc = _python(_PROGRAM, CC=str(tmp_path / "no-such-cc"), BATCHNORM_LIB_CACHE=str(tmp_path),
                   BATCHNORM_LIB_CPU_KERNELS="auto")
    assert proc.returncode == 0, proc.stderr
    assert "PATH numpy 36.0" in proc.stdout
    lines = [l for l in proc.stderr.splitlines() if "CPU kernels" in l]
    assert len(lines) == 1, proc.stderr
    assert "numpy" in lines[0] and "no C compiler" in lines[0]


def test_native_requested_without_compiler_raises(tmp_path):
    proc = _python(_PROGRAM, CC=str(tmp_path / "no-such-cc"), BATCHNORM_LIB_CACHE=str(tmp_path),
                   BATCHNORM_LIB_CPU_KERNELS="native")
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and "no C compiler" in proc.stderr


def test_native_path_logs_one_line():
    _native_or_skip()
    proc = _python(_PROGRAM, BATCHNORM_LIB_CPU_KERNELS="auto")
    assert proc.returncode == 0, proc.stderr
    assert "PATH native 36.0" in proc.stdout
    lines = [l for l in proc.stderr.splitlines() if "CPU kernels" in l]
    assert len(lines) == 1 and "native" in lines[0] and "OpenMP" in lines[0], proc.stderr


def test_unknown_choice_is_refused():
    with pytest.raises(config.BackendError, match="not a CPU kernel path"):
        cpu_kernels.use("fortran")


# -- the benchmark runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, bound", [("--rounds", "0", ">= 1"),
                                                   ("--per-round", "-1", ">= 1"),
                                                   ("--threads", "0", ">= 1"),
                                                   ("--warmup", "-1", ">= 0")])
def test_cpu_benchmark_refuses_counts_out_of_range(option, value, bound, capsys):
    """A count that would leave nothing to time is refused by the parser, naming the option."""
    from batchnorm_lib.bench import cpu as bench_cpu

    with pytest.raises(SystemExit) as exit_info:
        bench_cpu.build_parser().parse_args([option, value])
    assert exit_info.value.code == 2
    assert "argument %s: must be an integer %s" % (option, bound) in capsys.readouterr().err


def test_cpu_benchmark_smoke(capsys):
    from batchnorm_lib.bench import cpu as bench_cpu

    argv = ["--shape", "6,3,5,5", "--shape", "9,4", "--rounds", "1", "--per-round", "1",
            "--warmup", "0", "--threads", "1"]
    try:
        import torch  # noqa: F401
    except ImportError:
        argv.append("--no-torch")
    assert bench_cpu.main(argv) == 0
    out = capsys.readouterr().out
    assert "6x3x5x5" in out and "9x4" in out and "naive ms" in out
    if "--no-torch" not in argv:
        assert "geomean torch/ours" in out
