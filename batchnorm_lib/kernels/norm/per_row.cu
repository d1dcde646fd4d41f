// Normalization per contiguous row (pattern (a) of the engine: LayerNorm, InstanceNorm2D,
// GroupNorm). Compiles standalone with nvcc; kernels/norm/cuda.py compiles it once per process
// and launches the extern "C" entries with 256-thread blocks.
//
// Layout: R rows of L contiguous values; a row holds L / S channels of S values, and row r uses
// the per-channel scale/bias entries (r % G) * (L / S) + j / S for its value j. Row lengths stay
// below 2^24 (the host checks), so in-row indices are 32-bit and float counts are exact; row
// offsets are 64-bit. Data is T (float, __half or __nv_bfloat16); parameters and accumulation
// are float32, with batchnorm.cu's numerics (shifted Welford, float-float chunks and merges).
// Entries ending in _vec move 16 bytes per load/store and are launched only when every data
// pointer is 16-byte aligned, L is a multiple of the pack width and a pack never straddles two
// channels (S == 1 or S a multiple of the pack width).
//
// One block per row (grid.x = R, up to 2^31 - 1): a row's statistics and backward sums are a
// block reduction, merged in an order fixed by the launch shape into one record per row, which a
// one-thread-per-row _finalize kernel turns into the row's mean, invstd or dx coefficients in
// float64 (the only float64 arithmetic, as in batchnorm.cu). Parameter gradients read the data as
// (N, C, S) (channel ch of sample n is row n * G + ch / (L / S)) and reduce per channel in two
// phases like the batch-norm kernels. No atomics anywhere: results are bitwise repeatable.
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
// float32 precision, with batchnorm.cu's numerics (float32 chunks folded into float-float totals,
// bn::WelfordStream): one bn::kPartial record per row, finished by stats_finalize.
template <typename T, int VEC>
__device__ __forceinline__ void stats(const T* __restrict__ x, float* __restrict__ part,
                                      long long nrows, int len)
{
    const int packs = len / VEC;
    const long long row = blockIdx.x;  // one row per block: grid.x = rows
    if (row >= nrows) {
        return;
    }
    const T* xr = x + row * len;
    const float shift = to_float(xr[0]);
    bn::WelfordStream acc;
    for (int j = threadIdx.x; j < packs; j += kBlock) {
        const Pack<T, VEC> pk = load_pack<T, VEC>(xr + j * VEC);
        float v[VEC];
        float raw = 0.f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float xi = to_float(pk.v[i]);
            raw = __fadd_rn(raw, xi);
            v[i] = __fsub_rn(xi, shift);
        }
        acc.add<VEC>(v, raw);
    }
    const Welford w = bn::block_reduce(acc.result());
    if (threadIdx.x == 0) {
        bn::write_partial(part + row * bn::kPartial, w, shift);
    }
}

// One thread per row: mean and 1 / sqrt(var + eps) (variance biased) of the row's record in
// float64, each rounded once, with bn::welford_finish's NaN and Inf rules.
__device__ __forceinline__ void stats_finalize(const float* __restrict__ part, long long nrows,
                                               double eps, float* __restrict__ savemean,
                                               float* __restrict__ saveinvstd)
{
    const long long row = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
    if (row >= nrows) {
        return;
    }
    const float* p = part + row * bn::kPartial;
    double mean, var;
    bn::welford_finish(bn::read_partial(p), p[6], mean, var);
    savemean[row] = static_cast<float>(mean);
    saveinvstd[row] = static_cast<float>(1.0 / sqrt(var + eps));
}

// y = fma(x - mean, a, bias), a = scale * invstd rounded once, as batchnorm.cu's normalize.
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
    const long long row = blockIdx.x;  // one row per block: grid.x = rows
    if (row >= nrows) {
        return;
    }
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
            pk.v[i] = from_float<T>(fmaf(__fsub_rn(to_float(pk.v[i]), m), a, bias[ch]));
        }
        store_pack<T, VEC>(y + off + j * VEC, pk);
    }
}

// Per row, with g = dy * scale: the compensated sums sum(g), sum(g * (x - m)) and sum(x - m)
// (m = savemean; the last gives the exact mean's offset from m), one bn::kSumPartial record per
// row, finished by backward_finalize.
template <typename T, int VEC>
__device__ __forceinline__ void backward_sums(const T* __restrict__ x, const T* __restrict__ dy,
                                              const float* __restrict__ scale,
                                              const float* __restrict__ savemean,
                                              float* __restrict__ part, long long nrows, int len,
                                              int groups, int spatial)
{
    const int packs = len / VEC;
    const int cg = len / spatial;
    const long long row = blockIdx.x;  // one row per block: grid.x = rows
    if (row >= nrows) {
        return;
    }
    const float m = savemean[row];
    const int base = static_cast<int>(row % groups) * cg;
    const long long off = row * len;
    bn::SumStream<bn::kSums> acc;
    for (int j = threadIdx.x; j < packs; j += kBlock) {
        const Pack<T, VEC> px = load_pack<T, VEC>(x + off + j * VEC);
        const Pack<T, VEC> pg = load_pack<T, VEC>(dy + off + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float g = __fmul_rn(to_float(pg.v[i]),
                                      scale[channel_of(base, j * VEC + i, spatial)]);
            bn::backward_terms(acc, g, __fsub_rn(to_float(px.v[i]), m));
        }
        acc.flush_step();
    }
    const bn::Sums<bn::kSums> r = bn::block_reduce(acc.result());
    if (threadIdx.x == 0) {
        bn::write_sums(part + row * bn::kSumPartial, r);
    }
}

// One thread per row, in float64, each coefficient rounded once: with r = exact mean - savemean,
// c1 = invstd^3 (sum(g (x - m)) - r sum(g)) / L and c0 = invstd sum(g) / L - r c1 (as
// batchnorm.cu's backward_finalize, its corrections dropped where not finite).
__device__ __forceinline__ void backward_finalize(const float* __restrict__ part, long long nrows,
                                                  int len, const float* __restrict__ saveinvstd,
                                                  float* __restrict__ coef)
{
    const long long row = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
    if (row >= nrows) {
        return;
    }
    const float* p = part + row * bn::kSumPartial;
    const double fl = static_cast<double>(len);
    const double sg = bn::ff_value(p[0], p[1]);
    const double sgx = bn::ff_value(p[2], p[3]);
    const double r = bn::ff_value(p[4], p[5]) / fl;
    const double inv = saveinvstd[row];
    const double c1 = inv * inv * inv * (sgx - bn::correction(r * sg)) / fl;
    coef[2 * row] = static_cast<float>(inv * sg / fl - bn::correction(r * c1));
    coef[2 * row + 1] = static_cast<float>(c1);
}

// dx = dy * k - ((x - mean) * c1 + c0) as two FMAs, k = scale * invstd, as batchnorm.cu's
// backward_dx.
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
    const long long row = blockIdx.x;  // one row per block: grid.x = rows
    if (row >= nrows) {
        return;
    }
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
            const float u = fmaf(__fsub_rn(to_float(px.v[i]), m), c1, c0);
            pg.v[i] = from_float<T>(fmaf(to_float(pg.v[i]), k, -u));
        }
        store_pack<T, VEC>(dx + off + j * VEC, pg);
    }
}

// Parameter gradients: sum(dy) and sum(dy * xhat) per channel as compensated float-float sums.
constexpr int kParamSums = 2;
constexpr int kParamPartial = 2 * kParamSums;

__device__ __forceinline__ void param_terms(bn::SumStream<kParamSums>& acc, float g, float x,
                                            float mean, float invstd)
{
    acc.add(0, g);
    acc.add(1, __fmul_rn(g, __fmul_rn(__fsub_rn(x, mean), invstd)));
    acc.flush_step();
}

__device__ __forceinline__ void write_param_partial(float* out, const bn::Sums<kParamSums>& r)
{
#pragma unroll
    for (int i = 0; i < kParamSums; ++i) {
        out[2 * i] = r.hi[i];
        out[2 * i + 1] = r.lo[i];
    }
}

// Phase 1: the partial sums of channel blockIdx.x over a share (blockIdx.y of gridDim.y) of its
// N x S values, the data read as (N, C, S).
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

    bn::SumStream<kParamSums> acc;
    long long j = begin + threadIdx.x;
    if (j < end) {
        bn::RowWalk walk(j, kBlock, s);
        for (; j < end; j += kBlock) {
            const long long row = walk.row * groups + ch / cg;
            const long long off = (walk.row * c + ch) * s + walk.col;
            param_terms(acc, to_float(dy[off]), to_float(x[off]), savemean[row], saveinvstd[row]);
            walk.advance();
        }
    }
    const bn::Sums<kParamSums> r = bn::block_reduce(acc.result());
    if (threadIdx.x == 0) {
        write_param_partial(part + (static_cast<long long>(ch) * nsplit + split) * kParamPartial, r);
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
    __shared__ bn::Sums<kParamSums> tile[kWarps][32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int ch = blockIdx.x * 32 + lane;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const int groups = c / cg;
    const long long chunk = (n + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, n);

    bn::SumStream<kParamSums> acc;
    if (ch < c) {
        for (long long i = begin + warp; i < end; i += kWarps) {
            const long long row = i * groups + ch / cg;
            param_terms(acc, to_float(dy[i * c + ch]), to_float(x[i * c + ch]), savemean[row],
                        saveinvstd[row]);
        }
    }
    tile[warp][lane] = acc.result();
    __syncthreads();
    if (warp == 0 && ch < c) {
        bn::Sums<kParamSums> r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r = bn::sums_merge(r, tile[k][lane]);
        }
        write_param_partial(part + (static_cast<long long>(ch) * nsplit + split) * kParamPartial, r);
    }
}

// Phase 2: one warp per channel merges its partials in float64 in a fixed order (lane-strided,
// then a shuffle-down tree), each result rounded once.
__device__ __forceinline__ void param_finalize(const float* __restrict__ part, int c, int nsplit,
                                               float* __restrict__ dscale,
                                               float* __restrict__ dbias)
{
    const int lane = threadIdx.x & 31;
    const int ch = blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (ch >= c) {
        return;  // the whole warp leaves together
    }
    const float* base = part + static_cast<long long>(ch) * nsplit * kParamPartial;
    double sum[kParamSums] = {0.0, 0.0};
    for (int b = lane; b < nsplit; b += 32) {
        const float* p = base + b * kParamPartial;
#pragma unroll
        for (int i = 0; i < kParamSums; ++i) {
            sum[i] += bn::ff_value(p[2 * i], p[2 * i + 1]);
        }
    }
#pragma unroll
    for (int i = 0; i < kParamSums; ++i) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            sum[i] += __shfl_down_sync(0xffffffffu, sum[i], off);
        }
    }
    if (lane == 0) {
        dbias[ch] = static_cast<float>(sum[0]);
        dscale[ch] = static_cast<float>(sum[1]);
    }
}

}  // namespace per_row

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only (pointers and int / long long / float scalars). All use 256-thread blocks.

extern "C" __global__ void per_row_param_finalize(const float* part, int c, int nsplit, float* dscale, float* dbias)
{
    per_row::param_finalize(part, c, nsplit, dscale, dbias);
}

// Row statistics, phase 2: one thread per row (grid ceil(R / 256)).
extern "C" __global__ void per_row_stats_finalize(const float* part, long long nrows, double eps, float* savemean, float* saveinvstd)
{
    per_row::stats_finalize(part, nrows, eps, savemean, saveinvstd);
}

// Row backward coefficients, phase 2: one thread per row (grid ceil(R / 256)).
extern "C" __global__ void per_row_backward_finalize(const float* part, long long nrows, int len, const float* saveinvstd, float* coef)
{
    per_row::backward_finalize(part, nrows, len, saveinvstd, coef);
}

// --- float ---

extern "C" __global__ void per_row_stats_f32(const float* x, float* part, long long nrows, int len)
{
    per_row::stats<float, 1>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_f32(const float* x, float* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<float, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f32(const float* x, const float* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<float, 1>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f32(const float* x, const float* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, float* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<float, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_f32_vec(const float* x, float* part, long long nrows, int len)
{
    per_row::stats<float, 4>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_f32_vec(const float* x, float* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<float, 4>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f32_vec(const float* x, const float* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<float, 4>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
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

extern "C" __global__ void per_row_stats_f16(const __half* x, float* part, long long nrows, int len)
{
    per_row::stats<__half, 1>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_f16(const __half* x, __half* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__half, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f16(const __half* x, const __half* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__half, 1>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_f16(const __half* x, const __half* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __half* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__half, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_f16_vec(const __half* x, float* part, long long nrows, int len)
{
    per_row::stats<__half, 8>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_f16_vec(const __half* x, __half* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__half, 8>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_f16_vec(const __half* x, const __half* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__half, 8>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
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

extern "C" __global__ void per_row_stats_bf16(const __nv_bfloat16* x, float* part, long long nrows, int len)
{
    per_row::stats<__nv_bfloat16, 1>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__nv_bfloat16, 1>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__nv_bfloat16, 1>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_dx_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, const float* saveinvstd, const float* coef, __nv_bfloat16* dx, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_dx<__nv_bfloat16, 1>(x, dy, scale, savemean, saveinvstd, coef, dx, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_stats_bf16_vec(const __nv_bfloat16* x, float* part, long long nrows, int len)
{
    per_row::stats<__nv_bfloat16, 8>(x, part, nrows, len);
}

extern "C" __global__ void per_row_normalize_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvstd, const float* scale, const float* bias, long long nrows, int len, int groups, int spatial)
{
    per_row::normalize<__nv_bfloat16, 8>(x, y, savemean, saveinvstd, scale, bias, nrows, len, groups, spatial);
}

extern "C" __global__ void per_row_backward_sums_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* scale, const float* savemean, float* part, long long nrows, int len, int groups, int spatial)
{
    per_row::backward_sums<__nv_bfloat16, 8>(x, dy, scale, savemean, part, nrows, len, groups, spatial);
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
