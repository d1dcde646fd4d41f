// Normalization per contiguous row (pattern (a) of the engine: LayerNorm, InstanceNorm2D,
// GroupNorm). Compiles standalone with nvcc; kernels/norm/cuda.py compiles it once per process
// and launches the extern "C" entries with 256-thread blocks.
//
// Layout: R rows of L contiguous values; a row holds L / S channels of S values, and row r uses
// the per-channel scale/bias entries (r % G) * (L / S) + j / S for its value j. Row lengths stay
// below 2^24 (the host checks), so in-row indices are 32-bit and float counts are exact; row
// offsets are 64-bit. Data is T (float, __half or __nv_bfloat16); statistics, parameters and
// accumulation are float32. Entries ending in _vec move 16 bytes per load/store and are launched
// only when every data pointer is 16-byte aligned, L is a multiple of the pack width and a pack
// never straddles two channels (S == 1 or S a multiple of the pack width).
//
// One block per row (grid-stride over rows): a row's statistics are a block reduction, merged
// in an order fixed by the launch shape. Parameter gradients read the data as (N, C, S) (channel
// ch of sample n is row n * G + ch / (L / S)) and reduce per channel in two phases like the
// batch-norm kernels. No atomics anywhere: results are bitwise repeatable.
#include "bn_common.cuh"

namespace per_row {

using bn::kBlock;
using bn::kWarps;
using bn::Pack;
using bn::Welford;
using bn::from_float;
using bn::load_pack;
using bn::store_pack;
using bn::to_float;

// Channel of value e of a row whose first channel is base.
__device__ __forceinline__ int channel_of(int base, int e, int spatial)
{
    return spatial == 1 ? base + e : base + e / spatial;
}

// Welford over the row, shifted by its first value so data far from zero (1e4 + N(0, 1)) keeps
// float32 precision; saves mean and 1 / sqrt(var + eps) with the variance biased.
template <typename T, int VEC>
__device__ __forceinline__ void stats(const T* __restrict__ x, long long nrows, int len, float eps,
                                      float* __restrict__ savemean, float* __restrict__ saveinvstd)
{
    const int packs = len / VEC;
    for (long long row = blockIdx.x; row < nrows; row += gridDim.x) {
        const T* xr = x + row * len;
        const float shift = to_float(xr[0]);
        Welford w = bn::welford_empty();
        for (int j = threadIdx.x; j < packs; j += kBlock) {
            const Pack<T, VEC> pk = load_pack<T, VEC>(xr + j * VEC);
            float v[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                v[i] = __fsub_rn(to_float(pk.v[i]), shift);
            }
            bn::welford_add<VEC>(w, v);
        }
        w = bn::block_reduce(w);
        if (threadIdx.x == 0) {
            // a variance negative from rounding clamps to 0, but a NaN (non-finite data) must stay NaN,
            // which fmaxf would turn into 0
            const float biased = w.m2 / w.n;
            const float var = biased < 0.f ? 0.f : biased;
            savemean[row] = __fadd_rn(shift, w.mean);
            saveinvstd[row] = 1.f / sqrtf(__fadd_rn(var, eps));
        }
        __syncthreads();  // block_reduce's shared slots are reused by the next row
    }
}

// y = (x - mean) * a + bias, a = scale * invstd, rounded step by step as the CPU backend does.
template <typename T, int VEC>
__device__ __forceinline__ void normalize(const T* __restrict__ x, T* __restrict__ y,
                                          const float* __restrict__ savemean,
                                          const float* __restrict__ saveinvstd,
                                          const float* __restrict__ scale,
                                          const float* __restrict__ bias, long long nrows, int len,
                                          int groups, int spatial)
{
    const int packs = len / VEC;
    const int cg = len / spatial;
    for (long long row = blockIdx.x; row < nrows; row += gridDim.x) {
        const float m = savemean[row];
        const float inv = saveinvstd[row];
        const int base = static_cast<int>(row % groups) * cg;
        const long long off = row * len;
        for (int j = threadIdx.x; j < packs; j += kBlock) {
            Pack<T, VEC> pk = load_pack<T, VEC>(x + off + j * VEC);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const int ch = channel_of(base, j * VEC + i, spatial);
                const float a = __fmul_rn(scale[ch], inv);
                const float t = __fmul_rn(__fsub_rn(to_float(pk.v[i]), m), a);
                pk.v[i] = from_float<T>(__fadd_rn(t, bias[ch]));
            }
            store_pack<T, VEC>(y + off + j * VEC, pk);
        }
    }
}

// Per row: coef[2 row] = c0 = invstd * sum(g) / L, coef[2 row + 1] = c1 = invstd^3 *
// sum(g * (x - mean)) / L with g = dy * scale.
template <typename T, int VEC>
__device__ __forceinline__ void backward_sums(const T* __restrict__ x, const T* __restrict__ dy,
                                              const float* __restrict__ scale,
                                              const float* __restrict__ savemean,
                                              const float* __restrict__ saveinvstd,
                                              float* __restrict__ coef, long long nrows, int len,
                                              int groups, int spatial)
{
    const int packs = len / VEC;
    const int cg = len / spatial;
    for (long long row = blockIdx.x; row < nrows; row += gridDim.x) {
        const float m = savemean[row];
        const int base = static_cast<int>(row % groups) * cg;
        const long long off = row * len;
        float2 acc = make_float2(0.f, 0.f);
        for (int j = threadIdx.x; j < packs; j += kBlock) {
            const Pack<T, VEC> px = load_pack<T, VEC>(x + off + j * VEC);
            const Pack<T, VEC> pg = load_pack<T, VEC>(dy + off + j * VEC);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float g = __fmul_rn(to_float(pg.v[i]), scale[channel_of(base, j * VEC + i,
                                                                               spatial)]);
                acc.x = __fadd_rn(acc.x, g);
                acc.y = fmaf(g, __fsub_rn(to_float(px.v[i]), m), acc.y);
            }
        }
        acc = bn::block_reduce(acc);
        if (threadIdx.x == 0) {
            const float inv = saveinvstd[row];
            const float fl = static_cast<float>(len);
            coef[2 * row] = __fmul_rn(inv, acc.x) / fl;
            coef[2 * row + 1] = __fmul_rn(__fmul_rn(__fmul_rn(inv, inv), inv), acc.y) / fl;
        }
        __syncthreads();
    }
}

// dx = (dy * k - c0) - (x - mean) * c1, k = scale * invstd, in the CPU backend's order.
template <typename T, int VEC>
__device__ __forceinline__ void backward_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                            const float* __restrict__ scale,
                                            const float* __restrict__ savemean,
                                            const float* __restrict__ saveinvstd,
                                            const float* __restrict__ coef, T* __restrict__ dx,
                                            long long nrows, int len, int groups, int spatial)
{
    const int packs = len / VEC;
    const int cg = len / spatial;
    for (long long row = blockIdx.x; row < nrows; row += gridDim.x) {
        const float m = savemean[row];
        const float inv = saveinvstd[row];
        const float c0 = coef[2 * row];
        const float c1 = coef[2 * row + 1];
        const int base = static_cast<int>(row % groups) * cg;
        const long long off = row * len;
        for (int j = threadIdx.x; j < packs; j += kBlock) {
            const Pack<T, VEC> px = load_pack<T, VEC>(x + off + j * VEC);
            Pack<T, VEC> pg = load_pack<T, VEC>(dy + off + j * VEC);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const int ch = channel_of(base, j * VEC + i, spatial);
                const float k = __fmul_rn(scale[ch], inv);
                const float t = __fsub_rn(__fmul_rn(to_float(pg.v[i]), k), c0);
                const float u = __fmul_rn(__fsub_rn(to_float(px.v[i]), m), c1);
                pg.v[i] = from_float<T>(__fsub_rn(t, u));
            }
            store_pack<T, VEC>(dx + off + j * VEC, pg);
        }
    }
}

// Parameter gradients, phase 1: partial sum(dy) and sum(dy * xhat) of channel blockIdx.x over a
// share (blockIdx.y of gridDim.y) of its N x S values, the data read as (N, C, S).
template <typename T>
__device__ __forceinline__ void param_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                              const float* __restrict__ savemean,
                                              const float* __restrict__ saveinvstd,
                                              float* __restrict__ part, long long n, int c,
                                              int cg, long long s)
{
    const int ch = blockIdx.x;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const int groups = c / cg;
    const long long total = n * s;
    const long long chunk = (total + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, total);

    float2 acc = make_float2(0.f, 0.f);
    long long j = begin + threadIdx.x;
    if (j < end) {
        bn::RowWalk walk(j, kBlock, s);
        for (; j < end; j += kBlock) {
            const long long row = walk.row * groups + ch / cg;
            const long long off = (walk.row * c + ch) * s + walk.col;
            const float g = to_float(dy[off]);
            const float xhat = __fmul_rn(__fsub_rn(to_float(x[off]), savemean[row]),
                                         saveinvstd[row]);
            acc.x = __fadd_rn(acc.x, g);
            acc.y = fmaf(g, xhat, acc.y);
            walk.advance();
        }
    }
    acc = bn::block_reduce(acc);
    if (threadIdx.x == 0) {
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 2;
        out[0] = acc.x;
        out[1] = acc.y;
    }
}

// S == 1 (LayerNorm): a channel's values are C apart, so a block takes 32 neighbouring channels
// (coalesced across a row) and its 8 warps walk the rows of its share.
template <typename T>
__device__ __forceinline__ void param_partial_cols(const T* __restrict__ x,
                                                   const T* __restrict__ dy,
                                                   const float* __restrict__ savemean,
                                                   const float* __restrict__ saveinvstd,
                                                   float* __restrict__ part, long long n, int c,
                                                   int cg)
{
    __shared__ float2 tile[kWarps][32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int ch = blockIdx.x * 32 + lane;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const int groups = c / cg;
    const long long chunk = (n + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, n);

    float2 acc = make_float2(0.f, 0.f);
    if (ch < c) {
        for (long long i = begin + warp; i < end; i += kWarps) {
            const long long row = i * groups + ch / cg;
            const float g = to_float(dy[i * c + ch]);
            const float xhat = __fmul_rn(__fsub_rn(to_float(x[i * c + ch]), savemean[row]),
                                         saveinvstd[row]);
            acc.x = __fadd_rn(acc.x, g);
            acc.y = fmaf(g, xhat, acc.y);
        }
    }
    tile[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && ch < c) {
        float2 r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r.x = __fadd_rn(r.x, tile[k][lane].x);
            r.y = __fadd_rn(r.y, tile[k][lane].y);
        }
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 2;
        out[0] = r.x;
        out[1] = r.y;
    }
}

// Phase 2: one warp per channel merges its partials in a fixed order.
__device__ __forceinline__ void param_finalize(const float* __restrict__ part, int c, int nsplit,
                                               float* __restrict__ dscale,
                                               float* __restrict__ dbias)
{
    const int lane = threadIdx.x & 31;
    const int ch = blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (ch >= c) {
        return;  // the whole warp leaves together
    }
    const float* base = part + static_cast<long long>(ch) * nsplit * 2;
    float2 acc = make_float2(0.f, 0.f);
    for (int b = lane; b < nsplit; b += 32) {
        acc.x = __fadd_rn(acc.x, base[b * 2 + 0]);
        acc.y = __fadd_rn(acc.y, base[b * 2 + 1]);
    }
    acc = bn::warp_reduce(acc);
    if (lane == 0) {
        dbias[ch] = acc.x;
        dscale[ch] = acc.y;
    }
}

}  // namespace per_row

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only (pointers and int / long long / float scalars). All use 256-thread blocks.

extern "C" __global__ void per_row_param_finalize(const float* part, int c, int nsplit, float* dscale, float* dbias)
{
    per_row::param_finalize(part, c, nsplit, dscale, dbias);
}

// --- float ---

extern "C" __global__ void per_row_stats_f32(const float* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<float, 1>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_f32(const float* x, float* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<float, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f32(const float* x, const float* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<float, 1>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f32(const float* x, const float* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, float* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<float, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_f32_vec(const float* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<float, 4>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_f32_vec(const float* x, float* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<float, 4>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f32_vec(const float* x, const float* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<float, 4>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f32_vec(const float* x, const float* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, float* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<float, 4>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_param_partial_f32(const float* x, const float* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg, long long s)
{
    per_row::param_partial<float>(x, dy, savemean, saveinvstd, part, n, c, cg, s);
}

extern "C" __global__ void per_row_param_partial_cols_f32(const float* x, const float* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg)
{
    per_row::param_partial_cols<float>(x, dy, savemean, saveinvstd, part, n, c, cg);
}

// --- __half ---

extern "C" __global__ void per_row_stats_f16(const __half* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<__half, 1>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_f16(const __half* x, __half* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__half, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f16(const __half* x, const __half* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__half, 1>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f16(const __half* x, const __half* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __half* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__half, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_f16_vec(const __half* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<__half, 8>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_f16_vec(const __half* x, __half* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__half, 8>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f16_vec(const __half* x, const __half* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__half, 8>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f16_vec(const __half* x, const __half* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __half* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__half, 8>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_param_partial_f16(const __half* x, const __half* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg, long long s)
{
    per_row::param_partial<__half>(x, dy, savemean, saveinvstd, part, n, c, cg, s);
}

extern "C" __global__ void per_row_param_partial_cols_f16(const __half* x, const __half* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg)
{
    per_row::param_partial_cols<__half>(x, dy, savemean, saveinvstd, part, n, c, cg);
}

// --- __nv_bfloat16 ---

extern "C" __global__ void per_row_stats_bf16(const __nv_bfloat16* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<__nv_bfloat16, 1>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__nv_bfloat16, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__nv_bfloat16, 1>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __nv_bfloat16* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__nv_bfloat16, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_bf16_vec(const __nv_bfloat16* x, long long nrows, int len, float eps, float* savemean, float* saveinvstd)
{
    per_row::stats<__nv_bfloat16, 8>(x, nrows, len, eps, savemean, saveinvstd);
}

extern "C" __global__ void per_row_normalize_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__nv_bfloat16, 8>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, const float* saveinvstd, float* coef, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__nv_bfloat16, 8>(x, dy, scale, savemean, saveinvstd, coef, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __nv_bfloat16* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__nv_bfloat16, 8>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_param_partial_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg, long long s)
{
    per_row::param_partial<__nv_bfloat16>(x, dy, savemean, saveinvstd, part, n, c, cg, s);
}

extern "C" __global__ void per_row_param_partial_cols_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* saveinvstd, float* part, long long n, int c, int cg)
{
    per_row::param_partial_cols<__nv_bfloat16>(x, dy, savemean, saveinvstd, part, n, c, cg);
}
