// Batch normalization of rows x channels data (R, C), channels contiguous: BatchNorm on (N, C) and
// every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C)) are this one problem.
// Compiles standalone with nvcc; kernels/norm/cuda.py compiles it once per process with pycuda's
// SourceModule and launches the extern "C" entries, together with batchnorm.cu's bn_channel_factor.
//
// Threads run along C: lane i of a warp owns channels [VEC * i, VEC * i + VEC) of a 32 * VEC
// channel tile, so a warp reads 32 * VEC contiguous elements of a row (coalesced; 128-bit loads
// on the _vec entries, launched only when every data pointer is 16-byte aligned and C is a
// multiple of VEC). Reductions: a (ceil(C / (32 VEC)), nsplit) grid, each block owning a channel
// tile over one contiguous range of rows; its 8 warps take interleaved rows and are merged per
// channel in warp order. The partials are batchnorm.cu's (bn::write_partial, bn::write_sums), with
// its numerics (values shifted by the channel's first one, float32 chunks folded into float-float
// totals), and the last block of each tile to finish merges them in float64 in a fixed order
// (bn::last_block, bn::stats_finalize, bn::backward_finalize): no float atomics, results bitwise
// repeatable and dependent on the shape only. The elementwise passes take the reductions'
// per-channel factors (the normalize factor a, batchnorm.cu's bn_channel_factor, the dx
// coefficients) and round as batchnorm.cu's kernels do.
#include "bn_common.cuh"

namespace rc {

using bn::kBlock;
using bn::kWarps;
using bn::Pack;
using bn::Sums;
using bn::Welford;
using bn::from_float;
using bn::load_mask;
using bn::load_pack;
using bn::masked;
using bn::store_pack;
using bn::to_float;

constexpr int kUnroll = 4;  // rows per warp whose loads are issued together in the reductions

__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b)
{
    return bn::welford_merge(a, b);
}

template <int K>
__device__ __forceinline__ Sums<K> merge(const Sums<K>& a, const Sums<K>& b)
{
    return bn::sums_merge(a, b);
}

// Warp 0's merge of the kWarps results of its lane's channel, in warp order.
template <typename R>
__device__ __forceinline__ R merge_warps(R (*tile)[32], int lane)
{
    R r = tile[0][lane];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) {
        r = merge(r, tile[k][lane]);
    }
    return r;
}

// The block's channel tile and row range; every lane's first channel.
struct Tile {
    int lane;
    int warp;
    int ch0;           // first channel of this lane's VEC
    long long begin;   // rows [begin, end) of this split
    long long end;

    template <int VEC>
    __device__ __forceinline__ static Tile make(long long n)
    {
        Tile t;
        t.lane = threadIdx.x & 31;
        t.warp = threadIdx.x >> 5;
        t.ch0 = (blockIdx.x * 32 + t.lane) * VEC;
        const long long chunk = (n + gridDim.y - 1) / gridDim.y;
        t.begin = blockIdx.y * chunk;
        t.end = min(t.begin + chunk, n);
        return t;
    }

    // lanes of warp 0 that write partial records (those whose first channel exists), in every block
    // of this tile's column
    template <int VEC>
    __device__ __forceinline__ unsigned int writers(int c) const
    {
        const int left = c - static_cast<int>(blockIdx.x) * 32 * VEC;
        return static_cast<unsigned int>(min(32, (left + VEC - 1) / VEC));
    }
};

// --- batch statistics ---------------------------------------------------------------------------

// Welford per channel over the split's rows, shifted by the channel's row-0 value (the same shift
// in every split, as bn::stats_finalize expects). The VEC channels of a lane step together, so
// one step counter closes all their float32 chunks (bn::kChunk) at once.
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c, unsigned int* counters,
                                              const bn::StatsOut& out)
{
    // per-warp results, one per thread, merged by warp 0 one pack position at a time (so the tile
    // does not grow with VEC)
    __shared__ Welford tile[kWarps][32];
    const Tile t = Tile::make<VEC>(n);
    const int nsplit = gridDim.y;
    Welford total[VEC], chunk[VEC];
    float shift[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        total[i] = bn::welford_empty();
        chunk[i] = bn::welford_empty();
        shift[i] = 0.f;
    }
    if (t.ch0 < c) {
        const Pack<T, VEC> p0 = load_pack<T, VEC>(x + t.ch0);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            shift[i] = to_float(p0.v[i]);
        }
        int steps = 0;
        // one row's values into the chunks; a chunk closes after bn::kChunk rows
        auto add_row = [&](const Pack<T, VEC>& pk) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float xi = to_float(pk.v[i]);
                const float v[1] = {__fsub_rn(xi, shift[i])};
                bn::welford_add<1>(chunk[i], v, xi);
            }
            if (++steps == bn::kChunk) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    total[i] = bn::welford_merge(total[i], chunk[i]);
                    chunk[i] = bn::welford_empty();
                }
                steps = 0;
            }
        };
        // kUnroll rows' loads issued before their use, so more bytes are in flight per warp; the
        // rows are added in the same order as one at a time (same results)
        long long row = t.begin + t.warp;
        for (; row + (kUnroll - 1) * kWarps < t.end; row += kUnroll * kWarps) {
            Pack<T, VEC> pk[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                pk[u] = load_pack<T, VEC>(x + (row + u * kWarps) * c + t.ch0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                add_row(pk[u]);
            }
        }
        for (; row < t.end; row += kWarps) {
            add_row(load_pack<T, VEC>(x + row * c + t.ch0));
        }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        tile[t.warp][t.lane] = bn::welford_merge(total[i], chunk[i]);
        __syncthreads();
        if (t.warp == 0 && t.ch0 < c) {
            const Welford r = merge_warps(tile, t.lane);
            bn::write_partial(part + (static_cast<long long>(t.ch0 + i) * nsplit + blockIdx.y) *
                                         bn::kPartial,
                              r, shift[i]);
        }
        __syncthreads();  // the tile is reused for the next pack position
    }
    const bool wrote = t.warp == 0 && t.ch0 < c;
    if (bn::last_block(counters + blockIdx.x, nsplit, wrote, t.writers<VEC>(c))) {
        bn::finish_channels(blockIdx.x * 32 * VEC, 32 * VEC, c,
                            [&](int k, int l) { bn::stats_finalize(part, k, nsplit, l, out); });
    }
}

// --- backward sums ------------------------------------------------------------------------------

// bn::kSums compensated sums per channel (sum(dy), sum(dy * (x - m)), sum(x - m)), as
// batchnorm.cu's backward partials; RELU: dy masked by the forward's output y.
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const T* __restrict__ y,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c,
                                                 unsigned int* counters, const bn::SumsOut& out)
{
    __shared__ Sums<bn::kSums> tile[kWarps][32];
    const Tile t = Tile::make<VEC>(n);
    const int nsplit = gridDim.y;
    bn::SumStream<bn::kSums> acc[VEC];
    float m[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        m[i] = 0.f;
    }
    if (t.ch0 < c) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            m[i] = savemean[t.ch0 + i];
        }
        auto add_row = [&](const Pack<T, VEC>& px, const Pack<T, VEC>& pg, const Pack<T, VEC>& py) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                bn::backward_terms(acc[i], masked<T, VEC, RELU>(to_float(pg.v[i]), py, i),
                                   __fsub_rn(to_float(px.v[i]), m[i]));
                acc[i].flush_step();
            }
        };
        long long row = t.begin + t.warp;
        for (; row + (kUnroll - 1) * kWarps < t.end; row += kUnroll * kWarps) {
            Pack<T, VEC> px[kUnroll], pg[kUnroll], py[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const long long at = (row + u * kWarps) * c + t.ch0;
                px[u] = load_pack<T, VEC>(x + at);
                pg[u] = load_pack<T, VEC>(dy + at);
                py[u] = load_mask<T, VEC, RELU>(y, at);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                add_row(px[u], pg[u], py[u]);
            }
        }
        for (; row < t.end; row += kWarps) {
            const long long at = row * c + t.ch0;
            add_row(load_pack<T, VEC>(x + at), load_pack<T, VEC>(dy + at),
                    load_mask<T, VEC, RELU>(y, at));
        }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        tile[t.warp][t.lane] = acc[i].result();
        __syncthreads();
        if (t.warp == 0 && t.ch0 < c) {
            const Sums<bn::kSums> r = merge_warps(tile, t.lane);
            bn::write_sums(part + (static_cast<long long>(t.ch0 + i) * nsplit + blockIdx.y) *
                                      bn::kSumPartial,
                           r);
        }
        __syncthreads();
    }
    const bool wrote = t.warp == 0 && t.ch0 < c;
    if (bn::last_block(counters + blockIdx.x, nsplit, wrote, t.writers<VEC>(c))) {
        bn::finish_channels(blockIdx.x * 32 * VEC, 32 * VEC, c,
                            [&](int k, int l) { bn::backward_finalize(part, k, nsplit, n, l, out); });
    }
}

// --- elementwise passes -------------------------------------------------------------------------

// Grid-stride over the (rows, C / VEC) packs; walk.col * VEC is the pack's first channel.
#define RC_FOR_EACH_PACK(n, c)                                                                    \
    const long long cols = (c) / VEC;                                                             \
    const long long total = (n) * cols;                                                           \
    const long long stride = static_cast<long long>(gridDim.x) * kBlock;                          \
    long long j = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;                      \
    if (j >= total) {                                                                             \
        return;                                                                                   \
    }                                                                                             \
    bn::RowWalk walk(j, stride, cols);                                                            \
    for (; j < total; j += stride, walk.advance())

// y = fma(x - mean, a, bias) per channel, a = rc_stats_partial_*'s (training) or
// bn_channel_factor's (inference) factor, as batchnorm.cu's normalize (relu too when RELU). y may
// be x.
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* __restrict__ mean,
                                          const float* __restrict__ factor,
                                          const float* __restrict__ bias, long long n, int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        Pack<T, VEC> pk = load_pack<T, VEC>(x + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float v = fmaf(__fsub_rn(to_float(pk.v[i]), mean[ch + i]), factor[ch + i],
                                 bias[ch + i]);
            pk.v[i] = from_float<T>(RELU ? bn::relu(v) : v);
        }
        store_pack<T, VEC>(y + j * VEC, pk);
    }
}

// dx = dy * k - ((x - mean) * c1 + c0) as two FMAs with rc_backward_partial_*'s coefficients
// coef[3 ch ..] = (k, c0, c1), as batchnorm.cu's backward_dx (dy masked by y when RELU).
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                            const T* __restrict__ y,
                                            const float* __restrict__ savemean,
                                            const float* __restrict__ coef, T* __restrict__ dx,
                                            long long n, int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        const Pack<T, VEC> px = load_pack<T, VEC>(x + j * VEC);
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
        const Pack<T, VEC> py = load_mask<T, VEC, RELU>(y, j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float* k3 = coef + (ch + i) * 3;
            const float u = fmaf(__fsub_rn(to_float(px.v[i]), savemean[ch + i]), k3[2], k3[1]);
            const float g = masked<T, VEC, RELU>(to_float(pg.v[i]), py, i);
            pg.v[i] = from_float<T>(fmaf(g, k3[0], -u));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
    }
}

// dx = dy * k, k = bn_channel_factor's scale / sqrt(run_var + eps) (frozen statistics); dy masked
// by y when RELU
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_infer(const T* __restrict__ dy, const T* __restrict__ y,
                                               const float* __restrict__ factor,
                                               T* __restrict__ dx, long long n, int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
        const Pack<T, VEC> py = load_mask<T, VEC, RELU>(y, j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float g = masked<T, VEC, RELU>(to_float(pg.v[i]), py, i);
            pg.v[i] = from_float<T>(__fmul_rn(g, factor[ch + i]));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
    }
}

#undef RC_FOR_EACH_PACK

}  // namespace rc

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only; 256-thread blocks. Reductions: grid (ceil(C / (32 VEC)), nsplit), and
// in the same launch, the last block of each channel tile finishes it (one counter per tile, all 0
// and left 0). Elementwise: a 1-D grid-stride grid.

// Batch statistics (bn::kPartial records, then savemean, saveinvvar, a and the running statistics).
extern "C" __global__ void rc_stats_partial_f32(const float* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<float, 1>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void rc_stats_partial_f32_vec(const float* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<float, 4>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void rc_stats_partial_f16(const __half* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<__half, 1>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void rc_stats_partial_f16_vec(const __half* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<__half, 8>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void rc_stats_partial_bf16(const __nv_bfloat16* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<__nv_bfloat16, 1>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void rc_stats_partial_bf16_vec(const __nv_bfloat16* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    rc::stats_partial<__nv_bfloat16, 8>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}

// Normalization y = fmaf(x - mean, a, bias): training (savemean, rc_stats_partial_*'s a) and
// inference (run_mean, bn_channel_factor's a); y may be x.
extern "C" __global__ void rc_normalize_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 1>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 4>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8>(x, y, mean, a, bias, n, c);
}

// Backward reduction (bn::kSumPartial records, then dscale, dbias and the dx coefficients).
extern "C" __global__ void rc_backward_partial_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<float, 1>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_f32_vec(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<float, 4>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__half, 1>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_f16_vec(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__half, 8>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__nv_bfloat16, 1>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__nv_bfloat16, 8>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}

// Training backward, dx, with rc_backward_partial_*'s coefficients.
extern "C" __global__ void rc_backward_train_f32(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 1>(x, dy, nullptr, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f32_vec(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 4>(x, dy, nullptr, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f16(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 1>(x, dy, nullptr, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f16_vec(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 8>(x, dy, nullptr, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 1>(x, dy, nullptr, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 8>(x, dy, nullptr, savemean, coef, dx, n, c);
}

// Backward with frozen statistics: dx = dy * k, k from bn_channel_factor.
extern "C" __global__ void rc_backward_infer_f32(const float* dy, const float* k, float* dx, long long n, int c)
{
    rc::backward_infer<float, 1>(dy, nullptr, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f32_vec(const float* dy, const float* k, float* dx, long long n, int c)
{
    rc::backward_infer<float, 4>(dy, nullptr, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16(const __half* dy, const float* k, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 1>(dy, nullptr, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16_vec(const __half* dy, const float* k, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 8>(dy, nullptr, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16(const __nv_bfloat16* dy, const float* k, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 1>(dy, nullptr, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16_vec(const __nv_bfloat16* dy, const float* k, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 8>(dy, nullptr, k, dx, n, c);
}

// Fused ReLU: the same passes with relu(v) = v <= 0 ? 0 : v on the output, or the gradient masked
// by the forward's output y (0 where y <= 0), in the same pass.
extern "C" __global__ void rc_normalize_relu_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 1, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 4, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, true>(x, y, mean, a, bias, n, c);
}
extern "C" __global__ void rc_backward_partial_relu_f32(const float* x, const float* dy, const float* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<float, 1, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_relu_f32_vec(const float* x, const float* dy, const float* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<float, 4, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_relu_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__half, 1, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_relu_f16_vec(const __half* x, const __half* dy, const __half* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__half, 8, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_relu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__nv_bfloat16, 1, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_partial_relu_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    rc::backward_partial<__nv_bfloat16, 8, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void rc_backward_train_relu_f32(const float* x, const float* dy, const float* y, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 1, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_relu_f32_vec(const float* x, const float* dy, const float* y, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 4, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_relu_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 1, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_relu_f16_vec(const __half* x, const __half* dy, const __half* y, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 8, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_relu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 1, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_relu_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 8, true>(x, dy, y, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f32(const float* dy, const float* y, const float* k, float* dx, long long n, int c)
{
    rc::backward_infer<float, 1, true>(dy, y, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f32_vec(const float* dy, const float* y, const float* k, float* dx, long long n, int c)
{
    rc::backward_infer<float, 4, true>(dy, y, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f16(const __half* dy, const __half* y, const float* k, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 1, true>(dy, y, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f16_vec(const __half* dy, const __half* y, const float* k, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 8, true>(dy, y, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* k, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 1, true>(dy, y, k, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_bf16_vec(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* k, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 8, true>(dy, y, k, dx, n, c);
}
