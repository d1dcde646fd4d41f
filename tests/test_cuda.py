"""CUDA-only cases: the kernels of kernels/norm/batchnorm.cu through kernels/norm/cuda.py, on the ``cuda``
backend (real GPU) and the ``cudasim`` backend (the same sources compiled for the host), against the
independent float64 reference. Shapes are small and odd so they also run on the simulator."""

import numpy as np
import pytest

from batchnorm_lib import BatchNorm2D, config, kernels
from batchnorm_lib.backend import gpuarray
from conftest import TOLERANCES, active_backend

import reference as ref

CUDA_BACKENDS = ("cuda", "cudasim")


@pytest.fixture(params=CUDA_BACKENDS)
def cuda_backend(request):
    with active_backend(request.param) as name:
        yield name


def runtime():
    return config.backend_module().runtime()


def dtype_of(name):
    if name == "bfloat16":
        from batchnorm_lib.backend.cuda.core import bfloat16_dtype

        return bfloat16_dtype()
    return np.dtype(name)


def channel(v):
    return gpuarray.to_gpu(np.asarray(v, np.float32).reshape(1, -1))


def params(rng, c):
    return rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 1, c).astype(np.float32)


def run_forward_train(x_dev, scale, bias, eps=1e-5, factor=0.3, run_mean=None, run_var=None):
    c = x_dev.shape[1]
    rm = channel(np.zeros(c) if run_mean is None else run_mean)
    rv = channel(np.ones(c) if run_var is None else run_var)
    out = gpuarray.empty(x_dev.shape, x_dev.dtype)
    savemean, saveinvvar = gpuarray.empty((1, c), np.float32), gpuarray.empty((1, c), np.float32)
    kernels.norm.ops().forward_train(x_dev, channel(scale), channel(bias), rm, rv, eps, factor, out,
                                savemean, saveinvvar)
    return out, savemean, saveinvvar, rm, rv


def check_forward_train(x, scale, bias, dtype=np.float32, factor=0.3):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    xd = x.astype(dtype)
    out, savemean, saveinvvar, rm, rv = run_forward_train(gpuarray.to_gpu(xd), scale, bias,
                                                          factor=factor)
    x64 = xd.astype(np.float64)
    y, mean, var, var_unb, invstd = ref.forward_train(x64, scale, bias, 1e-5)
    assert out.dtype == np.dtype(dtype) and out.shape == x.shape
    np.testing.assert_allclose(out.get().astype(np.float64), y, rtol=rtol, atol=atol)
    np.testing.assert_allclose(savemean.get().ravel(), mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(saveinvvar.get().ravel(), invstd, rtol=2e-5)
    np.testing.assert_allclose(rm.get().ravel(), factor * mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(rv.get().ravel(), (1 - factor) + factor * var_unb, rtol=2e-5)


def check_backward(x, dy, scale, dtype=np.float32, with_dx=True):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    xd, dyd = x.astype(dtype), dy.astype(dtype)
    x_dev = gpuarray.to_gpu(xd)
    c = x.shape[1]
    _, savemean, saveinvvar, _, _ = run_forward_train(x_dev, scale, np.zeros(c, np.float32))
    dx = gpuarray.empty(x.shape, x_dev.dtype) if with_dx else None
    dscale, dbias = gpuarray.empty((1, c), np.float32), gpuarray.empty((1, c), np.float32)
    kernels.norm.ops().backward_train(x_dev, gpuarray.to_gpu(dyd), channel(scale), savemean, saveinvvar,
                                 dx, dscale, dbias)
    rdx, rdscale, rdbias = ref.backward_train(xd.astype(np.float64), dyd.astype(np.float64),
                                              scale, 1e-5)
    m = x.size // c
    sum_tol = 2e-5 * np.sqrt(m) * 4  # float32 sums of m terms of size ~1
    np.testing.assert_allclose(dbias.get().ravel(), rdbias, rtol=2e-5, atol=sum_tol)
    np.testing.assert_allclose(dscale.get().ravel(), rdscale, rtol=2e-5, atol=sum_tol)
    if with_dx:
        scale_dx = np.abs(rdx).max() + 1e-30
        np.testing.assert_allclose(dx.get().astype(np.float64), rdx, rtol=rtol,
                                   atol=atol * max(1.0, scale_dx))


# Odd sizes: not multiples of 4, 32 or the 256-thread block, one and many channels, 1x1 spatial,
# and a few that take the 16-byte vector path (spatial size a multiple of 4 / 8).
SHAPES = [
    (7, 5),             # BatchNorm(size): spatial size 1 (column kernels)
    (1000, 37),         # spatial size 1, several row slices, a partial 32-channel block
    (70, 33, 1, 1),     # 1x1 spatial, more than 32 channels
    (3, 1, 33),         # one channel
    (5, 3, 1, 1),       # 1x1 spatial
    (2, 300, 3),        # many channels (several channels per finalize block)
    (3, 5, 7, 9),
    (2, 3, 5, 3, 7),
    (4, 3, 8, 8),       # vector path for float32 and float16
    (3, 2, 257),        # one past a block
    (9, 2, 4099),       # several blocks per channel
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_train_odd_sizes(cuda_backend, rng, shape):
    scale, bias = params(rng, shape[1])
    check_forward_train(rng.normal(1.0, 3.0, shape).astype(np.float32), scale, bias)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_odd_sizes(cuda_backend, rng, shape):
    scale, _ = params(rng, shape[1])
    x = rng.normal(1.0, 3.0, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    check_backward(x, dy, scale)


def test_backward_without_dx(cuda_backend, rng):
    shape = (3, 4, 13)
    scale, _ = params(rng, 4)
    check_backward(rng.normal(0, 1, shape), rng.normal(0, 1, shape), scale, with_dx=False)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 3, 16), (5, 1)], ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_forward_infer(cuda_backend, rng, shape, inplace):
    c = shape[1]
    scale, bias = params(rng, c)
    mean, var = rng.normal(0, 1, c), rng.uniform(0.5, 2.0, c)
    x = rng.normal(0, 2, shape).astype(np.float32)
    xd = gpuarray.to_gpu(x)
    out = xd if inplace else gpuarray.empty(shape, np.float32)
    kernels.norm.ops().forward_infer(xd, channel(scale), channel(bias), channel(mean), channel(var),
                                1e-5, out)
    expect = ref.forward_eval(x, scale, bias, mean.astype(np.float32), var.astype(np.float32), 1e-5)
    np.testing.assert_allclose(out.get(), expect, rtol=2e-5, atol=2e-5)
    if not inplace:
        np.testing.assert_array_equal(xd.get(), x)


def test_infer_matches_cpu_bitwise(cuda_backend, rng):
    """Inference and frozen-statistics backward round each step as the CPU backend does."""
    shape, c = (3, 4, 5, 6), 4
    scale, bias = params(rng, c)
    mean, var = rng.normal(0, 1, c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    x = rng.normal(0, 2, shape).astype(np.float32)
    results = {}
    for name in ("cpu", cuda_backend):
        config.set_backend(name)
        out, dx = gpuarray.empty(shape, np.float32), gpuarray.empty(shape, np.float32)
        ops = kernels.norm.ops()
        ops.forward_infer(gpuarray.to_gpu(x), channel(scale), channel(bias), channel(mean),
                          channel(var), 1e-5, out)
        ops.backward_infer(gpuarray.to_gpu(x), channel(scale), channel(var), 1e-5, dx)
        results[name] = (out.get(), dx.get())
    for a, b in zip(results["cpu"], results[cuda_backend]):
        np.testing.assert_array_equal(a, b)


def test_backward_infer(cuda_backend, rng):
    shape, c = (3, 5, 11), 5
    scale, _ = params(rng, c)
    var = rng.uniform(0.5, 2, c)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    dx = gpuarray.empty(shape, np.float32)
    kernels.norm.ops().backward_infer(gpuarray.to_gpu(dy), channel(scale), channel(var), 1e-5, dx)
    expect = dy * (scale / np.sqrt(var.astype(np.float32) + 1e-5)).reshape(1, c, 1)
    np.testing.assert_allclose(dx.get(), expect, rtol=2e-6)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_axpby(cuda_backend, rng, beta):
    x = rng.normal(0, 1, 1001).astype(np.float32)
    y0 = rng.normal(0, 1, 1001).astype(np.float32)
    if beta == 0.0:
        y0[::7] = np.nan  # stale values must not survive an overwrite
    y = gpuarray.to_gpu(y0)
    kernels.norm.ops().axpby(gpuarray.to_gpu(x), y, 0.5, beta)
    expect = np.float32(0.5) * x if beta == 0 else np.float32(beta) * y0 + np.float32(0.5) * x
    np.testing.assert_array_equal(y.get(), expect)


def test_large_spatial(cuda_backend, rng):
    shape = (1, 2, 300_001)
    scale, bias = params(rng, 2)
    x = rng.normal(-2.0, 0.5, shape).astype(np.float32)
    check_forward_train(x, scale, bias)
    check_backward(x, rng.normal(0, 1, shape).astype(np.float32), scale)


def test_large_offset(cuda_backend, rng):
    """1e4 + N(0, 1): shifted Welford keeps the variance in float32."""
    x = (1e4 + rng.normal(0, 1, (16, 3, 97))).astype(np.float32)
    _, savemean, saveinvvar, _, rv = run_forward_train(gpuarray.to_gpu(x), np.ones(3, np.float32),
                                                       np.zeros(3, np.float32), factor=1.0)
    _, mean, var, var_unb, invstd = ref.forward_train(x.astype(np.float64), np.ones(3),
                                                      np.zeros(3), 1e-5)
    np.testing.assert_allclose(savemean.get().ravel(), mean, rtol=1e-7)
    np.testing.assert_allclose(saveinvvar.get().ravel(), invstd, rtol=1e-4)
    np.testing.assert_allclose(rv.get().ravel(), var_unb, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (4, 3, 16), (2, 2, 1031)], ids=str)
def test_low_precision(cuda_backend, rng, dtype, shape):
    dt = dtype_of(dtype)
    if dt is None or dt not in config.backend_module().supported_dtypes():
        pytest.skip("%s not supported on the %s backend here" % (dtype, cuda_backend))
    scale, bias = params(rng, shape[1])
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    check_forward_train(x, scale, bias, dtype=dt)
    check_backward(x, rng.normal(0, 1, shape).astype(np.float32), scale, dtype=dt)


def test_module_float16(cuda_backend, rng):
    bn = BatchNorm2D(3)
    bn.calcMode(np.float16)
    x = rng.normal(0, 1, (2, 3, 5, 5)).astype(np.float16)
    out = bn(gpuarray.to_gpu(x))
    assert out.dtype == np.float16
    y = ref.forward_train(x.astype(np.float64), bn.scale.get().ravel(), bn.bias.get().ravel(),
                          1e-5)[0]
    np.testing.assert_allclose(out.get().astype(np.float64), y, rtol=2e-3, atol=2e-3)


def test_vector_and_scalar_paths_agree(cuda_backend, rng):
    """A data pointer off 16-byte alignment takes the scalar path; results must match."""
    shape = (3, 2, 8, 4)
    x = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = params(rng, 2)
    api = runtime().api
    base = gpuarray.zeros((x.size + 1,), np.float32)
    shifted = api.gpuarray.GPUArray(shape, np.float32, gpudata=int(base.ptr) + 4)
    assert int(shifted.ptr) % 16 != 0
    shifted.set(x)
    scalar = run_forward_train(shifted, scale, bias)
    vector = run_forward_train(gpuarray.to_gpu(x), scale, bias)
    for a, b in zip(scalar, vector):
        np.testing.assert_allclose(a.get(), b.get(), rtol=1e-5, atol=1e-6)
    y = ref.forward_train(x.astype(np.float64), scale, bias, 1e-5)[0]
    np.testing.assert_allclose(scalar[0].get(), y, rtol=2e-5, atol=2e-5)
    del base


def test_determinism(cuda_backend, rng):
    """Fixed-order merges: two runs give bitwise equal results."""
    shape = (9, 3, 1027)
    x = rng.normal(3, 2, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale, bias = params(rng, 3)

    def once():
        xd = gpuarray.to_gpu(x)
        out, savemean, saveinvvar, rm, rv = run_forward_train(xd, scale, bias)
        dx = gpuarray.empty(shape, np.float32)
        dscale, dbias = gpuarray.empty((1, 3), np.float32), gpuarray.empty((1, 3), np.float32)
        kernels.norm.ops().backward_train(xd, gpuarray.to_gpu(dy), channel(scale), savemean,
                                     saveinvvar, dx, dscale, dbias)
        return [a.get() for a in (out, savemean, saveinvvar, rm, rv, dx, dscale, dbias)]

    for a, b in zip(once(), once()):
        assert a.tobytes() == b.tobytes()


def test_pycuda_arrays_mix(cuda_backend, rng):
    """Arrays made by the array module directly (its default allocator) work in our modules."""
    api = runtime().api
    x = rng.normal(0, 1, (4, 3, 5)).astype(np.float32)
    theirs = api.gpuarray.to_gpu(x)
    assert isinstance(theirs, gpuarray.GPUArray)
    from batchnorm_lib import BatchNorm1D

    out = BatchNorm1D(3)(theirs)
    assert isinstance(out, api.gpuarray.GPUArray)
    y = ref.forward_train(x.astype(np.float64), np.ones(3), np.zeros(3), 1e-5)[0]
    np.testing.assert_allclose(out.get(), y, rtol=0.1, atol=0.1)  # scale ~ N(1, 0.01)


def test_compile_error_carries_log(cuda_backend):
    from batchnorm_lib.backend.cuda.core import KernelCompileError

    rt = runtime()
    source = 'extern "C" __global__ void broken(float* p)\n{\n    p[0] = undefined_name_42;\n}\n'
    with pytest.raises(KernelCompileError) as info:
        rt.source_module("broken.cu", source, rt.arch())
    assert "undefined_name_42" in str(info.value)


def test_kernel_report(cuda_backend):
    report = config.backend_module().kernel_report()
    assert "batchnorm.cu" in report and " s;" in report and "cache" in report


def chunked_stats(a, chunk=1 << 26):
    """float64 mean and biased variance of a long 1-D array, a chunk at a time."""
    total = sum(a[i:i + chunk].sum(dtype=np.float64) for i in range(0, a.size, chunk))
    mean = total / a.size
    sq = sum(((a[i:i + chunk].astype(np.float64) - mean) ** 2).sum()
             for i in range(0, a.size, chunk))
    return mean, sq / a.size


@pytest.mark.slow
def test_over_2_31_elements(cuda_backend, rng):
    """64-bit indexing: a float16 tensor of 2^31 + 6 elements, channel 1 ending past 2^31."""
    if cuda_backend == "cudasim":
        pytest.skip("too large for the simulator")
    rt = runtime()
    if rt.device.total_memory() < 24 * 2 ** 30:
        pytest.skip("needs 24 GiB of device memory")
    shape = (1, 2, 2 ** 30 + 3)
    x = np.empty(shape, np.float16)
    x[0, 0] = np.resize(rng.normal(0, 1, 1 << 16).astype(np.float16), shape[2])
    x[0, 1] = np.resize(np.arange(1000, dtype=np.float16), shape[2])
    scale, bias = np.ones(2, np.float32), np.zeros(2, np.float32)
    xd = gpuarray.to_gpu(x)
    out, savemean, saveinvvar, _, _ = run_forward_train(xd, scale, bias, factor=1.0)
    mean, var = np.array([chunked_stats(x[0, c]) for c in range(2)]).T
    np.testing.assert_allclose(savemean.get().ravel(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saveinvvar.get().ravel(), 1 / np.sqrt(var + 1e-5), rtol=1e-4)
    tail = out.get()[0, 1, -4096:].astype(np.float64)
    expect = (x[0, 1, -4096:].astype(np.float64) - mean[1]) / np.sqrt(var[1] + 1e-5)
    np.testing.assert_allclose(tail, expect, rtol=2e-3, atol=2e-3)
    dx = gpuarray.empty(shape, np.float16)
    dscale, dbias = gpuarray.empty((1, 2), np.float32), gpuarray.empty((1, 2), np.float32)
    kernels.norm.ops().backward_train(xd, out, channel(scale), savemean, saveinvvar, dx, dscale, dbias)
    # dy = y gives dbias = sum(y) ~ 0, dscale = sum(y * xhat) ~ m, and dx ~ 0
    m = shape[2]
    np.testing.assert_allclose(dscale.get().ravel(), m, rtol=1e-3)
    assert np.abs(dbias.get()).max() < 1e-3 * m
    assert np.abs(dx.get()[0, 1, -4096:].astype(np.float32)).max() < 1e-2
