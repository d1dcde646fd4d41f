// Device helpers shared by every batch-norm kernel: type conversion, 16-byte packs, the Welford
// merge, and fixed-order warp/block reductions.
//
// Every reduction here merges in an order fixed by the launch shape alone (shuffle-down trees,
// then warp 0 over the per-warp results), never by timing, so a run is bitwise repeatable.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace bn {

// Every kernel runs 256-thread blocks; the Python side launches them with exactly this size.
constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

// VEC elements moved as one load/store; VEC * sizeof(T) == 16 on the vector paths, 1 element on
// the scalar ones. The Python side picks the vector path only when the base pointers are 16-byte
// aligned and the spatial size is a multiple of VEC, so no pack straddles two channels.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p)
{
    return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& pk)
{
    *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// Running mean / sum of squared deviations / count. Counts stay exact in float because the host
// keeps every block's share of a channel below 2^24 elements.
struct Welford {
    float mean;
    float m2;
    float n;
};

__device__ __forceinline__ Welford welford_empty()
{
    Welford w;
    w.mean = 0.f;
    w.m2 = 0.f;
    w.n = 0.f;
    return w;
}

// Chan et al.'s parallel merge. An empty side contributes nothing exactly: its mean is 0 and its
// weight is 0 (b empty) or 1 (a empty, and a.mean == 0 so the result is b.mean).
__device__ __forceinline__ Welford welford_merge(const Welford& a, const Welford& b)
{
    const float n = a.n + b.n;
    if (n == 0.f) {
        return a;
    }
    const float delta = b.mean - a.mean;
    const float wb = b.n / n;
    Welford r;
    r.n = n;
    r.mean = a.mean + delta * wb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    return r;
}

// Fold VEC new values into w: their own mean and squared deviations first (one division per pack
// instead of one per element), then one merge.
template <int VEC>
__device__ __forceinline__ void welford_add(Welford& w, const float (&v)[VEC])
{
    if (VEC == 1) {
        w.n += 1.f;
        const float d = v[0] - w.mean;
        w.mean += d / w.n;
        w.m2 += d * (v[0] - w.mean);
        return;
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        s += v[i];
    }
    Welford p;
    p.n = static_cast<float>(VEC);
    p.mean = s * (1.f / static_cast<float>(VEC));
    p.m2 = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const float d = v[i] - p.mean;
        p.m2 += d * d;
    }
    w = welford_merge(w, p);
}

__device__ __forceinline__ Welford warp_reduce(Welford w)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        Welford o;
        o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
        o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
        o.n = __shfl_down_sync(0xffffffffu, w.n, off);
        w = welford_merge(w, o);
    }
    return w;
}

__device__ __forceinline__ float2 warp_reduce(float2 s)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        s.x += __shfl_down_sync(0xffffffffu, s.x, off);
        s.y += __shfl_down_sync(0xffffffffu, s.y, off);
    }
    return s;
}

__device__ __forceinline__ Welford reduce_identity(Welford) { return welford_empty(); }
__device__ __forceinline__ float2 reduce_identity(float2) { return make_float2(0.f, 0.f); }

// Block-wide reduction of kBlock threads; the result is valid in thread 0. Must be reached by every
// thread of the block.
template <typename R>
__device__ __forceinline__ R block_reduce(R v)
{
    __shared__ R partial[kWarps];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_reduce(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < kWarps ? partial[lane] : reduce_identity(v);
        v = warp_reduce(v);
    }
    return v;
}

// Position of a thread in a (rows, cols) walk that advances by a fixed stride, without a 64-bit
// division per step: the stride's quotient and remainder are taken once.
struct RowWalk {
    long long row;
    long long col;
    long long step_rows;
    long long step_cols;
    long long cols;

    __device__ __forceinline__ RowWalk(long long start, long long stride, long long ncols)
    {
        cols = ncols;
        row = start / ncols;
        col = start - row * ncols;
        step_rows = stride / ncols;
        step_cols = stride - step_rows * ncols;
    }

    __device__ __forceinline__ void advance()
    {
        row += step_rows;
        col += step_cols;
        if (col >= cols) {
            col -= cols;
            row += 1;
        }
    }
};

// Like RowWalk over the flat (N * C, S) element space, but also tracks the channel row % C.
struct ChannelWalk {
    long long col;
    int channel;
    long long step_cols;
    int step_channels;
    long long cols;
    int channels;

    __device__ __forceinline__ ChannelWalk(long long start, long long stride, long long ncols,
                                           int nchannels)
    {
        cols = ncols;
        channels = nchannels;
        const long long row = start / ncols;
        col = start - row * ncols;
        channel = static_cast<int>(row % nchannels);
        const long long srows = stride / ncols;
        step_cols = stride - srows * ncols;
        step_channels = static_cast<int>(srows % nchannels);
    }

    __device__ __forceinline__ void advance()
    {
        col += step_cols;
        channel += step_channels;
        if (col >= cols) {
            col -= cols;
            channel += 1;
        }
        if (channel >= channels) {  // channel < 2 * channels here
            channel -= channels;
        }
    }
};

}  // namespace bn
