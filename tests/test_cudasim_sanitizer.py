"""The simulator's sanitizer (BATCHNORM_LIB_CUDASIM_SANITIZE=1): every planted bug is reported at
every schedule seed 0-9, with the check's word, the memory space, the byte offset and the source
line; the correct patterns (barrier-separated reuse, tree and shuffle reductions, __syncwarp
exchanges, atomics, read-only sharing, a fence + counter handshake) are not."""

import re
import shutil

import numpy as np
import pytest

from batchnorm_lib import config

ok, why = config.probe("cudasim")
if not ok:
    pytest.skip("cudasim unavailable: %s" % why, allow_module_level=True)

from batchnorm_lib.backend.cudasim import compiler, driver, gpuarray, instrument  # noqa: E402

driver.init()
SEEDS = range(10)

BUGS = r"""
extern "C" __global__ void shared_race(float* out)
{
    __shared__ float s[128];
    s[threadIdx.x] = threadIdx.x;
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];      // no barrier before the read
}
extern "C" __global__ void shared_write_race(int* out)
{
    __shared__ int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    if (threadIdx.x % 32 == 5) flag = threadIdx.x;                // several writers, no atomic
    __syncthreads();
    out[threadIdx.x] = flag;
}
extern "C" __global__ void warp_race(float* out)
{
    __shared__ float s[64];
    s[threadIdx.x] = threadIdx.x;
    float v = s[threadIdx.x ^ 1];                                 // lanes of one warp, no __syncwarp
    out[threadIdx.x] = v;
}
extern "C" __global__ void global_race(const float* x, float* partial)
{
    // every block writes partial[0]: blocks are unordered
    if (threadIdx.x == 0) partial[0] = x[blockIdx.x];
}
extern "C" __global__ void global_read_race(float* x, float* out)
{
    // block b writes x[b] and reads x[b + 1], which block b + 1 writes
    if (threadIdx.x == 0) {
        x[blockIdx.x] = blockIdx.x;
        if (blockIdx.x + 1 < gridDim.x) out[blockIdx.x] = x[blockIdx.x + 1];
    }
}
extern "C" __global__ void global_race_in_block(float* x)
{
    // two warps of one block touch one word with no barrier between them
    if (threadIdx.x == 0) x[0] = 1.0f;
    if (threadIdx.x == 40) x[1] = x[0];
}
extern "C" __global__ void fence_without_atomic(float* partial, float* out)
{
    // a fence alone orders nothing: the reader is not known to come after the writer
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = blockIdx.x;
        __threadfence();
        if (blockIdx.x == gridDim.x - 1)
            for (int b = 0; b < gridDim.x; ++b) out[0] += partial[b];
    }
}
extern "C" __global__ void read_uninitialized(const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + 1.0f;
}
extern "C" __global__ void shared_uninitialized(float* out)
{
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];                            // s[32..63] never written
}
extern "C" __global__ void misaligned_float4(const float* x, float* y)
{
    const float4 v = *reinterpret_cast<const float4*>(x + 1 + 4 * threadIdx.x);
    y[threadIdx.x] = v.x + v.y + v.z + v.w;
}
extern "C" __global__ void misaligned_shared(float* y)
{
    __shared__ float2 s[65];
    s[threadIdx.x] = make_float2(1.0f, 2.0f);
    __syncthreads();
    const float2 v = *reinterpret_cast<const float2*>(reinterpret_cast<float*>(s) + 1);
    y[threadIdx.x] = v.x;
}
extern "C" __global__ void misaligned_half(const unsigned char* bytes, float* y)
{
    const __half h = *reinterpret_cast<const __half*>(bytes + 1);
    y[threadIdx.x] = __half2float(h);
}
extern "C" __global__ void past_the_end(const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;   // no bound check: reads x[n..]
    y[i] = x[i];
}
extern "C" __global__ void past_dynamic_shared(float* y)
{
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = 1.0f;                          // launched with 16 floats for 32 threads
    __syncthreads();
    y[threadIdx.x] = dyn[threadIdx.x];
}
"""

_modules = {}


def fn(src, name):
    if src not in _modules:
        _modules[src] = compiler.SourceModule(src, no_extern_c=True)
    return _modules[src].get_function(name)


def filled(n, dtype=np.float32, value=1):
    return gpuarray.to_gpu(np.full(n, value, dtype))


def report(monkeypatch, seed, name, *args, src=BUGS, **kw):
    """The sanitizer's message for one launch at one seed."""
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    monkeypatch.setenv(compiler.SEED_ENV, str(seed))
    with pytest.raises(driver.LaunchError) as info:
        fn(src, name)(*args, **kw)
    return str(info.value)


def _check(msg, name, word, space, line_re=r"\.cu:\d+"):
    assert "kernel %s: %s on %s memory" % (name, word, space) in msg, msg
    assert re.search(line_re, msg), msg
    assert "byte offset" in msg, msg


def source_line(fragment, src=BUGS):
    """The 1-based line of the source holding fragment, as the simulator numbers it."""
    for i, text in enumerate(src.splitlines(), 1):
        if fragment in text:
            return i
    raise AssertionError(fragment)


@pytest.mark.parametrize("seed", SEEDS)
def test_shared_memory_race(monkeypatch, seed):
    msg = report(monkeypatch, seed, "shared_race", filled(128).gpudata, block=(128, 1, 1),
                 grid=(1, 1))
    _check(msg, "shared_race", "race", "shared")
    pairs = re.findall(r"block \(0,0,0\) thread \((\d+),0,0\)", msg)
    assert len(pairs) >= 2 and pairs[0] != pairs[1], msg
    assert ".cu:%d" % source_line("no barrier before the read") in msg, msg


@pytest.mark.parametrize("seed", SEEDS)
def test_two_writers_race(monkeypatch, seed):
    msg = report(monkeypatch, seed, "shared_write_race", filled(96, np.int32).gpudata,
                 block=(96, 1, 1), grid=(1, 1))
    _check(msg, "shared_write_race", "race", "shared")
    assert "byte offset 0 of __shared__ flag" in msg
    assert re.search(r"write by .* and write by", msg), msg


@pytest.mark.parametrize("seed", SEEDS)
def test_warp_lanes_race_without_syncwarp(monkeypatch, seed):
    msg = report(monkeypatch, seed, "warp_race", filled(64).gpudata, block=(64, 1, 1),
                 grid=(1, 1))
    _check(msg, "warp_race", "race", "shared")


@pytest.mark.parametrize("seed", SEEDS)
def test_global_race_between_blocks(monkeypatch, seed):
    msg = report(monkeypatch, seed, "global_race", filled(7).gpudata, filled(1).gpudata,
                 block=(32, 1, 1), grid=(7, 1))
    _check(msg, "global_race", "race", "global")
    assert "byte offset 0 in a 4-byte allocation" in msg
    blocks = re.findall(r"block \((\d+),0,0\) thread \(0,0,0\)", msg)
    assert len(blocks) == 2 and blocks[0] != blocks[1], msg


@pytest.mark.parametrize("seed", SEEDS)
def test_global_read_write_race(monkeypatch, seed):
    msg = report(monkeypatch, seed, "global_read_race", filled(5).gpudata, filled(5).gpudata,
                 block=(32, 1, 1), grid=(5, 1))
    _check(msg, "global_read_race", "race", "global")
    assert "in a 20-byte allocation" in msg


@pytest.mark.parametrize("seed", SEEDS)
def test_global_race_inside_a_block(monkeypatch, seed):
    msg = report(monkeypatch, seed, "global_race_in_block", filled(2).gpudata, block=(64, 1, 1),
                 grid=(1, 1))
    _check(msg, "global_race_in_block", "race", "global")
    assert "thread (0,0,0)" in msg and "thread (40,0,0)" in msg, msg


@pytest.mark.parametrize("seed", SEEDS)
def test_fence_alone_is_no_handshake(monkeypatch, seed):
    msg = report(monkeypatch, seed, "fence_without_atomic", filled(4).gpudata, filled(1).gpudata,
                 block=(32, 1, 1), grid=(4, 1))
    _check(msg, "fence_without_atomic", "race", "global")


@pytest.mark.parametrize("seed", SEEDS)
def test_uninitialized_device_memory(monkeypatch, seed):
    n = 37
    x = gpuarray.empty(n, np.float32)
    msg = report(monkeypatch, seed, "read_uninitialized", x.gpudata, filled(n).gpudata,
                 np.int32(n), block=(64, 1, 1), grid=(1, 1))
    _check(msg, "read_uninitialized", "uninitialized", "global")
    offset = int(re.search(r"byte offset (\d+) in a 148-byte allocation", msg).group(1))
    assert offset % 4 == 0 and offset < 148, msg  # whichever thread read first


@pytest.mark.parametrize("seed", SEEDS)
def test_partly_written_device_memory(monkeypatch, seed):
    n = 37
    x = gpuarray.empty(n, np.float32)
    driver.memcpy_htod(int(x.gpudata), np.ones(20, np.float32))  # x[20:] never written
    msg = report(monkeypatch, seed, "read_uninitialized", x.gpudata, filled(n).gpudata,
                 np.int32(n), block=(64, 1, 1), grid=(1, 1))
    _check(msg, "read_uninitialized", "uninitialized", "global")
    offset = int(re.search(r"byte offset (\d+) in a 148-byte allocation", msg).group(1))
    assert offset % 4 == 0 and 80 <= offset < 148, msg


def test_pool_memory_is_fresh_at_every_allocation(monkeypatch):
    from batchnorm_lib.backend.cudasim import tools

    pool = tools.DeviceMemoryPool()
    n = 33
    first = gpuarray.to_gpu(np.ones(n, np.float32), allocator=pool.allocate)
    del first  # back to the pool, written
    x = gpuarray.empty(n, np.float32, allocator=pool.allocate)
    msg = report(monkeypatch, 0, "read_uninitialized", x.gpudata, filled(n).gpudata,
                 np.int32(n), block=(64, 1, 1), grid=(1, 1))
    _check(msg, "read_uninitialized", "uninitialized", "global")
    pool.free_held()


@pytest.mark.parametrize("seed", SEEDS)
def test_uninitialized_shared_memory(monkeypatch, seed):
    msg = report(monkeypatch, seed, "shared_uninitialized", filled(64).gpudata, block=(64, 1, 1),
                 grid=(1, 1))
    _check(msg, "shared_uninitialized", "uninitialized", "shared")
    offset = int(re.search(r"byte offset (\d+) of __shared__ s,", msg).group(1))
    assert offset % 4 == 0 and 128 <= offset < 256, msg


@pytest.mark.parametrize("sanitize", ["1", "0"])
@pytest.mark.parametrize("seed", SEEDS)
def test_misaligned_vector_load_faults_with_or_without_the_sanitizer(monkeypatch, seed,
                                                                     sanitize):
    monkeypatch.setenv(instrument.SANITIZE_ENV, sanitize)
    monkeypatch.setenv(compiler.SEED_ENV, str(seed))
    with pytest.raises(driver.LaunchError) as info:
        fn(BUGS, "misaligned_float4")(filled(4 * 32 + 4).gpudata, filled(32).gpudata,
                                      block=(32, 1, 1), grid=(1, 1))
    msg = str(info.value)
    _check(msg, "misaligned_float4", "misaligned", "global")
    assert "misaligned address" in msg and "16-byte access" in msg, msg
    offset = int(re.search(r"byte offset (\d+) in a 528-byte allocation", msg).group(1))
    assert offset % 16 == 4, msg
    assert ".cu:%d" % source_line("x + 1 + 4 * threadIdx.x") in msg, msg


@pytest.mark.parametrize("sanitize", ["1", "0"])
def test_misaligned_shared_and_half_accesses(monkeypatch, sanitize):
    monkeypatch.setenv(instrument.SANITIZE_ENV, sanitize)
    with pytest.raises(driver.LaunchError) as info:
        fn(BUGS, "misaligned_shared")(filled(32).gpudata, block=(32, 1, 1), grid=(1, 1))
    msg = str(info.value)
    _check(msg, "misaligned_shared", "misaligned", "shared")
    assert "8-byte access" in msg and "byte offset 4 of __shared__ s" in msg, msg
    with pytest.raises(driver.LaunchError) as info:
        fn(BUGS, "misaligned_half")(filled(8, np.uint8).gpudata, filled(32).gpudata,
                                    block=(32, 1, 1), grid=(1, 1))
    msg = str(info.value)
    _check(msg, "misaligned_half", "misaligned", "global")
    assert "2-byte access" in msg and "byte offset 1 in a 8-byte allocation" in msg, msg


@pytest.mark.parametrize("seed", SEEDS)
def test_out_of_bounds_global(monkeypatch, seed):
    # 50 floats, 64 threads: x[50] lies inside the allocation's padding, before any guard page
    msg = report(monkeypatch, seed, "past_the_end", filled(50).gpudata, filled(64).gpudata,
                 np.int32(50), block=(64, 1, 1), grid=(1, 1))
    _check(msg, "past_the_end", "out of bounds", "global")
    offset = int(re.search(r"byte offset (\d+) in a 200-byte allocation", msg).group(1))
    assert offset % 4 == 0 and 200 <= offset < 256, msg


@pytest.mark.parametrize("seed", SEEDS)
def test_out_of_bounds_dynamic_shared(monkeypatch, seed):
    msg = report(monkeypatch, seed, "past_dynamic_shared", filled(32).gpudata, block=(32, 1, 1),
                 grid=(1, 1), shared=64)
    _check(msg, "past_dynamic_shared", "out of bounds", "shared")
    offset = int(re.search(r"byte offset (\d+) of dynamic shared memory", msg).group(1))
    assert offset % 4 == 0 and 64 <= offset < 128, msg


# -- correct patterns: no report at any seed ------------------------------------------------------
GOOD = r"""
extern "C" __global__ void reuse(const float* x, float* out)
{
    __shared__ float s[256];
    float acc = 0.0f;
    for (int round = 0; round < 3; ++round) {
        s[threadIdx.x] = x[round * blockDim.x + threadIdx.x];
        __syncthreads();
        acc += s[blockDim.x - 1 - threadIdx.x];
        __syncthreads();                  // before the next round overwrites s
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
extern "C" __global__ void tree(const float* x, float* out, int n)
{
    __shared__ float s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}
extern "C" __global__ void shuffle_sum(const float* x, float* out, int n)
{
    __shared__ float warp_sums[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) out[blockIdx.x] = v;
    }
}
extern "C" __global__ void syncwarp_exchange(float* out)
{
    __shared__ float s[64];
    s[threadIdx.x] = threadIdx.x;
    __syncwarp();
    float v = s[threadIdx.x ^ 1];
    __syncwarp();
    s[threadIdx.x] = v * 2.0f;
    __syncwarp();
    out[threadIdx.x] = s[threadIdx.x ^ 3];
}
extern "C" __global__ void atomics(const float* x, float* total, unsigned* hist, int n)
{
    __shared__ unsigned local[8];
    if (threadIdx.x < 8) local[threadIdx.x] = 0;
    __syncthreads();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(&local[i % 8], 1u);
        atomicAdd(total, x[i]);
    }
    __syncthreads();
    if (threadIdx.x < 8) atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
}
extern "C" __global__ void read_only(const float* table, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = table[0] + table[i % 5];     // every thread reads table[0]
}
extern "C" __global__ void last_block(const float* x, float* partial, unsigned* count,
                                      float* out, int n)
{
    // per-block sums, then the last block to finish adds them up (fence + atomic counter)
    __shared__ float s[128];
    __shared__ bool is_last;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = s[0];
        __threadfence();
        unsigned ticket = atomicAdd(count, 1u);
        is_last = ticket == gridDim.x - 1;
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        float total = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) total += partial[b];
        out[0] = total;
        *count = 0;                      // ready for the next launch
    }
}
"""


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_patterns_report_nothing(monkeypatch, seed):
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    monkeypatch.setenv(compiler.SEED_ENV, str(seed))
    rng = np.random.default_rng(seed)
    n, block = 999, 128
    grid = -(-n // block)
    xh = rng.standard_normal(3 * 256).astype(np.float32)
    x = gpuarray.to_gpu(xh)
    out = gpuarray.empty(256, np.float32)
    fn(GOOD, "reuse")(x.gpudata, out.gpudata, block=(256, 1, 1), grid=(1, 1))
    np.testing.assert_allclose(out.get(), xh.reshape(3, 256)[:, ::-1].sum(0), rtol=1e-5,
                               atol=1e-5)

    xh = rng.standard_normal(n).astype(np.float32)
    x = gpuarray.to_gpu(xh)
    sums = xh.astype(np.float64)
    sums = np.add.reduceat(sums, np.arange(0, n, block))
    for name in ("tree", "shuffle_sum"):
        out = gpuarray.empty(grid, np.float32)
        fn(GOOD, name)(x.gpudata, out.gpudata, np.int32(n), block=(block, 1, 1), grid=(grid, 1))
        np.testing.assert_allclose(out.get(), sums, rtol=1e-4, atol=1e-4)

    out = gpuarray.empty(64, np.float32)
    fn(GOOD, "syncwarp_exchange")(out.gpudata, block=(64, 1, 1), grid=(1, 1))
    lanes = np.arange(64)
    np.testing.assert_array_equal(out.get(), 2.0 * ((lanes ^ 3) ^ 1))

    total = gpuarray.zeros(1, np.float32)
    hist = gpuarray.zeros(8, np.uint32)
    fn(GOOD, "atomics")(x.gpudata, total.gpudata, hist.gpudata, np.int32(n), block=(block, 1, 1),
                        grid=(grid, 1))
    np.testing.assert_array_equal(hist.get(), np.bincount(np.arange(n) % 8, minlength=8))
    np.testing.assert_allclose(total.get()[0], xh.astype(np.float64).sum(), rtol=1e-4, atol=1e-3)

    table = gpuarray.to_gpu(np.arange(5, dtype=np.float32))
    out = gpuarray.empty(n, np.float32)
    fn(GOOD, "read_only")(table.gpudata, out.gpudata, np.int32(n), block=(block, 1, 1),
                          grid=(grid, 1))
    np.testing.assert_array_equal(out.get(), np.arange(n) % 5)

    partial = gpuarray.empty(grid, np.float32)
    count = gpuarray.zeros(1, np.uint32)
    out = gpuarray.empty(1, np.float32)
    for _ in range(2):
        fn(GOOD, "last_block")(x.gpudata, partial.gpudata, count.gpudata, out.gpudata,
                               np.int32(n), block=(block, 1, 1), grid=(grid, 1))
        np.testing.assert_allclose(out.get()[0], xh.astype(np.float64).sum(), rtol=1e-4,
                                   atol=1e-3)
        assert count.get()[0] == 0


def test_sanitizer_is_read_at_every_launch(monkeypatch):
    out = filled(128)
    monkeypatch.setenv(instrument.SANITIZE_ENV, "0")
    fn(BUGS, "shared_race")(out.gpudata, block=(128, 1, 1), grid=(1, 1))  # unchecked: runs
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    with pytest.raises(driver.LaunchError, match="race"):
        fn(BUGS, "shared_race")(out.gpudata, block=(128, 1, 1), grid=(1, 1))
    assert issubclass(driver.LaunchError, driver.Error)


def test_a_barrier_deleted_from_our_reduction_is_a_race(monkeypatch, tmp_path):
    """The project's own statistics kernel with its block-merge barrier removed (a copy, built
    once: at two seeds in one process)."""
    from batchnorm_lib import config as cfg
    from batchnorm_lib.backend import cudasim
    from batchnorm_lib.backend.cuda import core
    from batchnorm_lib.kernels.norm import ops

    shutil.copytree(core.KERNEL_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "norm" / "bn_common.cuh"
    text = path.read_text()
    merge = "partial[warp] = v;\n    }\n    __syncthreads();"  # block_reduce's barrier
    assert text.count(merge) == 1
    path.write_text(text.replace(merge, merge.replace("__syncthreads();", "/* barrier removed */")))
    monkeypatch.setattr(core, "KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(cudasim, "_runtime", core.CudaBackend(cudasim.api, "cudasim"))
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    previous = cfg.get_backend()
    cfg.set_backend("cudasim")
    try:
        for seed in (0, 5):
            monkeypatch.setenv(compiler.SEED_ENV, str(seed))
            shape, c = (6, 5, 7, 12), 5
            x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            g = cudasim.to_gpu
            with pytest.raises(driver.LaunchError) as info:
                ops("cudasim").forward_train(
                    g(x), g(np.ones(c, np.float32)), g(np.zeros(c, np.float32)),
                    g(np.zeros(c, np.float32)), g(np.ones(c, np.float32)), 1e-5, 1.0,
                    cudasim.empty(shape), cudasim.empty((c,)), cudasim.empty((c,)))
            msg = str(info.value)
            assert re.search(r"race on shared memory, byte offset \d+ of __shared__ partial",
                             msg), msg
            assert "bn_common.cuh:" in msg, msg
    finally:
        cfg.set_backend(previous)


TILES = r"""
struct Stat {
    float n, mean, m2;
};

// a function-local __shared__ tile of a template (kept in .bss, not in the shared section):
// every thread writes its slot, warp 0 merges a column after the barrier, VEC times
template <int VEC>
__device__ __forceinline__ void column_sums(const float* x, float* out, int rows)
{
    __shared__ Stat tile[8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = 0; i < VEC; ++i) {
        Stat s = {0.f, 0.f, 0.f};
        for (int r = warp; r < rows; r += 8) {
            const float v = x[(blockIdx.x * rows + r) * 32 + lane] + i;
            s.n += 1.f;
            s.mean += v;
            s.m2 += v * v;
        }
        tile[warp][lane] = s;
        __syncthreads();
        if (warp == 0) {
            Stat t = tile[0][lane];
            for (int k = 1; k < 8; ++k) {
                t.n += tile[k][lane].n;
                t.mean += tile[k][lane].mean;
                t.m2 += tile[k][lane].m2;
            }
            out[(blockIdx.x * VEC + i) * 32 + lane] = t.mean;
        }
        __syncthreads();  // the tile is reused by the next i
    }
}

extern "C" __global__ void tile_sums_1(const float* x, float* out, int rows)
{
    column_sums<1>(x, out, rows);
}
extern "C" __global__ void tile_sums_3(const float* x, float* out, int rows)
{
    column_sums<3>(x, out, rows);
}
"""


def test_shared_tiles_over_many_launches_report_nothing(monkeypatch):
    """A function-local tile written by every thread and read after a barrier is clean at every
    grid size and after other launches, and in launches long enough for the runtime's watchdog
    thread to poll during them (its accesses are not the kernel's)."""
    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    rng = np.random.default_rng(7)
    rows = 9
    for blocks in (1, 7, 3, 160, 5, 301):
        xh = rng.standard_normal(blocks * rows * 32).astype(np.float32)
        x = gpuarray.to_gpu(xh)
        cols = xh.astype(np.float64).reshape(blocks, rows, 32).sum(1)
        for name, vec in (("tile_sums_1", 1), ("tile_sums_3", 3)):
            out = gpuarray.empty(blocks * vec * 32, np.float32)
            fn(TILES, name)(x.gpudata, out.gpudata, np.int32(rows), block=(256, 1, 1),
                            grid=(blocks, 1))
            want = cols[:, None, :] + rows * np.arange(vec)[None, :, None]
            np.testing.assert_allclose(out.get().reshape(blocks, vec, 32), want, rtol=1e-4,
                                       atol=1e-4)
        # another kernel of another module in between
        out = gpuarray.empty(256, np.float32)
        fn(GOOD, "reuse")(gpuarray.to_gpu(rng.standard_normal(768).astype(np.float32)).gpudata,
                          out.gpudata, block=(256, 1, 1), grid=(1, 1))
