// Batch normalization of rows x channels data (R, C), channels contiguous: BatchNorm on (N, C) and
// every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C)) are this one problem.
// Compiles standalone with nvcc; kernels/norm/cuda.py compiles it once per process with pycuda's
// SourceModule and launches the extern "C" entries, together with batchnorm.cu's finalize kernels.
//
// Threads run along C: lane i of a warp owns channels [VEC * i, VEC * i + VEC) of a 32 * VEC
// channel tile, so a warp reads 32 * VEC contiguous elements of a row (coalesced; 128-bit loads
// on the _vec entries, launched only when every data pointer is 16-byte aligned and C is a
// multiple of VEC). Reductions: a (ceil(C / (32 VEC)), nsplit) grid, each block owning a channel
// tile over one contiguous range of rows; its 8 warps take interleaved rows and are merged per
// channel in warp order. The partials have batchnorm.cu's layout (mean, m2, n, shift per channel
// and split; sum(dy), sum(dy * (x - mean)) for the backward), so its finalize kernels merge them
// in a fixed order: no atomics, results bitwise repeatable and dependent on the shape only.
#include "bn_common.cuh"

namespace rc {

using bn::kBlock;
using bn::kWarps;
using bn::Pack;
using bn::Welford;
using bn::from_float;
using bn::load_pack;
using bn::store_pack;
using bn::to_float;

// The reductions' per-warp results, for the largest pack (8 channels per lane). One buffer for the
// whole file rather than a __shared__ array per template instance: a module's static shared
// memory is bounded as a whole where the instances are counted together (the simulator).
constexpr int kMaxVec = 8;
constexpr int kUnroll = 4;  // rows per warp whose loads are issued together in the reductions
__shared__ __align__(16) unsigned char scratch[kWarps * 32 * kMaxVec * sizeof(Welford)];

template <typename R, int VEC>
__device__ __forceinline__ R (*warp_tiles())[32 * VEC]
{
    static_assert(VEC <= kMaxVec, "pack wider than the scratch buffer");
    return reinterpret_cast<R (*)[32 * VEC]>(scratch);
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
};

// --- batch statistics ---------------------------------------------------------------------------

// Welford per channel over the split's rows, shifted by the channel's row-0 value (the same shift
// in every split: the finalize kernel adds one shift per channel back).
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c)
{
    Welford (*tile)[32 * VEC] = warp_tiles<Welford, VEC>();
    const Tile t = Tile::make<VEC>(n);
    const int nsplit = gridDim.y;
    Welford w[VEC];
    float shift[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        w[i] = bn::welford_empty();
        shift[i] = 0.f;
    }
    if (t.ch0 < c) {
        const Pack<T, VEC> p0 = load_pack<T, VEC>(x + t.ch0);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            shift[i] = to_float(p0.v[i]);
        }
        // kUnroll rows' loads issued before their use, so more bytes are in flight per warp
        long long row = t.begin + t.warp;
        for (; row + (kUnroll - 1) * kWarps < t.end; row += kUnroll * kWarps) {
            Pack<T, VEC> pk[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                pk[u] = load_pack<T, VEC>(x + (row + u * kWarps) * c + t.ch0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float v[1] = {to_float(pk[u].v[i]) - shift[i]};
                    bn::welford_add<1>(w[i], v);
                }
            }
        }
        for (; row < t.end; row += kWarps) {
            const Pack<T, VEC> pk = load_pack<T, VEC>(x + row * c + t.ch0);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float v[1] = {to_float(pk.v[i]) - shift[i]};
                bn::welford_add<1>(w[i], v);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        tile[t.warp][t.lane * VEC + i] = w[i];
    }
    __syncthreads();
    if (t.warp == 0 && t.ch0 < c) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            Welford r = tile[0][t.lane * VEC + i];
#pragma unroll
            for (int k = 1; k < kWarps; ++k) {
                r = bn::welford_merge(r, tile[k][t.lane * VEC + i]);
            }
            float* out = part + (static_cast<long long>(t.ch0 + i) * nsplit + blockIdx.y) * 4;
            out[0] = r.mean;
            out[1] = r.m2;
            out[2] = r.n;
            out[3] = shift[i];
        }
    }
}

// --- backward sums ------------------------------------------------------------------------------

template <typename T, int VEC>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c)
{
    float2 (*tile)[32 * VEC] = warp_tiles<float2, VEC>();
    const Tile t = Tile::make<VEC>(n);
    const int nsplit = gridDim.y;
    float2 acc[VEC];
    float m[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        acc[i] = make_float2(0.f, 0.f);
        m[i] = 0.f;
    }
    if (t.ch0 < c) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            m[i] = savemean[t.ch0 + i];
        }
        long long row = t.begin + t.warp;
        for (; row + (kUnroll - 1) * kWarps < t.end; row += kUnroll * kWarps) {
            Pack<T, VEC> px[kUnroll], pg[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                px[u] = load_pack<T, VEC>(x + (row + u * kWarps) * c + t.ch0);
                pg[u] = load_pack<T, VEC>(dy + (row + u * kWarps) * c + t.ch0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float g = to_float(pg[u].v[i]);
                    acc[i].x += g;
                    acc[i].y = fmaf(g, to_float(px[u].v[i]) - m[i], acc[i].y);
                }
            }
        }
        for (; row < t.end; row += kWarps) {
            const Pack<T, VEC> px = load_pack<T, VEC>(x + row * c + t.ch0);
            const Pack<T, VEC> pg = load_pack<T, VEC>(dy + row * c + t.ch0);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float g = to_float(pg.v[i]);
                acc[i].x += g;
                acc[i].y = fmaf(g, to_float(px.v[i]) - m[i], acc[i].y);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        tile[t.warp][t.lane * VEC + i] = acc[i];
    }
    __syncthreads();
    if (t.warp == 0 && t.ch0 < c) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            float2 r = tile[0][t.lane * VEC + i];
#pragma unroll
            for (int k = 1; k < kWarps; ++k) {
                r.x += tile[k][t.lane * VEC + i].x;
                r.y += tile[k][t.lane * VEC + i].y;
            }
            float* out = part + (static_cast<long long>(t.ch0 + i) * nsplit + blockIdx.y) * 2;
            out[0] = r.x;
            out[1] = r.y;
        }
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

// y = (x - mean) * a + bias per channel, rounded step by step in that order as everywhere else;
// a = scale * saveinvvar (training) or scale * (1 / sqrt(run_var + eps)) (inference). y may be x.
template <typename T, int VEC, bool kInfer>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* __restrict__ mean,
                                          const float* __restrict__ spread,
                                          const float* __restrict__ scale,
                                          const float* __restrict__ bias, float eps, long long n,
                                          int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        Pack<T, VEC> pk = load_pack<T, VEC>(x + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float a = kInfer ? __fmul_rn(scale[ch + i], 1.f / sqrtf(spread[ch + i] + eps))
                                   : __fmul_rn(scale[ch + i], spread[ch + i]);
            const float t = __fmul_rn(__fsub_rn(to_float(pk.v[i]), mean[ch + i]), a);
            pk.v[i] = from_float<T>(__fadd_rn(t, bias[ch + i]));
        }
        store_pack<T, VEC>(y + j * VEC, pk);
    }
}

// dx = k * (dy - (x - mean) * c1 - dbias / m), in batchnorm.cu's order, with its coefficients
// coef[3 ch ..] = (k, c1, dbias / m).
template <typename T, int VEC>
__device__ __forceinline__ void backward_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                            const float* __restrict__ savemean,
                                            const float* __restrict__ coef, T* __restrict__ dx,
                                            long long n, int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        const Pack<T, VEC> px = load_pack<T, VEC>(x + j * VEC);
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float* k3 = coef + (ch + i) * 3;
            float t = __fmul_rn(__fsub_rn(to_float(px.v[i]), savemean[ch + i]), -k3[1]);
            t = __fsub_rn(__fadd_rn(t, to_float(pg.v[i])), k3[2]);
            pg.v[i] = from_float<T>(__fmul_rn(t, k3[0]));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
    }
}

// dx = dy * scale / sqrt(run_var + eps)
template <typename T, int VEC>
__device__ __forceinline__ void backward_infer(const T* __restrict__ dy,
                                               const float* __restrict__ scale,
                                               const float* __restrict__ run_var, float eps,
                                               T* __restrict__ dx, long long n, int c)
{
    RC_FOR_EACH_PACK(n, c)
    {
        const int ch = static_cast<int>(walk.col) * VEC;
        Pack<T, VEC> pg = load_pack<T, VEC>(dy + j * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float k = __fmul_rn(scale[ch + i], 1.f / sqrtf(run_var[ch + i] + eps));
            pg.v[i] = from_float<T>(__fmul_rn(to_float(pg.v[i]), k));
        }
        store_pack<T, VEC>(dx + j * VEC, pg);
    }
}

#undef RC_FOR_EACH_PACK

}  // namespace rc

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only; 256-thread blocks. Reductions: grid (ceil(C / (32 VEC)), nsplit), then
// batchnorm.cu's bn_stats_finalize / bn_backward_finalize. Elementwise: a 1-D grid-stride grid.

// Batch statistics, phase 1.
extern "C" __global__ void rc_stats_partial_f32(const float* x, float* part, long long n, int c)
{
    rc::stats_partial<float, 1>(x, part, n, c);
}
extern "C" __global__ void rc_stats_partial_f32_vec(const float* x, float* part, long long n, int c)
{
    rc::stats_partial<float, 4>(x, part, n, c);
}
extern "C" __global__ void rc_stats_partial_f16(const __half* x, float* part, long long n, int c)
{
    rc::stats_partial<__half, 1>(x, part, n, c);
}
extern "C" __global__ void rc_stats_partial_f16_vec(const __half* x, float* part, long long n, int c)
{
    rc::stats_partial<__half, 8>(x, part, n, c);
}
extern "C" __global__ void rc_stats_partial_bf16(const __nv_bfloat16* x, float* part, long long n, int c)
{
    rc::stats_partial<__nv_bfloat16, 1>(x, part, n, c);
}
extern "C" __global__ void rc_stats_partial_bf16_vec(const __nv_bfloat16* x, float* part, long long n, int c)
{
    rc::stats_partial<__nv_bfloat16, 8>(x, part, n, c);
}

// Training forward: y = (x - savemean) * (scale * saveinvvar) + bias.
extern "C" __global__ void rc_forward_train_f32(const float* x, float* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<float, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}
extern "C" __global__ void rc_forward_train_f32_vec(const float* x, float* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<float, 4, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}
extern "C" __global__ void rc_forward_train_f16(const __half* x, __half* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}
extern "C" __global__ void rc_forward_train_f16_vec(const __half* x, __half* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}
extern "C" __global__ void rc_forward_train_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}
extern "C" __global__ void rc_forward_train_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* savemean, const float* saveinvvar, const float* scale, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, false>(x, y, savemean, saveinvvar, scale, bias, 0.f, n, c);
}

// Inference: the running statistics.
extern "C" __global__ void rc_forward_infer_f32(const float* x, float* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<float, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}
extern "C" __global__ void rc_forward_infer_f32_vec(const float* x, float* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<float, 4, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}
extern "C" __global__ void rc_forward_infer_f16(const __half* x, __half* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<__half, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}
extern "C" __global__ void rc_forward_infer_f16_vec(const __half* x, __half* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<__half, 8, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}
extern "C" __global__ void rc_forward_infer_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}
extern "C" __global__ void rc_forward_infer_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* run_var, const float* scale, const float* bias, float eps, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, true>(x, y, run_mean, run_var, scale, bias, eps, n, c);
}

// Backward reduction, phase 1.
extern "C" __global__ void rc_backward_partial_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<float, 1>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void rc_backward_partial_f32_vec(const float* x, const float* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<float, 4>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void rc_backward_partial_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<__half, 1>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void rc_backward_partial_f16_vec(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<__half, 8>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void rc_backward_partial_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<__nv_bfloat16, 1>(x, dy, savemean, part, n, c);
}
extern "C" __global__ void rc_backward_partial_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c)
{
    rc::backward_partial<__nv_bfloat16, 8>(x, dy, savemean, part, n, c);
}

// Training backward, dx.
extern "C" __global__ void rc_backward_train_f32(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 1>(x, dy, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f32_vec(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c)
{
    rc::backward_dx<float, 4>(x, dy, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f16(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 1>(x, dy, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_f16_vec(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c)
{
    rc::backward_dx<__half, 8>(x, dy, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 1>(x, dy, savemean, coef, dx, n, c);
}
extern "C" __global__ void rc_backward_train_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_dx<__nv_bfloat16, 8>(x, dy, savemean, coef, dx, n, c);
}

// Backward with frozen statistics.
extern "C" __global__ void rc_backward_infer_f32(const float* dy, const float* scale, const float* run_var, float eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 1>(dy, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f32_vec(const float* dy, const float* scale, const float* run_var, float eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 4>(dy, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16(const __half* dy, const float* scale, const float* run_var, float eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 1>(dy, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16_vec(const __half* dy, const float* scale, const float* run_var, float eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 8>(dy, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16(const __nv_bfloat16* dy, const float* scale, const float* run_var, float eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 1>(dy, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16_vec(const __nv_bfloat16* dy, const float* scale, const float* run_var, float eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 8>(dy, scale, run_var, eps, dx, n, c);
}
