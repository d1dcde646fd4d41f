"""The CUDA simulator itself: its execution model on tiny kernels, its pycuda surface, its launch
errors, and that it catches real bugs planted in copies of the batch-norm kernels."""

import os
import re
import shutil

import numpy as np
import pytest

from batchnorm_lib import config

ok, why = config.probe("cudasim")
if not ok:
    pytest.skip("cudasim unavailable: %s" % why, allow_module_level=True)

from batchnorm_lib.backend import cudasim  # noqa: E402
from batchnorm_lib.backend.cudasim import compiler, driver, gpuarray, tools  # noqa: E402

driver.init()


# the tests here that run the project's kernels as they are; CI runs them under the sanitizer too
KERNEL_TESTS = ("test_unmodified_copy_passes", "test_every_16bit_kernel_against_reference")


@pytest.fixture(autouse=True)
def _plain_simulator(request, monkeypatch):
    """The other tests show what the plain simulator does with buggy kernels (wrong results,
    poison), so they run without the sanitizer, which would report the bugs first
    (tests/test_cudasim_sanitizer.py)."""
    if request.function.__name__ not in KERNEL_TESTS:
        monkeypatch.delenv("BATCHNORM_LIB_CUDASIM_SANITIZE", raising=False)


def module(src, **kw):
    kw.setdefault("no_extern_c", True)
    return compiler.SourceModule(src, **kw)


def arr(host):
    return gpuarray.to_gpu(np.ascontiguousarray(host))


# -- barriers and shared memory -------------------------------------------------------------------
TREE_SUM = r"""
extern "C" __global__ void tree_sum(const float* x, float* out)
{
    __shared__ float s[256];
    s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        BARRIER;
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}
"""


def test_barrier_tree_reduction():
    f = module(TREE_SUM.replace("BARRIER", "__syncthreads()")).get_function("tree_sum")
    x = np.arange(4 * 256, dtype=np.float32) % 7
    out = gpuarray.zeros(4, np.float32)
    f(arr(x).gpudata, out.gpudata, block=(256, 1, 1), grid=(4, 1))
    np.testing.assert_array_equal(out.get(), x.reshape(4, 256).sum(axis=1))


def test_missing_barrier_gives_wrong_result():
    f = module(TREE_SUM.replace("BARRIER", "(void)0")).get_function("tree_sum")
    x = np.arange(4 * 256, dtype=np.float32) % 7
    out = gpuarray.zeros(4, np.float32)
    f(arr(x).gpudata, out.gpudata, block=(256, 1, 1), grid=(4, 1))
    assert not np.array_equal(out.get(), x.reshape(4, 256).sum(axis=1))


def test_portable_ucontext_fibers():
    """The swapcontext path other architectures take gives the same results."""
    opts = ["-DCUDASIM_USE_UCONTEXT"]
    f = module(TREE_SUM.replace("BARRIER", "__syncthreads()"), options=opts).get_function("tree_sum")
    x = np.arange(2 * 256, dtype=np.float32) % 5
    out = gpuarray.zeros(2, np.float32)
    f(arr(x).gpudata, out.gpudata, block=(256, 1, 1), grid=(2, 1))
    np.testing.assert_array_equal(out.get(), x.reshape(2, 256).sum(axis=1))
    g = module(SHUFFLES, options=opts).get_function("shuffles")
    v = np.arange(64, dtype=np.int32) * 3
    res = gpuarray.zeros(4 * 64, np.int32)
    g(arr(v).gpudata, res.gpudata, np.int32(3), np.int32(16), block=(64, 1, 1), grid=(1, 1))
    np.testing.assert_array_equal(res.get(), _shuffle_model(v, 3, 16))


def test_stack_overflow_is_reported():
    src = r"""
    __device__ __noinline__ float deep(volatile float* p, int n)
    {
        volatile float big[1024];
        big[n & 1023] = p[0];
        return n == 0 ? big[0] : deep(p, n - 1) + big[(n * 7) & 1023];
    }
    extern "C" __global__ void recurse(float* x, int n) { x[threadIdx.x] = deep(x, n); }
    """
    _launch_error(src, "recurse", gpuarray.zeros(64, np.float32).gpudata, np.int32(100000),
                  match="stack overflow")


def test_syncthreads_count_and_or():
    src = r"""
    extern "C" __global__ void votes(int* out)
    {
        int c = __syncthreads_count(threadIdx.x % 3 == 0);
        int a = __syncthreads_and(threadIdx.x < 1000);
        int o = __syncthreads_or(threadIdx.x == 77);
        if (threadIdx.x == 0) { out[0] = c; out[1] = a; out[2] = o; }
    }
    """
    f = module(src).get_function("votes")
    out = gpuarray.zeros(3, np.int32)
    f(out.gpudata, block=(100, 1, 1), grid=(1, 1))
    assert list(out.get()) == [34, 1, 1]


def test_dynamic_and_static_shared_memory():
    src = r"""
    template <typename T>
    __device__ T rotate(T v)
    {
        __shared__ T tile[64];                     // static, inside a template
        extern __shared__ __align__(16) unsigned char raw[];
        T* dyn = reinterpret_cast<T*>(raw);
        tile[threadIdx.x] = v;
        dyn[threadIdx.x] = v * 2;
        __syncthreads();
        return tile[(threadIdx.x + 1) % blockDim.x] + dyn[(threadIdx.x + 2) % blockDim.x];
    }
    extern "C" __global__ void shared_rotate(const float* x, float* y)
    {
        y[threadIdx.x] = rotate(x[threadIdx.x]);
    }
    """
    f = module(src).get_function("shared_rotate")
    x = np.arange(64, dtype=np.float32)
    y = gpuarray.zeros(64, np.float32)
    f(arr(x).gpudata, y.gpudata, block=(64, 1, 1), grid=(1, 1), shared=64 * 4)
    np.testing.assert_array_equal(y.get(), np.roll(x, -1) + 2 * np.roll(x, -2))


def test_uninitialised_shared_memory_reads_as_poison():
    src = r"""
    template <int N> __device__ float peek() { __shared__ float s[N]; return s[threadIdx.x]; }
    extern "C" __global__ void peek_shared(float* y, int* z)
    {
        extern __shared__ int dyn[];
        y[threadIdx.x] = peek<32>();
        z[threadIdx.x] = dyn[threadIdx.x];
    }
    """
    f = module(src).get_function("peek_shared")
    y = gpuarray.zeros(32, np.float32)
    z = gpuarray.zeros(32, np.int32)
    for _ in range(2):  # the second block starts poisoned again
        f(y.gpudata, z.gpudata, block=(32, 1, 1), grid=(1, 1), shared=128)
        assert np.isnan(y.get()).all() and (z.get() == -1).all()


def test_indices_cover_3d_grid_and_block():
    src = r"""
    extern "C" __global__ void ids(int* out)
    {
        const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
        const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        const int nt = blockDim.x * blockDim.y * blockDim.z;
        out[b * nt + t] = b * 1000 + t;
    }
    """
    f = module(src).get_function("ids")
    block, grid = (3, 4, 5), (2, 3, 2)
    nt, nb = 60, 12
    out = gpuarray.zeros(nt * nb, np.int32)
    f(out.gpudata, block=block, grid=grid)
    expected = (np.arange(nb)[:, None] * 1000 + np.arange(nt)[None, :]).ravel()
    np.testing.assert_array_equal(out.get(), expected)


# -- warps ------------------------------------------------------------------------------------------
SHUFFLES = r"""
extern "C" __global__ void shuffles(const int* x, int* out, int arg, int width)
{
    const int t = threadIdx.x;
    const int v = x[t];
    out[0 * 64 + t] = __shfl_sync(0xffffffffu, v, arg, width);
    out[1 * 64 + t] = __shfl_up_sync(0xffffffffu, v, arg, width);
    out[2 * 64 + t] = __shfl_down_sync(0xffffffffu, v, arg, width);
    out[3 * 64 + t] = __shfl_xor_sync(0xffffffffu, v, arg, width);
}
"""


def _shuffle_model(v, arg, width):
    lanes = np.arange(64) % 32
    base = (np.arange(64) // 32) * 32
    seg = lanes & ~(width - 1)
    idx = base + seg + (arg & (width - 1))
    up = np.where(lanes - seg < arg, lanes, lanes - arg) + base
    down = np.where(lanes - seg + arg >= width, lanes, lanes + arg) + base
    xo = lanes ^ arg
    xo = np.where((xo >= seg + width) | (xo > 31), lanes, xo) + base
    return np.concatenate([v[idx], v[up], v[down], v[xo]])


@pytest.mark.parametrize("arg,width", [(1, 32), (5, 32), (16, 32), (3, 8), (1, 4), (7, 16), (2, 2)])
def test_shuffles_match_cuda_semantics(arg, width):
    f = module(SHUFFLES).get_function("shuffles")
    x = (np.arange(64, dtype=np.int32) * 7 + 3)
    out = gpuarray.zeros(4 * 64, np.int32)
    f(arr(x).gpudata, out.gpudata, np.int32(arg), np.int32(width), block=(64, 1, 1), grid=(1, 1))
    np.testing.assert_array_equal(out.get(), _shuffle_model(x, arg, width))


def test_votes_and_warp_reductions():
    src = r"""
    extern "C" __global__ void warp_votes(unsigned* out)
    {
        const unsigned t = threadIdx.x;
        const unsigned b = __ballot_sync(0xffffffffu, t % 3 == 0);
        const int any = __any_sync(0xffffffffu, t == 31);
        const int all = __all_sync(0xffffffffu, t < 31);
        const unsigned sum = __reduce_add_sync(0xffffffffu, t);
        const unsigned mx = __reduce_max_sync(0xffffffffu, t * 3);
        const unsigned m = __match_any_sync(0xffffffffu, t / 8);
        if (t == 5) { out[0] = b; out[1] = any; out[2] = all; out[3] = sum; out[4] = mx; out[5] = m; }
    }
    """
    f = module(src).get_function("warp_votes")
    out = gpuarray.zeros(6, np.uint32)
    f(out.gpudata, block=(32, 1, 1), grid=(1, 1))
    ballot = sum(1 << i for i in range(32) if i % 3 == 0)
    assert list(out.get()) == [ballot, 1, 0, sum(range(32)), 93, 0xFF]


WARP_SYNCHRONOUS = r"""
extern "C" __global__ void warp_sum(const float* x, float* out)
{
    __shared__ float s[32];
    const int t = threadIdx.x;
    s[t] = x[t];
    SYNC;
    for (int off = 16; off > 0; off >>= 1) {
        float v = t < off ? s[t + off] : 0.f;
        SYNC;
        if (t < off) s[t] += v;
        SYNC;
    }
    if (t == 0) out[0] = s[0];
}
"""


def test_syncwarp_orders_shared_memory_within_a_warp():
    x = np.arange(32, dtype=np.float32)
    good = module(WARP_SYNCHRONOUS.replace("SYNC", "__syncwarp()")).get_function("warp_sum")
    bad = module(WARP_SYNCHRONOUS.replace("SYNC", "(void)0")).get_function("warp_sum")
    out = gpuarray.zeros(1, np.float32)
    good(arr(x).gpudata, out.gpudata, block=(32, 1, 1), grid=(1, 1))
    assert out.get()[0] == x.sum()
    # lanes of a warp are independent threads (Volta's model): implicit lock-step is a bug
    results = set()
    for _ in range(3):
        bad(arr(x).gpudata, out.gpudata, block=(32, 1, 1), grid=(1, 1))
        results.add(float(out.get()[0]))
    assert results != {float(x.sum())}


def test_half_precision_and_shuffled_halves():
    src = r"""
    #include <cuda_fp16.h>
    extern "C" __global__ void halves(const __half* x, __half* y, float* f)
    {
        const int t = threadIdx.x;
        __half v = x[t];
        __half w = __shfl_xor_sync(0xffffffffu, v, 1);
        y[t] = __hadd(v, w);
        __half2 p = __floats2half2_rn(__half2float(v), 2.f);
        f[t] = __low2float(p) * __high2float(p);
    }
    """
    f = module(src).get_function("halves")
    x = (np.arange(32) * 0.25).astype(np.float16)
    y = gpuarray.zeros(32, np.float16)
    fl = gpuarray.zeros(32, np.float32)
    f(arr(x).gpudata, y.gpudata, fl.gpudata, block=(32, 1, 1), grid=(1, 1))
    np.testing.assert_array_equal(y.get(), x + x[np.arange(32) ^ 1])
    np.testing.assert_array_equal(fl.get(), x.astype(np.float32) * 2)


def test_vector_types_and_math():
    src = r"""
    extern "C" __global__ void vec(const float4* x, float* y, long long n)
    {
        const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
        if (i < n) {
            const float4 v = __ldg(x + i);
            y[i] = fmaf(v.x, v.y, v.z) + rsqrtf(v.w) + max(1, 2) + min(3u, 4u);
        }
    }
    """
    f = module(src).get_function("vec")
    x = np.random.default_rng(0).uniform(1, 2, size=(10, 4)).astype(np.float32)
    y = gpuarray.zeros(10, np.float32)
    f(arr(x).gpudata, y.gpudata, np.int64(10), block=(8, 1, 1), grid=(2, 1))
    ref = x[:, 0] * x[:, 1] + x[:, 2] + 1 / np.sqrt(x[:, 3]) + 5
    np.testing.assert_allclose(y.get(), ref, rtol=1e-6)


def test_atomics():
    src = r"""
    extern "C" __global__ void atoms(int* counter, unsigned* mx, int* cas, float* fsum)
    {
        const int g = blockIdx.x * blockDim.x + threadIdx.x;
        atomicAdd(counter, 1);
        atomicMax(mx, (unsigned)(g * 7 % 1000));
        int old = *cas, assumed;
        do { assumed = old; old = atomicCAS(cas, assumed, assumed + g); } while (old != assumed);
        atomicAdd(fsum, 0.5f);
    }
    """
    f = module(src).get_function("atoms")
    c, m, cas, fs = (gpuarray.zeros(1, t) for t in (np.int32, np.uint32, np.int32, np.float32))
    f(c.gpudata, m.gpudata, cas.gpudata, fs.gpudata, block=(128, 1, 1), grid=(5, 1))
    assert c.get()[0] == 640 and cas.get()[0] == sum(range(640)) and fs.get()[0] == 320
    assert m.get()[0] == max(g * 7 % 1000 for g in range(640))


def test_printf_reaches_stdout(capfd):
    src = r"""
    #include <cstdio>
    extern "C" __global__ void hello(int v)
    {
        if (threadIdx.x == 1 && blockIdx.x == 1) printf("hello from (%d, %d): %d\n", blockIdx.x, threadIdx.x, v);
    }
    """
    module(src).get_function("hello")(np.int32(42), block=(4, 1, 1), grid=(2, 1))
    assert "hello from (1, 1): 42" in capfd.readouterr().out


def test_schedule_is_seeded_and_shuffled(monkeypatch):
    src = r"""
    extern "C" __global__ void order(int* ticket, int* out)
    {
        out[threadIdx.x] = atomicAdd(ticket, 1);
        __syncthreads();
        out[blockDim.x + threadIdx.x] = atomicAdd(ticket, 1);
    }
    """
    f = module(src).get_function("order")

    def run():
        ticket, out = gpuarray.zeros(1, np.int32), gpuarray.zeros(128, np.int32)
        f(ticket.gpudata, out.gpudata, block=(64, 1, 1), grid=(1, 1))
        return out.get()

    monkeypatch.setattr(compiler, "_launch_count", [0])
    first = run()
    monkeypatch.setattr(compiler, "_launch_count", [0])
    again = run()
    np.testing.assert_array_equal(first, again)  # same seed, same launch number: same schedule
    assert sorted(first[:64]) == list(range(64)) and not np.array_equal(first[:64], np.arange(64))
    assert not np.array_equal(np.argsort(first[:64]), np.argsort(first[64:]))  # reshuffled
    monkeypatch.setenv(compiler.SEED_ENV, "12345")
    monkeypatch.setattr(compiler, "_launch_count", [0])
    assert not np.array_equal(run(), first)


# -- errors that a GPU would hang on, or silently compute wrong -------------------------------------
def _launch_error(src, name, *args, match, **kw):
    f = module(src).get_function(name)
    kw.setdefault("block", (64, 1, 1))
    kw.setdefault("grid", (1, 1))
    with pytest.raises(driver.LaunchError, match=match):
        f(*args, **kw)


def test_divergent_syncthreads_is_an_error():
    src = r"""
    extern "C" __global__ void diverge(int* x)
    {
        if (threadIdx.x < 32) { __syncthreads(); x[0] = 1; }
        else { __syncthreads(); x[1] = 1; }
    }
    """
    _launch_error(src, "diverge", gpuarray.zeros(2, np.int32).gpudata, match="divergent")


def test_early_return_before_barrier_is_an_error():
    src = r"""
    extern "C" __global__ void early(int* x, int n)
    {
        if (threadIdx.x >= n) return;
        __syncthreads();
        x[threadIdx.x] = 1;
    }
    """
    _launch_error(src, "early", gpuarray.zeros(64, np.int32).gpudata, np.int32(40),
                  match="can never complete")


def test_shuffle_mask_mismatch_is_an_error():
    src = r"""
    extern "C" __global__ void masks(int* x, unsigned m1, unsigned m2)
    {
        const unsigned m = threadIdx.x % 2 ? m1 : m2;
        x[threadIdx.x] = __shfl_xor_sync(m, (int)threadIdx.x, 1);
    }
    """
    x = gpuarray.zeros(64, np.int32)
    _launch_error(src, "masks", x.gpudata, np.uint32(0xFFFFFFFF), np.uint32(0x0000FFFF),
                  match="does not name the calling lane|while lanes")


def test_exited_and_absent_lanes_are_not_waited_for_and_read_as_poison():
    """CUDA: every non-exited lane named in the mask takes part; values of the others are
    undefined (poison here). A partial warp's missing lanes count as exited."""
    src = r"""
    extern "C" __global__ void partial(int* x, int n, int lane_mask)
    {
        if ((int)threadIdx.x >= n) return;
        x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, lane_mask);
        x[64 + threadIdx.x] = __popc(__ballot_sync(0xffffffffu, 1));
    }
    """
    f = module(src).get_function("partial")
    x = gpuarray.zeros(128, np.int32)
    f(x.gpudata, np.int32(40), np.int32(16), block=(48, 1, 1), grid=(1, 1))
    got = x.get()
    t = np.arange(40)
    partner = t ^ 16
    expected = np.where(partner < 40, partner, -1)
    np.testing.assert_array_equal(got[:40], expected)
    np.testing.assert_array_equal(got[64:104], np.where(t < 32, 32, 8))


def test_deadlock_is_reported():
    src = r"""
    extern "C" __global__ void stuck(int* x)
    {
        if (threadIdx.x == 0) { __syncwarp(0x3u); }
        else if (threadIdx.x == 1) { __syncthreads(); }
        x[threadIdx.x] = 0;
    }
    """
    _launch_error(src, "stuck", gpuarray.zeros(64, np.int32).gpudata, block=(2, 1, 1),
                  match="deadlock|while lanes")


def test_out_of_bounds_access_is_an_illegal_address():
    src = r"""
    extern "C" __global__ void overrun(float* x, long long n)
    {
        x[n + 1024 + threadIdx.x] = 1.f;
    }
    """
    _launch_error(src, "overrun", gpuarray.zeros(100, np.float32).gpudata, np.int64(100),
                  match="illegal memory access")


def test_launch_configuration_errors():
    src = r"""
    extern "C" __global__ void __launch_bounds__(128) bounded(float* x, long long n) { }
    """
    f = module(src).get_function("bounded")
    x = gpuarray.zeros(4, np.float32)
    with pytest.raises(driver.LogicError, match="at most 1024"):
        f(x.gpudata, np.int64(4), block=(64, 32, 1), grid=(1, 1))
    with pytest.raises(driver.LogicError, match="grid.y"):
        f(x.gpudata, np.int64(4), block=(64, 1, 1), grid=(1, 70000))
    with pytest.raises(driver.LaunchError, match="launch_bounds"):
        f(x.gpudata, np.int64(4), block=(256, 1, 1), grid=(1, 1))
    with pytest.raises(driver.LogicError, match="shared"):
        f(x.gpudata, np.int64(4), block=(64, 1, 1), grid=(1, 1), shared=64 * 1024)
    with pytest.raises(ValueError, match="block size"):
        f(x.gpudata, np.int64(4), grid=(1, 1))
    with pytest.raises(TypeError, match="parameter #1"):
        f(x.gpudata, np.int32(4), block=(64, 1, 1))  # pycuda would pack 4 bytes for 8
    with pytest.raises(TypeError, match="invalid type"):
        f(x.gpudata, 4, block=(64, 1, 1))
    with pytest.raises(TypeError, match="takes 2 parameters"):
        f(x.gpudata, block=(64, 1, 1))
    freed = driver.mem_alloc(16)
    addr = int(freed)
    freed.free()
    with pytest.raises(driver.LaunchError, match="not inside any live device allocation"):
        f(np.uintp(addr), np.int64(4), block=(64, 1, 1))
    with pytest.raises(driver.LogicError, match="named symbol not found"):
        module(src).get_function("nope")
    f(x, np.int64(4), block=(128,), grid=(2,))  # a GPUArray passes as its pointer


def test_compile_error_carries_the_log():
    with pytest.raises(driver.CompileError) as info:
        module('extern "C" __global__ void broken(int* x) { x[0] = undeclared; }')
    assert "undeclared" in str(info.value) and "undeclared" in info.value.stderr


def test_prepared_call_and_timing():
    src = r"""
    extern "C" __global__ void scale(float* x, float a, int n)
    {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] *= a;
    }
    """
    f = module(src).get_function("scale")
    x = arr(np.arange(10, dtype=np.float32))
    f.prepare("Pfi").prepared_call((1, 1), (16, 1, 1), x.gpudata, 2.0, 10)
    assert f(x.gpudata, np.float32(3), np.int32(10), block=(16, 1, 1), time_kernel=True) >= 0
    np.testing.assert_array_equal(x.get(), np.arange(10) * 6)


# -- the pycuda surface -----------------------------------------------------------------------------
def test_driver_and_gpuarray_surface():
    dev = driver.Device(0)
    assert driver.Device.count() == 1 and dev.compute_capability() == (8, 0)
    assert dev.total_memory() > 0 and "simulator" in dev.name()
    ctx = dev.retain_primary_context()
    ctx.push()
    driver.Context.synchronize()
    ctx.pop()
    a = driver.mem_alloc(64)
    host = np.arange(16, dtype=np.float32)
    driver.memcpy_htod(a, host)
    b = driver.mem_alloc(64)
    driver.memcpy_dtod(b, a, 64)
    back = np.empty_like(host)
    driver.memcpy_dtoh(back, b)
    np.testing.assert_array_equal(back, host)
    driver.memset_d8(b, 0, 64)
    driver.memcpy_dtoh(back, b)
    assert not back.any()
    with pytest.raises(driver.LogicError, match="past the end"):
        driver.memcpy_htod(a, np.zeros(17, np.float32))
    assert isinstance(driver.LaunchError("x"), driver.Error)

    pool = tools.DeviceMemoryPool()
    g = gpuarray.to_gpu(np.arange(6, dtype=np.float16).reshape(2, 3), allocator=pool.allocate)
    assert g.shape == (2, 3) and g.dtype == np.float16 and g.nbytes == 12 and g.size == 6
    assert g.strides == (6, 2) and g.ptr == int(g.gpudata) and g.ptr % 256 == 0
    assert str(g) == str(np.arange(6, dtype=np.float16).reshape(2, 3))
    np.testing.assert_array_equal(g.reshape(3, 2).get(), np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(g.ravel().astype(np.float32).get(), np.arange(6))
    c = g.copy()
    c.fill(2)
    assert (g.get() != 2).any() and (c.get() == 2).all()
    e = gpuarray.empty((4,), np.int32, allocator=pool.allocate)
    assert (e.get() == -1).all()  # fresh memory reads as 0xff bytes
    del e, c, g
    assert pool.held_blocks >= 1
    pool.free_held()
    assert pool.held_blocks == 0
    z = gpuarray.zeros((2, 2), np.float32)
    assert not z.get().any()
    with pytest.raises(ValueError):
        z.set(np.zeros(3, np.float32))


def test_pool_survives_garbage_cycles():
    """An array dropped inside a reference cycle (a failed test's traceback) gives its block back
    to the pool; the collector must not free a block the pool then hands out again."""
    import gc

    pool = tools.DeviceMemoryPool()
    for _ in range(3):
        a = gpuarray.to_gpu(np.arange(100, dtype=np.float32), allocator=pool.allocate)
        cycle = [a]
        cycle.append(cycle)
        del a, cycle
        gc.collect()
        b = gpuarray.to_gpu(np.ones(100, np.float32), allocator=pool.allocate)
        assert b.get().sum() == 100
        del b


def test_probe_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(cudasim, "_probe_result", None)
    monkeypatch.setattr(compiler, "find_cxx", lambda: None)
    ok, reason = cudasim.probe()
    assert not ok and "C++ compiler" in reason
    monkeypatch.setattr(cudasim, "_probe_result", None)
    monkeypatch.setattr(compiler, "find_cxx", lambda: "/usr/bin/g++")
    monkeypatch.setattr(compiler, "find_cuda_include", lambda: None)
    ok, reason = cudasim.probe()
    assert not ok and "cuda_fp16.h" in reason


def test_backend_surface_and_kernel_report():
    rt = cudasim.runtime()
    assert rt.api.driver is driver and rt.name == "cudasim"
    report = cudasim.kernel_report()
    assert "kernels from norm/batchnorm.cu" in report, report
    assert np.dtype(np.float16) in cudasim.supported_dtypes()
    a = cudasim.to_gpu(np.ones((2, 3), np.float32))
    assert isinstance(a, cudasim.GPUArray) and a.get().sum() == 6


# -- bugs planted in copies of the real kernels are caught -----------------------------------------
def _reference(x, scale, bias, eps=1e-5):
    x64 = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    var = x64.var(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps) * scale.reshape(mean.shape) + bias.reshape(mean.shape)


def _copy_kernels(tmp_path):
    from batchnorm_lib.backend.cuda import core

    shutil.copytree(core.KERNEL_DIR, tmp_path, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n.endswith((".py", ".c", ".pyc"))
                                             or n == "__pycache__"])
    return core


COPY_SHAPES = ((6, 5, 7, 12), (37, 45), (4, 3, 5))  # vector path, (N, C) data, scalar path


def _run_copy(monkeypatch, tmp_path, core, shapes=COPY_SHAPES):
    """Train-mode forward and backward on a CudaBackend compiled from tmp_path; True when every
    result matches the float64 reference for every shape, False when one differs or a launch
    fails."""
    from batchnorm_lib.kernels.norm import cuda as norm_cuda
    from batchnorm_lib.kernels.norm import ops

    # the two-pass kernels of batchnorm.cu, which the callers mutate, not the single-read ones
    monkeypatch.setenv(norm_cuda.SINGLE_READ_ENV, "0")
    monkeypatch.setattr(core, "KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(cudasim, "_runtime", core.CudaBackend(cudasim.api, "cudasim"))
    previous = config.get_backend()
    config.set_backend("cudasim")
    try:
        return all(_copy_matches(ops("cudasim"), shape) for shape in shapes) \
            and _per_row_copy_matches(ops("cudasim"))
    finally:
        config.set_backend(previous)


def _per_row_copy_matches(impl):
    """per_row.cu (LayerNorm, GroupNorm rows) against float64: S = 1 (column parameter sums) and
    S = 9 (channel parameter sums)."""
    rng = np.random.default_rng(11)
    g = cudasim.to_gpu
    for shape, groups in (((7, 37), 1), ((5, 4, 9), 2)):
        x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        spatial = 1 if len(shape) == 2 else shape[2]
        nparam = shape[1]
        rows = shape[0] * groups
        sc = rng.uniform(0.5, 1.5, nparam).astype(np.float32)
        out, sm, si = cudasim.empty(shape), cudasim.empty((rows,)), cudasim.empty((rows,))
        dx, dsc, dbs = cudasim.empty(shape), cudasim.empty((nparam,)), cudasim.empty((nparam,))
        try:
            impl.per_row_forward(g(x), g(sc), g(np.zeros(nparam, np.float32)), groups, spatial,
                                 1e-5, out, sm, si)
            impl.per_row_backward(g(x), g(dy), g(sc), sm, si, groups, spatial, dx, dsc, dbs)
        except driver.LaunchError:
            return False
        xs = x.reshape(rows, -1).astype(np.float64)
        mu, inv = xs.mean(1, keepdims=True), 1 / np.sqrt(xs.var(1, keepdims=True) + 1e-5)
        xhat = ((xs - mu) * inv).reshape(shape)
        cs = (1, nparam) + (1,) * (len(shape) - 2)
        gr = (dy * sc.reshape(cs)).reshape(rows, -1)
        xh = xhat.reshape(rows, -1)
        rdx = inv * (gr - gr.mean(1, keepdims=True) - xh * (gr * xh).mean(1, keepdims=True))
        axes = (0,) + tuple(range(2, len(shape)))
        if not (np.allclose(out.get(), xhat * sc.reshape(cs), rtol=1e-4, atol=1e-4)
                and np.allclose(dx.get(), rdx.reshape(shape), rtol=1e-4, atol=1e-4)
                and np.allclose(dsc.get(), (dy * xhat).sum(axis=axes), rtol=1e-4, atol=1e-3)
                and np.allclose(dbs.get(), dy.sum(axis=axes), rtol=1e-4, atol=1e-3)):
            return False
    return True


def _copy_matches(impl, shape):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)
    c = shape[1]
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    g = cudasim.to_gpu
    xs, sc, bs = g(x), g(scale), g(bias)
    rm, rv = g(np.zeros(c, np.float32)), g(np.ones(c, np.float32))
    out, sm, siv = cudasim.empty(shape), cudasim.empty((c,)), cudasim.empty((c,))
    dx, dsc, dbs = cudasim.empty(shape), cudasim.empty((c,)), cudasim.empty((c,))
    # (N, C) data also runs the rows x channels family (rows_channels.cu)
    families = ("", "rows_") if x.ndim == 2 else ("",)
    axes = (0,) + tuple(range(2, x.ndim))
    ok = True
    for family in families:
        try:
            getattr(impl, family + "forward_train")(xs, sc, bs, rm, rv, 1e-5, 1.0, out, sm, siv)
            getattr(impl, family + "backward_train")(xs, g(dy), sc, sm, siv, dx, dsc, dbs)
        except driver.LaunchError:
            return False
        ok &= np.allclose(out.get(), _reference(x, scale, bias), rtol=1e-4, atol=1e-4)
        ok &= np.allclose(dbs.get(), dy.astype(np.float64).sum(axis=axes), rtol=1e-4, atol=1e-3)
    return bool(ok)


def test_unmodified_copy_passes(monkeypatch, tmp_path):
    core = _copy_kernels(tmp_path)
    assert _run_copy(monkeypatch, tmp_path, core)


def _barrier_sites(tmp_path):
    sites = []
    for name in sorted(os.listdir(tmp_path / "norm")):
        if name not in ("batchnorm.cu", "bn_common.cuh", "per_row.cu"):  # what _run_copy runs
            continue
        name = os.path.join("norm", name)
        text = (tmp_path / name).read_text()
        # bn::channel_barrier (the single-read kernels' meeting of a channel's blocks) is not
        # code _run_copy runs: tests/test_persistent.py and test_rows_persistent.py cover it
        single_read = re.search(r"void channel_barrier\(.*?\n}\n", text, re.S)
        sites += [(name, m.start()) for m in re.finditer(r"__syncthreads\(\);", text)
                  if not (single_read and single_read.start() <= m.start() < single_read.end())]
    return sites


def test_deleting_a_syncthreads_from_a_reduction_is_caught(monkeypatch, tmp_path):
    core = _copy_kernels(tmp_path)
    sites = _barrier_sites(tmp_path)
    assert sites, "the kernels have no __syncthreads() to remove"
    for name, pos in sites:
        pristine = (tmp_path / name).read_text()
        (tmp_path / name).write_text(pristine[:pos] + pristine[pos:].replace(
            "__syncthreads();", "/* barrier removed */", 1))
        try:
            assert not _run_copy(monkeypatch, tmp_path, core), \
                "removing the __syncthreads() at %s offset %d went unnoticed" % (name, pos)
        finally:
            (tmp_path / name).write_text(pristine)


def test_a_wrong_index_is_caught(monkeypatch, tmp_path):
    core = _copy_kernels(tmp_path)
    path = tmp_path / "norm" / "batchnorm.cu"
    text = path.read_text()
    good = "(walk.row * c + ch) * s + walk.col * VEC"
    assert good in text
    # forgetting the pack width in the statistics' vector path (spatial 12 takes that path)
    path.write_text(text.replace(good, "(walk.row * c + ch) * s + walk.col", 1))
    assert not _run_copy(monkeypatch, tmp_path, core)


def _dense_ok(monkeypatch, tmp_path):
    """bias_grad and softmax cross-entropy from the dense.cu copy in tmp_path against numpy."""
    from batchnorm_lib.backend.cuda import core
    from batchnorm_lib.kernels import dense

    monkeypatch.setattr(core, "KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(cudasim, "_runtime", core.CudaBackend(cudasim.api, "cudasim"))
    previous = config.get_backend()
    config.set_backend("cudasim")
    try:
        impl = dense.ops("cudasim")
        rng = np.random.default_rng(3)
        grad = rng.normal(size=(37, 45)).astype(np.float32)
        out = cudasim.zeros((45,))
        scores = (rng.normal(size=(5, 300)) * 3).astype(np.float32)
        labels = rng.integers(0, 300, 5).astype(np.int32)
        g, losses = cudasim.empty((5, 300)), cudasim.empty((5,))
        try:
            impl.bias_grad(cudasim.to_gpu(grad), out, 1.0, 0.0)
            impl.softmax_cross_entropy(cudasim.to_gpu(scores), cudasim.to_gpu(labels), g, losses)
        except driver.LaunchError:
            return False
        s64 = scores.astype(np.float64)
        logz = np.log(np.exp(s64 - s64.max(axis=1, keepdims=True)).sum(axis=1)) + s64.max(axis=1)
        ref_losses = logz - s64[np.arange(5), labels]
        return bool(np.allclose(out.get(), grad.astype(np.float64).sum(axis=0), rtol=1e-4, atol=1e-4)
                    and np.allclose(losses.get(), ref_losses, rtol=1e-4, atol=1e-4))
    finally:
        config.set_backend(previous)


def test_deleting_a_syncthreads_from_a_dense_reduction_is_caught(monkeypatch, tmp_path):
    _copy_kernels(tmp_path)
    path = tmp_path / "dense" / "dense.cu"
    pristine = path.read_text()
    assert _dense_ok(monkeypatch, tmp_path)
    sites = [m.start() for m in re.finditer(r"__syncthreads\(\);", pristine)]
    assert sites
    for pos in sites:
        path.write_text(pristine[:pos] + pristine[pos:].replace("__syncthreads();", ";", 1))
        assert not _dense_ok(monkeypatch, tmp_path), \
            "removing the __syncthreads() at dense.cu offset %d went unnoticed" % pos


# -- every batch-norm kernel runs, bfloat16 included (numpy has no bfloat16 without ml_dtypes) ----
def _encode(x, kind):
    if kind == "f16":
        return x.astype(np.float16).view(np.uint16)
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact values only


def _decode(bits, kind):
    if kind == "f16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
@pytest.mark.parametrize("layout", ["", "_vec", "cols"])
def test_every_16bit_kernel_against_reference(kind, layout):
    """The launch sequence of kernels/norm/cuda.py, written out so bfloat16 runs without ml_dtypes."""
    rt = cudasim.runtime()
    n, c, s = (37, 45, 1) if layout == "cols" else (3, 5, 16)
    eps, factor, nsplit = 1e-5, 0.5, 2
    vec = "_vec" if layout == "_vec" else ""
    rng = np.random.default_rng(11)
    x = rng.integers(-64, 64, (n, c, s)) / 16.0  # exactly representable in both formats
    dy = rng.integers(-64, 64, (n, c, s)) / 32.0
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    run_mean0 = rng.normal(size=c).astype(np.float32)
    run_var0 = rng.uniform(0.5, 2, c).astype(np.float32)
    g = cudasim.to_gpu

    def P(a):
        return np.uintp(a.ptr)

    xs, dys = g(_encode(x, kind)), g(_encode(dy, kind))
    sc, bs, rm, rv = g(scale), g(bias), g(run_mean0), g(run_var0)
    out, dx = cudasim.empty((n, c, s), np.uint16), cudasim.empty((n, c, s), np.uint16)
    sm, siv, dsc, dbs, fa = (cudasim.empty((c,)) for _ in range(5))
    shape = (np.int64(n), np.int32(c), np.int64(s))
    grid = (-(-(n * c * s // (8 if vec else 1)) // 256),)
    part, part2, coef = cudasim.empty((c * nsplit * 7,)), cudasim.empty((c * nsplit * 6,)), \
        cudasim.empty((3 * c,))

    counters = g(np.zeros(c, np.uint32))  # the reductions' last blocks finish (and reset them)
    stats_out = (P(counters), np.float64(eps), np.float64(factor), P(sc), P(sm), P(siv), P(fa),
                 P(rm), P(rv))
    if layout == "cols":
        rt.launch("bn_stats_partial_cols_" + kind, (-(-c // 32), nsplit),
                  (P(xs), P(part)) + shape[:2] + stats_out)
    else:
        # 3 blocks walk the c * nsplit tiles
        rt.launch("bn_stats_partial_%s%s" % (kind, vec), (3,),
                  (P(xs), P(part)) + shape + (np.int32(nsplit),) + stats_out)
    rt.launch("bn_normalize_%s%s" % (kind, vec), grid,
              (P(xs), P(out), P(sm), P(fa), P(bs)) + shape)
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    inv = 1 / np.sqrt(var + eps)
    tol = dict(rtol=1e-2, atol=2e-2) if kind == "bf16" else dict(rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(sm.get(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(siv.get(), inv, rtol=1e-4)
    np.testing.assert_allclose(rv.get(), 0.5 * run_var0 + 0.5 * var * n * s / (n * s - 1), rtol=1e-4)
    ref = (x - mean[None, :, None]) * (scale * inv)[None, :, None] + bias[None, :, None]
    np.testing.assert_allclose(_decode(out.get(), kind), ref, **tol)

    sums_out = (P(counters), P(sc), P(siv), P(dsc), P(dbs), P(coef))
    if layout == "cols":
        rt.launch("bn_backward_partial_cols_" + kind, (-(-c // 32), nsplit),
                  (P(xs), P(dys), P(sm), P(part2)) + shape[:2] + sums_out)
    else:
        rt.launch("bn_backward_partial_%s%s" % (kind, vec), (3,),
                  (P(xs), P(dys), P(sm), P(part2)) + shape + (np.int32(nsplit),) + sums_out)
    rt.launch("bn_backward_train_%s%s" % (kind, vec), grid,
              (P(xs), P(dys), P(sm), P(coef), P(dx)) + shape)
    xhat = (x - mean[None, :, None]) * inv[None, :, None]
    gb, gs = dy.sum(axis=(0, 2)), (dy * xhat).sum(axis=(0, 2))
    np.testing.assert_allclose(dbs.get(), gb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dsc.get(), gs, rtol=1e-4, atol=1e-4)
    m = n * s
    ref_dx = (scale * inv)[None, :, None] * (dy - gb[None, :, None] / m - xhat * gs[None, :, None] / m)
    np.testing.assert_allclose(_decode(dx.get(), kind), ref_dx, **tol)

    rm.set(run_mean0)
    rv.set(run_var0)
    frozen = (P(sc), P(rv), np.float64(eps))
    rt.launch("bn_normalize_infer_%s%s" % (kind, vec), grid,
              (P(xs), P(out), P(rm)) + frozen + (P(bs),) + shape)
    k = scale / np.sqrt(run_var0.astype(np.float64) + eps)
    ref = (x - run_mean0[None, :, None]) * k[None, :, None] + bias[None, :, None]
    np.testing.assert_allclose(_decode(out.get(), kind), ref, **tol)
    rt.launch("bn_backward_infer_%s%s" % (kind, vec), grid, (P(dys),) + frozen + (P(dx),) + shape)
    np.testing.assert_allclose(_decode(dx.get(), kind), dy * k[None, :, None], **tol)
