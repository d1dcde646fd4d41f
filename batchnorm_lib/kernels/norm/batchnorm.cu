// Batch normalization over NCHW data (N, C, S): statistics, normalization, backward and the
// parameter-gradient update. Compiles standalone with nvcc; the Python side (kernels/norm/cuda.py)
// compiles it once per process with pycuda's SourceModule and launches the extern "C" entries.
//
// Layout: element (n, ch, s) lives at (n * C + ch) * S + s. Every index is 64-bit. Data is T
// (float, __half or __nv_bfloat16); statistics, parameters and accumulation are float32.
// Entries ending in _vec move 16 bytes per load/store and are launched only when every data
// pointer is 16-byte aligned and S is a multiple of the pack width.
//
// Reductions are two-phase: a (C, nsplit) grid writes one partial per block, and a finalize
// kernel merges a channel's partials in a fixed order (lane-strided, then a shuffle-down tree).
// No atomics: the result depends only on the shapes, so repeated runs are bitwise equal.
#include "bn_common.cuh"

namespace bn {

// --- batch statistics ---------------------------------------------------------------------------

// Values are shifted by the channel's first element before Welford, so data far from zero
// (1e4 + N(0, 1)) keeps float32 precision in the running means.
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c, long long s)
{
    const int ch = blockIdx.x;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const long long cols = s / VEC;
    const long long total = n * cols;
    const long long chunk = (total + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, total);
    const float shift = to_float(x[static_cast<long long>(ch) * s]);

    Welford w = welford_empty();
    long long j = begin + threadIdx.x;
    if (j < end) {
        RowWalk walk(j, kBlock, cols);
        for (; j < end; j += kBlock) {
            const Pack<T, VEC> pk = load_pack<T, VEC>(x + (walk.row * c + ch) * s + walk.col * VEC);
            float v[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                v[i] = to_float(pk.v[i]) - shift;
            }
            welford_add<VEC>(w, v);
            walk.advance();
        }
    }
    w = block_reduce(w);
    if (threadIdx.x == 0) {
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 4;
        out[0] = w.mean;
        out[1] = w.m2;
        out[2] = w.n;
        out[3] = shift;
    }
}

// Spatial size 1 ((N, C) data): a channel's values are C apart, so the per-channel tiles above would
// read one value per 32-byte sector. Here a block takes 32 consecutive channels (one per lane, so
// each warp reads whole rows) and its 8 warps take interleaved rows of its slice; the warps'
// results are merged per channel in warp order. Grid (ceil(C / 32), nsplit); same partial layout.
template <typename T>
__device__ __forceinline__ void stats_partial_cols(const T* __restrict__ x, float* __restrict__ part,
                                                   long long n, int c)
{
    __shared__ Welford tile[kWarps][32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int ch = blockIdx.x * 32 + lane;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const long long chunk = (n + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, n);

    Welford w = welford_empty();
    float shift = 0.f;
    if (ch < c) {
        shift = to_float(x[ch]);
        for (long long row = begin + warp; row < end; row += kWarps) {
            const float v[1] = {to_float(x[row * c + ch]) - shift};
            welford_add<1>(w, v);
        }
    }
    tile[warp][lane] = w;
    __syncthreads();
    if (warp == 0 && ch < c) {
        Welford r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r = welford_merge(r, tile[k][lane]);
        }
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 4;
        out[0] = r.mean;
        out[1] = r.m2;
        out[2] = r.n;
        out[3] = shift;
    }
}

// run = (1 - factor) * run + factor * batch, with the unbiased batch variance.
__device__ __forceinline__ void update_running(float* run_mean, float* run_var, int ch, float factor,
                                               float mean, float unbiased_var)
{
    const float keep = 1.f - factor;
    run_mean[ch] = __fadd_rn(__fmul_rn(keep, run_mean[ch]), __fmul_rn(factor, mean));
    run_var[ch] = __fadd_rn(__fmul_rn(keep, run_var[ch]), __fmul_rn(factor, unbiased_var));
}

// One warp per channel: merge the channel's nsplit partials, then write savemean, saveinvvar and
// update the running statistics.
__device__ __forceinline__ void stats_finalize(const float* __restrict__ part, int c, int nsplit,
                                               float eps, float factor, float* savemean,
                                               float* saveinvvar, float* run_mean, float* run_var)
{
    const int lane = threadIdx.x & 31;
    const int ch = blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (ch >= c) {
        return;  // the whole warp leaves together
    }
    const float* base = part + static_cast<long long>(ch) * nsplit * 4;
    Welford w = welford_empty();
    for (int b = lane; b < nsplit; b += 32) {
        Welford o;
        o.mean = base[b * 4 + 0];
        o.m2 = base[b * 4 + 1];
        o.n = base[b * 4 + 2];
        w = welford_merge(w, o);
    }
    w = warp_reduce(w);
    if (lane == 0) {
        const float mean = base[3] + w.mean;
        // a variance negative from rounding clamps to 0, but a NaN (non-finite data) must stay NaN,
        // which fmaxf would turn into 0
        const float biased = w.m2 / w.n;
        const float var = biased < 0.f ? 0.f : biased;
        const float invstd = 1.f / sqrtf(var + eps);
        savemean[ch] = mean;
        saveinvvar[ch] = invstd;
        update_running(run_mean, run_var, ch, factor, mean, var * (w.n / (w.n - 1.f)));
    }
}

// --- normalization ------------------------------------------------------------------------------

// y = (x - mean) * a + bias, rounded step by step in that order as the CPU backend does.
// Training: a = scale * saveinvvar. Inference: a = scale * (1 / sqrt(run_var + eps)).
// Each thread recomputes a only when its channel changes. x and y may be the same buffer.
template <typename T, int VEC, bool kInfer>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* __restrict__ mean,
                                          const float* __restrict__ spread,
                                          const float* __restrict__ scale,
                                          const float* __restrict__ bias, float eps, long long n,
                                          int c, long long s)
{
    const long long cols = s / VEC;
    const long long total = n * c * cols;
    const long long stride = static_cast<long long>(gridDim.x) * kBlock;
    long long j = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
    if (j >= total) {
        return;
    }
    ChannelWalk walk(j, stride, cols, c);
    int cached = -1;
    float m = 0.f, a = 0.f, b = 0.f;
    for (; j < total; j += stride) {
        if (walk.channel != cached) {
            cached = walk.channel;
            m = mean[cached];
            a = kInfer ? __fmul_rn(scale[cached], 1.f / sqrtf(spread[cached] + eps))
                       : __fmul_rn(scale[cached], spread[cached]);
            b = bias[cached];
        }
        Pack<T, VEC> pk = load_pack<T, VEC>(x + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float t = __fmul_rn(__fsub_rn(to_float(pk.v[i]), m), a);
            pk.v[i] = from_float<T>(__fadd_rn(t, b));
        }
        store_pack<T, VEC>(y + j * VEC, pk);
        walk.advance();
    }
}

// --- backward -----------------------------------------------------------------------------------

// Partial sum(dy) and sum(dy * (x - mean)) of one (channel, split) tile.
template <typename T, int VEC>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c,
                                                 long long s)
{
    const int ch = blockIdx.x;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const long long cols = s / VEC;
    const long long total = n * cols;
    const long long chunk = (total + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, total);
    const float m = savemean[ch];

    float2 acc = make_float2(0.f, 0.f);
    long long j = begin + threadIdx.x;
    if (j < end) {
        RowWalk walk(j, kBlock, cols);
        for (; j < end; j += kBlock) {
            const long long off = (walk.row * c + ch) * s + walk.col * VEC;
            const Pack<T, VEC> px = load_pack<T, VEC>(x + off);
            const Pack<T, VEC> pg = load_pack<T, VEC>(dy + off);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float g = to_float(pg.v[i]);
                acc.x += g;
                acc.y = fmaf(g, to_float(px.v[i]) - m, acc.y);
            }
            walk.advance();
        }
    }
    acc = block_reduce(acc);
    if (threadIdx.x == 0) {
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 2;
        out[0] = acc.x;
        out[1] = acc.y;
    }
}

// Spatial size 1: the column layout of stats_partial_cols for the backward sums.
template <typename T>
__device__ __forceinline__ void backward_partial_cols(const T* __restrict__ x,
                                                      const T* __restrict__ dy,
                                                      const float* __restrict__ savemean,
                                                      float* __restrict__ part, long long n, int c)
{
    __shared__ float2 tile[kWarps][32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int ch = blockIdx.x * 32 + lane;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const long long chunk = (n + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, n);

    float2 acc = make_float2(0.f, 0.f);
    if (ch < c) {
        const float m = savemean[ch];
        for (long long row = begin + warp; row < end; row += kWarps) {
            const float g = to_float(dy[row * c + ch]);
            acc.x += g;
            acc.y = fmaf(g, to_float(x[row * c + ch]) - m, acc.y);
        }
    }
    tile[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && ch < c) {
        float2 r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r.x += tile[k][lane].x;
            r.y += tile[k][lane].y;
        }
        float* out = part + (static_cast<long long>(ch) * nsplit + split) * 2;
        out[0] = r.x;
        out[1] = r.y;
    }
}

// One warp per channel: merge the partial sums in fixed order, write the parameter gradients and
// the per-channel dx coefficients coef[3 ch ..] = (k, c1, dbias / m) with k = scale * invstd and
// c1 = invstd * dscale / m.
__device__ __forceinline__ void backward_finalize(const float* __restrict__ part, int c, int nsplit,
                                                  long long m, const float* __restrict__ scale,
                                                  const float* __restrict__ saveinvvar,
                                                  float* dscale, float* dbias, float* coef)
{
    const int lane = threadIdx.x & 31;
    const int ch = blockIdx.x * kWarps + (threadIdx.x >> 5);
    if (ch >= c) {
        return;  // the whole warp leaves together
    }
    const float* base = part + static_cast<long long>(ch) * nsplit * 2;
    float2 acc = make_float2(0.f, 0.f);
    for (int b = lane; b < nsplit; b += 32) {
        acc.x += base[b * 2 + 0];
        acc.y += base[b * 2 + 1];
    }
    acc = warp_reduce(acc);
    if (lane == 0) {
        const float invstd = saveinvvar[ch];
        const float fm = static_cast<float>(m);
        const float gb = acc.x;
        const float gs = __fmul_rn(acc.y, invstd);
        dbias[ch] = gb;
        dscale[ch] = gs;
        coef[ch * 3 + 0] = __fmul_rn(scale[ch], invstd);
        coef[ch * 3 + 1] = __fmul_rn(invstd, gs) / fm;
        coef[ch * 3 + 2] = gb / fm;
    }
}

// dx = k * (dy - (x - mean) * c1 - dbias / m), rounded in the CPU backend's order.
template <typename T, int VEC>
__device__ __forceinline__ void backward_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                            const float* __restrict__ savemean,
                                            const float* __restrict__ coef, T* __restrict__ dx,
                                            long long n, int c, long long s)
{
    const long long cols = s / VEC;
    const long long total = n * c * cols;
    const long long stride = static_cast<long long>(gridDim.x) * kBlock;
    long long j = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
    if (j >= total) {
        return;
    }
    ChannelWalk walk(j, stride, cols, c);
    int cached = -1;
    float m = 0.f, k = 0.f, c1 = 0.f, gbm = 0.f;
    for (; j < total; j += stride) {
        if (walk.channel != cached) {
            cached = walk.channel;
            m = savemean[cached];
            k = coef[cached * 3 + 0];
            c1 = coef[cached * 3 + 1];
            gbm = coef[cached * 3 + 2];
        }
        const Pack<T, VEC> px = load_pack<T, VEC>(x + j * VEC);
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            float t = __fmul_rn(__fsub_rn(to_float(px.v[i]), m), -c1);
            t = __fsub_rn(__fadd_rn(t, to_float(pg.v[i])), gbm);
            pg.v[i] = from_float<T>(__fmul_rn(t, k));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
        walk.advance();
    }
}

// dx = dy * scale / sqrt(run_var + eps), with the inverse square root rounded as in the forward.
template <typename T, int VEC>
__device__ __forceinline__ void backward_infer(const T* __restrict__ dy,
                                               const float* __restrict__ scale,
                                               const float* __restrict__ run_var, float eps,
                                               T* __restrict__ dx, long long n, int c, long long s)
{
    const long long cols = s / VEC;
    const long long total = n * c * cols;
    const long long stride = static_cast<long long>(gridDim.x) * kBlock;
    long long j = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
    if (j >= total) {
        return;
    }
    ChannelWalk walk(j, stride, cols, c);
    int cached = -1;
    float k = 0.f;
    for (; j < total; j += stride) {
        if (walk.channel != cached) {
            cached = walk.channel;
            k = __fmul_rn(scale[cached], 1.f / sqrtf(run_var[cached] + eps));
        }
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            pg.v[i] = from_float<T>(__fmul_rn(to_float(pg.v[i]), k));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
        walk.advance();
    }
}

}  // namespace bn

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only (pointers and int / long long / float scalars): the Python side and the
// simulator backend launch them by name. All use 256-thread blocks (bn::kBlock).

// Batch statistics, phase 2: one warp per channel (grid ceil(C / 8)); also updates the running
// statistics.
extern "C" __global__ void bn_stats_finalize(const float* part, int c, int nsplit, float eps, float factor, float* savemean, float* saveinvvar, float* run_mean, float* run_var)
{
    bn::stats_finalize(part, c, nsplit, eps, factor, savemean, saveinvvar, run_mean, run_var);
}

// Backward reduction, phase 2: one warp per channel (grid ceil(C / 8)).
extern "C" __global__ void bn_backward_finalize(const float* part, int c, int nsplit, long long m, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_finalize(part, c, nsplit, m, scale, saveinvvar, dscale, dbias, coef);
}

// Parameter-gradient accumulation and updates: y = alpha * x + beta * y (beta == 0 overwrites y,
// so stale non-finite values do not survive). Grid-stride over n float32 elements.
extern "C" __global__ void bn_axpby(const float* x, float* y, float alpha, float beta, long long n)
{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float ax = __fmul_rn(alpha, x[i]);
        y[i] = beta == 0.f ? ax : __fadd_rn(__fmul_rn(beta, y[i]), ax);
    }
}

// Batch statistics, phase 1: grid (C, nsplit), one Welford partial per block.
extern "C" __global__ void bn_stats_partial_f32(const float* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<float, 1>(x, part, n, c, s);
}
extern "C" __global__ void bn_stats_partial_f32_vec(const float* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<float, 4>(x, part, n, c, s);
}
extern "C" __global__ void bn_stats_partial_f16(const __half* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<__half, 1>(x, part, n, c, s);
}
extern "C" __global__ void bn_stats_partial_f16_vec(const __half* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<__half, 8>(x, part, n, c, s);
}
extern "C" __global__ void bn_stats_partial_bf16(const __nv_bfloat16* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<__nv_bfloat16, 1>(x, part, n, c, s);
}
extern "C" __global__ void bn_stats_partial_bf16_vec(const __nv_bfloat16* x, float* part, long long n, int c, long long s)
{
    bn::stats_partial<__nv_bfloat16, 8>(x, part, n, c, s);
}

// Training normalization with the batch statistics of bn_stats_finalize.
extern "C" __global__ void bn_forward_train_f32(const float* x, float* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}
extern "C" __global__ void bn_forward_train_f32_vec(const float* x, float* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 4, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}
extern "C" __global__ void bn_forward_train_f16(const __half* x, __half* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}
extern "C" __global__ void bn_forward_train_f16_vec(const __half* x, __half* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 8, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}
extern "C" __global__ void bn_forward_train_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}
extern "C" __global__ void bn_forward_train_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c, s);
}

// Inference normalization with the running statistics; y may be x.
extern "C" __global__ void bn_forward_infer_f32(const float* x, float* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<float, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}
extern "C" __global__ void bn_forward_infer_f32_vec(const float* x, float* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<float, 4, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}
extern "C" __global__ void bn_forward_infer_f16(const __half* x, __half* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<__half, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}
extern "C" __global__ void bn_forward_infer_f16_vec(const __half* x, __half* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<__half, 8, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}
extern "C" __global__ void bn_forward_infer_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}
extern "C" __global__ void bn_forward_infer_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8, true>(x, y, run_mean, run_var, scale, bias, eps, n, c, s);
}

// Backward reduction, phase 1: grid (C, nsplit), partial sum(dy) and sum(dy * (x - mean)).
extern "C" __global__ void bn_backward_partial_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<float, 1>(x, dy, savemean, part, n, c, s);
}
extern "C" __global__ void bn_backward_partial_f32_vec(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<float, 4>(x, dy, savemean, part, n, c, s);
}
extern "C" __global__ void bn_backward_partial_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<__half, 1>(x, dy, savemean, part, n, c, s);
}
extern "C" __global__ void bn_backward_partial_f16_vec(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<__half, 8>(x, dy, savemean, part, n, c, s);
}
extern "C" __global__ void bn_backward_partial_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<__nv_bfloat16, 1>(x, dy, savemean, part, n, c, s);
}
extern "C" __global__ void bn_backward_partial_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, long long s)
{
    bn::backward_partial<__nv_bfloat16, 8>(x, dy, savemean, part, n, c, s);
}

// Backward elementwise (training statistics) with the coefficients of bn_backward_finalize.
extern "C" __global__ void bn_backward_train_f32(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 1>(x, dy, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f32_vec(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 4>(x, dy, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f16(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 1>(x, dy, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f16_vec(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 8>(x, dy, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 1>(x, dy, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 8>(x, dy, savemean, coef, dx, n, c, s);
}

// Backward elementwise with frozen (running) statistics.
extern "C" __global__ void bn_backward_infer_f32(const float* dy, const float* scale, const float* run_var, float eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 1>(dy, scale, run_var, eps, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f32_vec(const float* dy, const float* scale, const float* run_var, float eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 4>(dy, scale, run_var, eps, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f16(const __half* dy, const float* scale, const float* run_var, float eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 1>(dy, scale, run_var, eps, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f16_vec(const __half* dy, const float* scale, const float* run_var, float eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 8>(dy, scale, run_var, eps, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_bf16(const __nv_bfloat16* dy, const float* scale, const float* run_var, float eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 1>(dy, scale, run_var, eps, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_bf16_vec(const __nv_bfloat16* dy, const float* scale, const float* run_var, float eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 8>(dy, scale, run_var, eps, dx, n, c, s);
}

// Spatial size 1: column-layout partials for bn_stats_finalize, grid (ceil(C / 32), nsplit).
extern "C" __global__ void bn_stats_partial_cols_f32(const float* x, float* part, long long n, int c)
{
    bn::stats_partial_cols<float>(x, part, n, c);
}
extern "C" __global__ void bn_stats_partial_cols_f16(const __half* x, float* part, long long n, int c)
{
    bn::stats_partial_cols<__half>(x, part, n, c);
}
extern "C" __global__ void bn_stats_partial_cols_bf16(const __nv_bfloat16* x, float* part, long long n, int c)
{
    bn::stats_partial_cols<__nv_bfloat16>(x, part, n, c);
}

// Spatial size 1: column-layout partials for bn_backward_finalize, grid (ceil(C / 32), nsplit).
extern "C" __global__ void bn_backward_partial_cols_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c)
{
    bn::backward_partial_cols<float>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void bn_backward_partial_cols_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c)
{
    bn::backward_partial_cols<__half>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void bn_backward_partial_cols_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c)
{
    bn::backward_partial_cols<__nv_bfloat16>(x, dy, savemean, part, n, c);
}
