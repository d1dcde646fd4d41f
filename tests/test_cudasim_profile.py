"""The simulator's memory-traffic counters (``cudasim.profile``) against figures computed by hand
and by an independent model of warps and 32-byte sectors."""

import numpy as np
import pytest

from batchnorm_lib import config

ok, why = config.probe("cudasim")
if not ok:
    pytest.skip("cudasim unavailable: %s" % why, allow_module_level=True)

from batchnorm_lib.backend.cudasim import compiler, driver, gpuarray, profile  # noqa: E402

driver.init()

SRC = r"""
extern "C" __global__ void copy(const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}
extern "C" __global__ void gather(const float* x, float* y, int n, int stride)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[(long long)i * stride];
}
extern "C" __global__ void copy4(const float4* x, float4* y, int n4)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) y[i] = x[i];
}
extern "C" __global__ void histogram(const float* x, float* bins, int n, int nbins)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&bins[i % nbins], x[i]);
}
"""

_module = []


def fn(name):
    if not _module:
        _module.append(compiler.SourceModule(SRC, no_extern_c=True))
    return _module[0].get_function(name)


def model(lane_ranges, block, grid):
    """Requests, sectors and unique sectors of one instruction: lane_ranges(global thread index)
    gives (start byte, length) or None for an inactive lane; warps are 32 consecutive threads of
    a block."""
    requests = sectors = 0
    unique = set()
    for b in range(grid):
        for w in range(0, block, 32):
            touched = set()
            active = False
            for lane in range(w, min(w + 32, block)):
                r = lane_ranges(b * block + lane)
                if r is None:
                    continue
                active = True
                start, length = r
                touched |= set(range(start // 32, (start + length - 1) // 32 + 1))
            requests += active
            sectors += len(touched)
            unique |= touched
    return requests, sectors, len(unique)


def run(name, args, block, grid):
    with profile() as prof:
        fn(name)(*args, block=(block, 1, 1), grid=(grid, 1))
    (launch,) = prof.launches
    assert (launch.name, launch.grid, launch.block, launch.shared_bytes) == (
        name, (grid, 1, 1), (block, 1, 1), 0)
    return launch


def counters(launch):
    return (launch.load_bytes, launch.store_bytes, launch.load_requests, launch.store_requests,
            launch.load_sectors, launch.store_sectors, launch.unique_load_sectors,
            launch.unique_store_sectors)


def test_coalesced_fp32_copy_by_hand():
    # 1000 floats, 8 blocks of 128: 31 full warps and one of 8 lanes (32 requests each way);
    # a full warp reads 128 contiguous bytes = 4 sectors, the last one 32 bytes = 1 sector.
    n = 1000
    x = gpuarray.to_gpu(np.arange(n, dtype=np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("copy", (x.gpudata, y.gpudata, np.int32(n)), 128, 8)
    assert counters(launch) == (4000, 4000, 32, 32, 125, 125, 125, 125)
    np.testing.assert_array_equal(y.get(), x.get())


@pytest.mark.parametrize("n,block", [(1000, 128), (333, 96), (77, 64)])
def test_coalesced_copy_against_the_model(n, block):
    grid = -(-n // block)
    x = gpuarray.to_gpu(np.random.default_rng(n).standard_normal(n).astype(np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("copy", (x.gpudata, y.gpudata, np.int32(n)), block, grid)
    req, sec, uniq = model(lambda i: (4 * i, 4) if i < n else None, block, grid)
    assert counters(launch) == (4 * n, 4 * n, req, req, sec, sec, uniq, uniq)


def test_strided_access_by_hand():
    # stride 8 floats = 32 bytes: every lane of a warp reads its own sector (32 per full warp),
    # the stores stay coalesced; 203 threads = 6 full warps + 11 lanes.
    n, stride = 203, 8
    x = gpuarray.to_gpu(np.arange(n * stride, dtype=np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("gather", (x.gpudata, y.gpudata, np.int32(n), np.int32(stride)), 256, 1)
    assert counters(launch) == (4 * n, 4 * n, 7, 7, n, 26, n, 26)
    np.testing.assert_array_equal(y.get(), x.get()[::stride])


@pytest.mark.parametrize("stride", [2, 3, 5, 33])
def test_strided_access_against_the_model(stride):
    n, block = 301, 128
    grid = -(-n // block)
    x = gpuarray.to_gpu(np.zeros(n * stride, np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("gather", (x.gpudata, y.gpudata, np.int32(n), np.int32(stride)), block, grid)
    lreq, lsec, luniq = model(lambda i: (4 * i * stride, 4) if i < n else None, block, grid)
    sreq, ssec, suniq = model(lambda i: (4 * i, 4) if i < n else None, block, grid)
    assert counters(launch) == (4 * n, 4 * n, lreq, sreq, lsec, ssec, luniq, suniq)


def test_float4_vector_loads_by_hand():
    # 100 float4s (1600 bytes) by one block of 128: 4 warps with an active lane (the last has 4);
    # a full warp moves 512 bytes = 16 sectors, the last 64 bytes = 2 sectors.
    n4 = 100
    x = gpuarray.to_gpu(np.arange(4 * n4, dtype=np.float32))
    y = gpuarray.empty(4 * n4, np.float32)
    launch = run("copy4", (x.gpudata, y.gpudata, np.int32(n4)), 128, 1)
    assert counters(launch) == (1600, 1600, 4, 4, 50, 50, 50, 50)
    np.testing.assert_array_equal(y.get(), x.get())


def test_atomics_count_as_load_and_store():
    # 100 threads add x[i] to bins[i % 3]: per warp one request for x and one atomic, which counts
    # as a load request and a store request; the 3 bins share one sector.
    n, nbins = 100, 3
    xh = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    x = gpuarray.to_gpu(xh)
    bins = gpuarray.zeros(nbins, np.float32)
    launch = run("histogram", (x.gpudata, bins.gpudata, np.int32(n), np.int32(nbins)), 64, 2)
    warps = 4  # 2 blocks x 2 warps, each with an active lane
    assert counters(launch) == (8 * n, 4 * n, 2 * warps, warps, 13 + warps, warps, 13 + 1, 1)
    expected = np.array([xh[k::nbins].astype(np.float64).sum() for k in range(nbins)])
    np.testing.assert_allclose(bins.get(), expected, rtol=1e-5, atol=1e-5)


def test_only_launches_inside_the_block_are_recorded():
    n = 64
    x = gpuarray.to_gpu(np.ones(n, np.float32))
    y = gpuarray.empty(n, np.float32)
    args = (x.gpudata, y.gpudata, np.int32(n))
    fn("copy")(*args, block=(64, 1, 1), grid=(1, 1))
    with profile() as outer:
        fn("copy")(*args, block=(64, 1, 1), grid=(1, 1))
        with profile() as inner:
            fn("copy")(*args, block=(32, 1, 1), grid=(2, 1))
    fn("copy")(*args, block=(64, 1, 1), grid=(1, 1))
    assert [lp.block for lp in outer.launches] == [(64, 1, 1), (32, 1, 1)]
    assert [lp.grid for lp in inner.launches] == [(2, 1, 1)]
    assert inner.launches[0].load_requests == 2 and outer.launches[0].load_requests == 2


# -- warp requests as a warp executes them, and ideal sectors ------------------------------------
SRC2 = r"""
template <typename T, int VEC> struct Pack { T v[VEC]; };

// a 16-byte struct load whose elements are used one by one (the host compiler would split it)
extern "C" __global__ void pack_sum(const float* x, float* y, int n4)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        Pack<float, 4> p = *reinterpret_cast<const Pack<float, 4>*>(x + 4 * i);
        float s = 0.0f;
        for (int k = 0; k < 4; ++k) s += p.v[k];
        y[i] = s;
    }
}

// every lane of a block reads the same per-block value: one sector per warp is ideal
extern "C" __global__ void broadcast(const float* scale, const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * scale[blockIdx.x];
}

// lane t runs t % 5 + 1 iterations over x[it * 32 + t]: iteration it is one request of the lanes
// still in the loop
extern "C" __global__ void ragged(const float* x, float* y)
{
    int t = threadIdx.x;
    float s = 0.0f;
    for (int it = 0; it < t % 5 + 1; ++it) s += x[it * 32 + t];
    y[t] = s;
}

// a loop over x with a per-lane branch: lane t also reads c[it] in the iterations where
// (it + t) % 3 == 0; those lanes of one iteration are one request, the others skip it
extern "C" __global__ void branchy(const float* x, const float* c, float* y, int iters)
{
    int t = threadIdx.x;
    float s = 0.0f;
    for (int it = 0; it < iters; ++it) {
        s += x[it * 32 + t];
        if ((it + t) % 3 == 0) s += c[it];
    }
    y[t] = s;
}
"""

_module2 = []


def fn2(name):
    if not _module2:
        _module2.append(compiler.SourceModule(SRC2, no_extern_c=True))
    return _module2[0].get_function(name)


def run2(name, args, block, grid):
    with profile() as prof:
        fn2(name)(*args, block=(block, 1, 1), grid=(grid, 1))
    (launch,) = prof.launches
    return launch


def test_ideal_sectors_of_coalesced_and_strided_accesses():
    # copy: every request reads contiguous aligned bytes, so ideal == touched
    n = 1000
    x = gpuarray.to_gpu(np.arange(n, dtype=np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("copy", (x.gpudata, y.gpudata, np.int32(n)), 128, 8)
    assert (launch.ideal_load_sectors, launch.ideal_store_sectors) == (125, 125)
    # stride 3 floats: a full warp asks for 128 distinct bytes (4 sectors) spread over 12;
    # 100 threads = 3 full warps + 4 lanes (16 distinct bytes over 12 bytes x 3 + 4: 2 sectors)
    n, stride = 100, 3
    x = gpuarray.to_gpu(np.zeros(n * stride, np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run("gather", (x.gpudata, y.gpudata, np.int32(n), np.int32(stride)), 128, 1)
    assert launch.load_sectors == 3 * 12 + 2
    assert launch.ideal_load_sectors == 3 * 4 + 1
    assert launch.ideal_store_sectors == launch.store_sectors == 13


def test_sixteen_byte_struct_loads_are_one_request():
    # 70 packs by 96 threads: 3 warps with active lanes (32, 32, 6); a full warp's 512 bytes are
    # 16 sectors, the last warp's 96 bytes 3
    n4 = 70
    xh = np.random.default_rng(5).standard_normal(4 * n4).astype(np.float32)
    x = gpuarray.to_gpu(xh)
    y = gpuarray.empty(n4, np.float32)
    launch = run2("pack_sum", (x.gpudata, y.gpudata, np.int32(n4)), 96, 1)
    assert (launch.load_bytes, launch.load_requests, launch.load_sectors,
            launch.ideal_load_sectors) == (16 * n4, 3, 35, 35)
    np.testing.assert_allclose(y.get(), xh.reshape(-1, 4).sum(axis=1), rtol=1e-6)


def test_broadcast_load_needs_one_sector():
    # blocks of 64 (two warps): scale[b] is one 4-byte request per warp, 1 sector, 1 ideal
    n, block = 300, 64
    grid = -(-n // block)
    scale = gpuarray.to_gpu(np.arange(1, grid + 1, dtype=np.float32))
    x = gpuarray.to_gpu(np.ones(n, np.float32))
    y = gpuarray.empty(n, np.float32)
    launch = run2("broadcast", (scale.gpudata, x.gpudata, y.gpudata, np.int32(n)), block, grid)
    warps = 10  # 4 blocks of 2 warps, the fifth has 44 threads: 2 warps
    _, x_sectors, _ = model(lambda i: (4 * i, 4) if i < n else None, block, grid)
    assert launch.load_requests == 2 * warps
    assert launch.load_sectors == launch.ideal_load_sectors == x_sectors + warps
    assert launch.load_bytes == 8 * n
    np.testing.assert_array_equal(y.get(), np.repeat(np.arange(1, grid + 1), block)[:n])


def test_loop_with_divergent_trip_counts():
    # 64 threads (two warps); lane t of a warp runs t % 5 + 1 iterations; iteration it has the
    # lanes with t % 5 >= it: requests per warp = 5, each reading 4 bytes per lane from row it
    xh = np.random.default_rng(7).standard_normal(5 * 32 + 32).astype(np.float32)
    x = gpuarray.to_gpu(xh)
    y = gpuarray.empty(64, np.float32)
    launch = run2("ragged", (x.gpudata, y.gpudata), 64, 1)
    lanes = [t % 5 + 1 for t in range(64)]
    assert launch.load_requests == 2 * 5
    assert launch.load_bytes == 4 * sum(lanes)
    # each request's lanes lie in one 128-byte row: sectors touched = distinct sectors of the
    # lanes present; ideal = their distinct bytes packed from the lowest
    sectors = ideal = 0
    for w in range(2):
        for it in range(5):
            present = [t for t in range(w * 32, w * 32 + 32) if t % 5 >= it]
            addrs = [4 * (it * 32 + t) for t in present]
            sectors += len({a // 32 for a in addrs})
            ideal += (min(addrs) % 32 + 4 * len(addrs) + 31) // 32
    assert (launch.load_sectors, launch.ideal_load_sectors) == (sectors, ideal)
    assert ideal < sectors  # lanes leaving the loop leave holes
    expected = [sum(xh[it * 32 + t] for it in range(lanes[t])) for t in range(64)]
    np.testing.assert_allclose(y.get(), expected, rtol=1e-5)


def test_lanes_that_branch_around_an_access_are_not_in_its_request():
    # one warp, 7 iterations: x is one full request per iteration; c[it] is one request per
    # iteration for the lanes with (it + t) % 3 == 0 (about a third of them), 1 sector each.
    # Pairing each lane's k-th execution of the c load instead would put iterations together.
    iters = 7
    xh = np.random.default_rng(9).standard_normal(iters * 32).astype(np.float32)
    ch = np.arange(iters, dtype=np.float32)
    x, c = gpuarray.to_gpu(xh), gpuarray.to_gpu(ch)
    y = gpuarray.empty(32, np.float32)
    launch = run2("branchy", (x.gpudata, c.gpudata, y.gpudata, np.int32(iters)), 32, 1)
    assert launch.load_requests == iters + iters
    assert launch.load_sectors == launch.ideal_load_sectors == 4 * iters + iters
    expected = [sum(xh[it * 32 + t] + (ch[it] if (it + t) % 3 == 0 else 0)
                    for it in range(iters)) for t in range(32)]
    np.testing.assert_allclose(y.get(), expected, rtol=1e-5)
