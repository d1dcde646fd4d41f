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

// The first `count` (< VEC) elements at p as a pack (the rest 0), and back: the last, partial pack
// of a flat array.
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_part(const T* p, int count)
{
    Pack<T, VEC> pk{};
#pragma unroll
    for (int i = 0; i < VEC; ++i) {  // fixed indices keep the pack in registers
        if (i < count) {
            pk.v[i] = p[i];
        }
    }
    return pk;
}

template <typename T, int VEC>
__device__ __forceinline__ void store_part(T* p, const Pack<T, VEC>& pk, int count)
{
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        if (i < count) {
            p[i] = pk.v[i];
        }
    }
}

// --- fused ReLU ---------------------------------------------------------------------------------
// relu(v) = (v <= 0 ? 0 : v): a NaN passes (the comparison is false for it) and -0 becomes +0.
__device__ __forceinline__ float relu(float v) { return v <= 0.f ? 0.f : v; }

// The gradient through a ReLU whose output was y: 0 where y <= 0, else g. With 16-bit data the
// mask reads the stored (rounded) y, which is what the next layer saw.
template <typename T>
__device__ __forceinline__ float relu_grad(float g, T y)
{
    return to_float(y) <= 0.f ? 0.f : g;
}

// A pack of the forward's output y where the gradient is masked by it (RELU), nothing otherwise:
// the non-fused kernels neither take nor load y.
template <typename T, int VEC, bool RELU>
__device__ __forceinline__ Pack<T, VEC> load_mask(const T* y, long long offset)
{
    if (RELU) {
        return load_pack<T, VEC>(y + offset);
    }
    return Pack<T, VEC>{};
}

// the same for the partial pack of `count` elements at the end of a flat array
template <typename T, int VEC, bool RELU>
__device__ __forceinline__ Pack<T, VEC> load_mask_part(const T* y, long long offset, int count)
{
    if (RELU) {
        return load_part<T, VEC>(y + offset, count);
    }
    return Pack<T, VEC>{};
}

// g, masked by element i of the y pack when RELU
template <typename T, int VEC, bool RELU>
__device__ __forceinline__ float masked(float g, const Pack<T, VEC>& py, int i)
{
    return RELU ? relu_grad(g, py.v[i]) : g;
}

// --- compensated arithmetic ------------------------------------------------------------------------
// Every kernel adds with __fadd_rn/__fsub_rn here, so neither nvcc (-fmad=false aside) nor the
// simulator's host compiler can reassociate or fuse these steps: the error terms are exact only if
// each operation rounds once, as written.

// a + b == s + e exactly (Knuth's TwoSum: no branch, any magnitudes).
__device__ __forceinline__ float two_sum(float a, float b, float& e)
{
    const float s = __fadd_rn(a, b);
    const float bb = __fsub_rn(s, a);
    e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, bb)), __fsub_rn(b, bb));
    return s;
}

// Per-thread streams are accumulated in plain float32 over chunks of at most kChunk steps, and each
// chunk is folded into a compensated total: rounding errors then grow with kChunk, not with the
// length of a thread's stream (thousands of elements when a channel is large and C is too).
constexpr int kChunk = 16;

// --- Welford statistics -------------------------------------------------------------------------

// Count / mean / sum of squared deviations, the mean and M2 as float-float pairs (value + lo), so
// merges round at the scale of the partial results' difference, not of the mean; `total` is the
// plain sum of the unshifted values, which only decides the mean of a channel holding +-Inf (+-Inf,
// as PyTorch reports it, where the shifted mean is NaN). Counts stay exact in float because the
// host keeps every block's share of a channel below 2^24 elements.
struct Welford {
    float n;
    float mean, mean_lo;
    float m2, m2_lo;
    float total;
};

__device__ __forceinline__ Welford welford_empty()
{
    Welford w;
    w.n = 0.f;
    w.mean = 0.f;
    w.mean_lo = 0.f;
    w.m2 = 0.f;
    w.m2_lo = 0.f;
    w.total = 0.f;
    return w;
}

// Chan et al.'s parallel merge in float-float. An empty side returns the other unchanged (also its
// lo parts, and no Inf * 0 from a poisoned side). The difference of the means is rounded once: it
// only scales the correction, so its error is at the scale of that difference.
__device__ __forceinline__ Welford welford_merge(const Welford& a, const Welford& b)
{
    if (b.n == 0.f) {
        return a;
    }
    if (a.n == 0.f) {
        return b;
    }
    const float n = __fadd_rn(a.n, b.n);
    const float wb = __fdiv_rn(b.n, n);
    float e;
    const float dh = two_sum(b.mean, -a.mean, e);
    const float delta = __fadd_rn(dh, __fadd_rn(e, __fsub_rn(b.mean_lo, a.mean_lo)));
    Welford r;
    r.n = n;
    r.mean = two_sum(a.mean, __fmul_rn(delta, wb), e);
    r.mean_lo = __fadd_rn(a.mean_lo, e);
    r.m2 = two_sum(a.m2, b.m2, e);
    const float between = __fmul_rn(__fmul_rn(__fmul_rn(delta, delta), a.n), wb);
    r.m2_lo = __fadd_rn(__fadd_rn(a.m2_lo, b.m2_lo), __fadd_rn(e, between));
    r.total = __fadd_rn(a.total, b.total);
    return r;
}

// Fold VEC new values (already shifted; `raw` is their unshifted sum) into a plain float32 chunk:
// the lo parts stay 0 until the chunk is merged into a compensated total. VEC > 1: the pack's own
// mean and squared deviations first (one division per pack instead of one per element).
template <int VEC>
__device__ __forceinline__ void welford_add(Welford& w, const float (&v)[VEC], float raw)
{
    w.total = __fadd_rn(w.total, raw);
    if (VEC == 1) {
        w.n = __fadd_rn(w.n, 1.f);
        const float d = __fsub_rn(v[0], w.mean);
        w.mean = __fadd_rn(w.mean, __fdiv_rn(d, w.n));
        w.m2 = __fadd_rn(w.m2, __fmul_rn(d, __fsub_rn(v[0], w.mean)));
        return;
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        s = __fadd_rn(s, v[i]);
    }
    const float pm = __fmul_rn(s, 1.f / static_cast<float>(VEC));
    float pm2 = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const float d = __fsub_rn(v[i], pm);
        pm2 = __fadd_rn(pm2, __fmul_rn(d, d));
    }
    const float n = __fadd_rn(w.n, static_cast<float>(VEC));
    const float wb = __fdiv_rn(static_cast<float>(VEC), n);
    const float delta = __fsub_rn(pm, w.mean);
    w.m2 = __fadd_rn(__fadd_rn(w.m2, pm2), __fmul_rn(__fmul_rn(__fmul_rn(delta, delta), w.n), wb));
    w.mean = __fadd_rn(w.mean, __fmul_rn(delta, wb));
    w.n = n;
}

// A thread's Welford statistics: float32 chunks folded into a compensated total (see kChunk).
struct WelfordStream {
    Welford total;
    Welford chunk;
    int steps;

    __device__ __forceinline__ WelfordStream() : total(welford_empty()), chunk(welford_empty()), steps(0) {}

    template <int VEC>
    __device__ __forceinline__ void add(const float (&v)[VEC], float raw)
    {
        welford_add<VEC>(chunk, v, raw);
        if (++steps == kChunk) {
            total = welford_merge(total, chunk);
            chunk = welford_empty();
            steps = 0;
        }
    }

    __device__ __forceinline__ Welford result() const { return welford_merge(total, chunk); }
};

// Folds K packs' values into a thread's statistics as one batch: each value shifted by the
// channel's first value (kept exact near the mean), their plain sum kept beside (the NaN/Inf path).
template <typename T, int VEC, int K>
__device__ __forceinline__ void add_packs(WelfordStream& acc, const Pack<T, VEC> (&pk)[K], float shift)
{
    float v[K * VEC];
    float raw = 0.f;
#pragma unroll
    for (int u = 0; u < K; ++u) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float xi = to_float(pk[u].v[i]);
            raw = __fadd_rn(raw, xi);
            v[u * VEC + i] = __fsub_rn(xi, shift);
        }
    }
    acc.add<K * VEC>(v, raw);
}

__device__ __forceinline__ Welford warp_reduce(Welford w)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        Welford o;
        o.n = __shfl_down_sync(0xffffffffu, w.n, off);
        o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
        o.mean_lo = __shfl_down_sync(0xffffffffu, w.mean_lo, off);
        o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
        o.m2_lo = __shfl_down_sync(0xffffffffu, w.m2_lo, off);
        o.total = __shfl_down_sync(0xffffffffu, w.total, off);
        w = welford_merge(w, o);
    }
    return w;
}

// --- compensated sums (backward: sum(dy), sum(dy * (x - mean)), sum(x - mean)) -------------------

// K running sums as float-float pairs.
template <int K>
struct Sums {
    float hi[K];
    float lo[K];
};

template <int K>
__device__ __forceinline__ Sums<K> sums_empty()
{
    Sums<K> s;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        s.hi[i] = 0.f;
        s.lo[i] = 0.f;
    }
    return s;
}

template <int K>
__device__ __forceinline__ Sums<K> sums_merge(const Sums<K>& a, const Sums<K>& b)
{
    Sums<K> r;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        float e;
        r.hi[i] = two_sum(a.hi[i], b.hi[i], e);
        r.lo[i] = __fadd_rn(__fadd_rn(a.lo[i], b.lo[i]), e);
    }
    return r;
}

// A thread's K sums: float32 chunks folded into a compensated total (see kChunk).
template <int K>
struct SumStream {
    Sums<K> total;
    float part[K];
    int steps;

    __device__ __forceinline__ SumStream() : total(sums_empty<K>()), steps(0)
    {
#pragma unroll
        for (int i = 0; i < K; ++i) {
            part[i] = 0.f;
        }
    }

    // one step adds one or more terms to sum i; call flush_step() after each step
    __device__ __forceinline__ void add(int i, float v) { part[i] = __fadd_rn(part[i], v); }

    __device__ __forceinline__ void flush_step()
    {
        if (++steps == kChunk) {
            total = result();
#pragma unroll
            for (int i = 0; i < K; ++i) {
                part[i] = 0.f;
            }
            steps = 0;
        }
    }

    // the total with the open chunk folded in
    __device__ __forceinline__ Sums<K> result() const
    {
        Sums<K> c;
#pragma unroll
        for (int i = 0; i < K; ++i) {
            c.hi[i] = part[i];
            c.lo[i] = 0.f;
        }
        return sums_merge(total, c);
    }
};

template <int K>
__device__ __forceinline__ Sums<K> warp_reduce(Sums<K> s)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        Sums<K> o;
#pragma unroll
        for (int i = 0; i < K; ++i) {
            o.hi[i] = __shfl_down_sync(0xffffffffu, s.hi[i], off);
            o.lo[i] = __shfl_down_sync(0xffffffffu, s.lo[i], off);
        }
        s = sums_merge(s, o);
    }
    return s;
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

// --- per-channel float64 (finalize steps: a warp per channel, a few partials per lane) ----------

// Welford statistics in float64, for merging block partials once per channel.
struct WelfordD {
    double n, mean, m2, total;
};

// The float64 value of a float-float pair. An infinite sum leaves a NaN error term (Inf - Inf
// inside two_sum); the value is then the infinite part alone, as a plain sum would give.
__device__ __forceinline__ double ff_value(float hi, float lo)
{
    const double h = hi;
    return h - h == 0.0 ? h + static_cast<double>(lo) : h;
}

__device__ __forceinline__ WelfordD to_double(const Welford& w)
{
    WelfordD d;
    d.n = w.n;
    d.mean = ff_value(w.mean, w.mean_lo);
    d.m2 = ff_value(w.m2, w.m2_lo);
    d.total = w.total;
    return d;
}

__device__ __forceinline__ WelfordD welford_merge(const WelfordD& a, const WelfordD& b)
{
    if (b.n == 0.0) {
        return a;
    }
    if (a.n == 0.0) {
        return b;
    }
    const double n = a.n + b.n;
    const double wb = b.n / n;
    const double delta = b.mean - a.mean;
    WelfordD r;
    r.n = n;
    r.mean = a.mean + delta * wb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    r.total = a.total + b.total;
    return r;
}

__device__ __forceinline__ WelfordD warp_reduce(WelfordD w)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        WelfordD o;
        o.n = __shfl_down_sync(0xffffffffu, w.n, off);
        o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
        o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
        o.total = __shfl_down_sync(0xffffffffu, w.total, off);
        w = welford_merge(w, o);
    }
    return w;
}

// A rounding-level correction term, or 0 where it is not finite: with an Inf in the data, the
// result is the uncorrected formula's (PyTorch's), not the Inf - Inf = NaN a correction would add.
__device__ __forceinline__ double correction(double v) { return v - v == 0.0 ? v : 0.0; }

// Mean and biased variance of merged statistics `w` of values shifted by `shift`. A channel
// holding +-Inf has a NaN shifted mean; its plain total then gives PyTorch's +-Inf (NaN when both
// signs or a NaN are present). Rounding can leave a finite variance slightly negative: that clamps
// to 0, but a NaN stays NaN (the comparison is false for it).
__device__ __forceinline__ void welford_finish(const WelfordD& w, double shift, double& mean,
                                               double& var)
{
    mean = shift + w.mean;
    if (mean != mean && fabs(w.total) > 1.7976931348623157e308) {  // total is +-Inf
        mean = w.total;
    }
    var = w.m2 / w.n;
    if (var < 0.0) {
        var = 0.0;
    }
}

// --- block partials (the reductions' last blocks and per_row.cu's finalize kernels read them;
// every source that feeds them writes these formats) ------------------------------------------

// Block partials are float32 records of kPartial values: count, mean, mean_lo, M2, M2_lo of the
// shifted values, the plain total (see Welford) and the shift. Written once per block, read once
// per channel by stats_finalize, which merges them in float64 (the per-element loops stay float32).
constexpr int kPartial = 7;

__device__ __forceinline__ void write_partial(float* out, const Welford& w, float shift)
{
    out[0] = w.n;
    out[1] = w.mean;
    out[2] = w.mean_lo;
    out[3] = w.m2;
    out[4] = w.m2_lo;
    out[5] = w.total;
    out[6] = shift;
}

__device__ __forceinline__ WelfordD read_partial(const float* p)
{
    Welford w;
    w.n = p[0];
    w.mean = p[1];
    w.mean_lo = p[2];
    w.m2 = p[3];
    w.m2_lo = p[4];
    w.total = p[5];
    return to_double(w);
}

// The backward sums of a channel: sum(dy), sum(dy * (x - m)) and sum(x - m), m = savemean. The
// last one gives the exact batch mean's offset from the float32 savemean, so the gradients are
// those of the exact mean (the float32 mean would cost up to 0.5 ulp(mean) / std in every xhat).
constexpr int kSums = 3;
constexpr int kSumPartial = 2 * kSums;  // float-float pairs per block partial

__device__ __forceinline__ void write_sums(float* out, const Sums<kSums>& r)
{
#pragma unroll
    for (int i = 0; i < kSums; ++i) {
        out[2 * i] = r.hi[i];
        out[2 * i + 1] = r.lo[i];
    }
}

// Adds one element's terms to the three backward sums.
__device__ __forceinline__ void backward_terms(SumStream<kSums>& acc, float g, float xm)
{
    acc.add(0, g);
    acc.add(1, __fmul_rn(g, xm));
    acc.add(2, xm);
}

// --- finishing a reduction in its own launch ---------------------------------------------------
// Each block of a channel group (a channel, or a tile of channels) writes its partial, then counts
// itself done on the group's counter; the block that counts last merges every partial of the
// group in the fixed order below (lane-strided in float64, then a shuffle-down tree: the order
// depends on nsplit only, never on which block came last), so statistics take one launch and stay
// bitwise repeatable. The counters start at 0 and the last block sets its back to 0, so the same
// workspace serves the next launch without a reset.

// After this block's partial records are written: true in every thread of the block if it is the
// last block of its group to get here; all the group's records are then visible to it. `wrote`:
// this thread wrote records; `writers`: how many threads of each block of the group write them.
// Each writer counts itself after its own fence, so the count completes only after every record
// of the group is visible device-wide. Must be reached by every thread of the block.
__device__ __forceinline__ bool last_block(unsigned int* counter, unsigned int blocks, bool wrote,
                                           unsigned int writers)
{
    int last = 0;
    if (wrote) {
        __threadfence();
        last = atomicAdd(counter, 1u) == blocks * writers - 1;
        if (last) {
            atomicExch(counter, 0u);  // every count is in: the counter is free for the next launch
        }
    }
    // the block's verdict, and a barrier after which its own threads' records are visible to it
    if (__syncthreads_or(last)) {
        __threadfence();
        return true;
    }
    return false;
}

// Where the statistics go (see stats_finalize).
struct StatsOut {
    double eps, factor;
    const float* scale;
    float* savemean;
    float* saveinvvar;
    float* a;
    float* run_mean;
    float* run_var;
};

// Where the backward sums go (see backward_finalize).
struct SumsOut {
    const float* scale;
    const float* saveinvvar;
    float* dscale;
    float* dbias;
    float* coef;
};

// Every block of group `ch` (a channel of persistent.cu, a channel tile of rows_channels.cu) waits
// here until all `nsplit` of them have published their partials (thread 0's own writes are released
// by the fence here; other threads that wrote fence before the block's __syncthreads that precedes
// the call). Thread 0 reads the generation before arriving: it can
// only advance after this block's arrival. The fence before the arrival releases the partial;
// after the wait, an atomic on the arrival counter acquires every block's release (each was made
// on that address) before the partials are read.
__device__ __forceinline__ void channel_barrier(unsigned int* sync, int ch, int nsplit)
{
    if (nsplit > 1 && threadIdx.x == 0) {
        unsigned int* arrived = sync + 2 * ch;
        unsigned int* generation = arrived + 1;
        const unsigned int seen = atomicAdd(generation, 0u);
        __threadfence();
        if (atomicAdd(arrived, 1u) == static_cast<unsigned int>(nsplit - 1)) {
            atomicExch(arrived, 0u);  // ready for the next launch
            __threadfence();
            atomicAdd(generation, 1u);
        } else {
            while (atomicAdd(generation, 0u) == seen) {
#if __CUDA_ARCH__ >= 700
                __nanosleep(64);
#endif
            }
        }
        atomicAdd(arrived, 0u);
        __threadfence();
    }
    __syncthreads();
}

// A partial record written by another block of this launch: read through L2 (__ldcg), never from
// a stale L1 line.
__device__ __forceinline__ WelfordD read_partial_cg(const float* p)
{
    Welford w;
    w.n = __ldcg(p);
    w.mean = __ldcg(p + 1);
    w.mean_lo = __ldcg(p + 2);
    w.m2 = __ldcg(p + 3);
    w.m2_lo = __ldcg(p + 4);
    w.total = __ldcg(p + 5);
    return to_double(w);
}

// One warp (all 32 lanes) finishes channel ch: merges its nsplit partials in float64, then writes
// savemean, saveinvvar, the normalize factor a = scale / sqrt(var + eps) (as frozen_factor and
// the CPU backend compute it) and updates the running statistics, each rounded once from float64.
__device__ __forceinline__ void stats_finalize(const float* part, int ch, int nsplit, int lane,
                                               const StatsOut& o)
{
    const float* base = part + static_cast<long long>(ch) * nsplit * kPartial;
    WelfordD w = {0.0, 0.0, 0.0, 0.0};
    for (int b = lane; b < nsplit; b += 32) {
        w = welford_merge(w, read_partial_cg(base + b * kPartial));
    }
    w = warp_reduce(w);
    if (lane == 0) {
        double mean, var;
        welford_finish(w, __ldcg(base + 6), mean, var);
        const double invstd = 1.0 / sqrt(var + o.eps);
        o.savemean[ch] = static_cast<float>(mean);
        o.saveinvvar[ch] = static_cast<float>(invstd);
        o.a[ch] = static_cast<float>(static_cast<double>(o.scale[ch]) / sqrt(var + o.eps));
        const double keep = 1.0 - o.factor;
        o.run_mean[ch] = static_cast<float>(keep * o.run_mean[ch] + o.factor * mean);
        o.run_var[ch] = static_cast<float>(keep * o.run_var[ch] +
                                           o.factor * (var * (w.n / (w.n - 1.0))));
    }
}

// One warp finishes channel ch's backward sums over m values: merges the partial sums in float64
// in a fixed order, writes the parameter gradients and the dx coefficients coef[3 ch ..] =
// (k, c0, c1), each computed in float64 and rounded once: with r = exact mean - savemean,
// dscale = (sum(dy (x - m)) - r sum(dy)) * invstd, k = scale * invstd,
// c1 = k * invstd * dscale / m, c0 = k * dbias / m - r * c1.
// One warp merges channel ch's backward partials in float64 in a fixed order; on lane 0, f holds
// (dbias, dscale, k, c0, c1), each computed in float64 (see backward_finalize).
__device__ __forceinline__ void backward_factors(const float* part, int ch, int nsplit, long long m,
                                                 int lane, const float* scale,
                                                 const float* saveinvvar, double (&f)[5])
{
    const float* base = part + static_cast<long long>(ch) * nsplit * kSumPartial;
    double sum[kSums] = {0.0, 0.0, 0.0};
    for (int b = lane; b < nsplit; b += 32) {
        const float* p = base + b * kSumPartial;
#pragma unroll
        for (int i = 0; i < kSums; ++i) {
            sum[i] += ff_value(__ldcg(p + 2 * i), __ldcg(p + 2 * i + 1));
        }
    }
#pragma unroll
    for (int i = 0; i < kSums; ++i) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            sum[i] += __shfl_down_sync(0xffffffffu, sum[i], off);
        }
    }
    if (lane == 0) {
        const double fm = static_cast<double>(m);
        const double r = sum[2] / fm;  // exact mean - savemean
        const double invstd = saveinvvar[ch];
        const double gs = (sum[1] - correction(r * sum[0])) * invstd;
        const double k = static_cast<double>(scale[ch]) * invstd;
        const double c1 = k * invstd * gs / fm;
        f[0] = sum[0];
        f[1] = gs;
        f[2] = k;
        f[3] = k * sum[0] / fm - correction(r * c1);
        f[4] = c1;
    }
}

__device__ __forceinline__ void backward_finalize(const float* part, int ch, int nsplit,
                                                  long long m, int lane, const SumsOut& o)
{
    double f[5];
    backward_factors(part, ch, nsplit, m, lane, o.scale, o.saveinvvar, f);
    if (lane == 0) {
        o.dbias[ch] = static_cast<float>(f[0]);
        o.dscale[ch] = static_cast<float>(f[1]);
        o.coef[ch * 3 + 0] = static_cast<float>(f[2]);
        o.coef[ch * 3 + 1] = static_cast<float>(f[3]);
        o.coef[ch * 3 + 2] = static_cast<float>(f[4]);
    }
}

// The last block of a group of `count` channels from `first` (those below c) finishes them, one
// warp per channel in turn: fin(ch, lane).
template <typename Fin>
__device__ __forceinline__ void finish_channels(int first, int count, int c, const Fin& fin)
{
    const int lane = threadIdx.x & 31;
    for (int k = threadIdx.x >> 5; k < count && first + k < c; k += kWarps) {
        fin(first + k, lane);
    }
}

__device__ __forceinline__ Welford reduce_identity(Welford) { return welford_empty(); }
template <int K>
__device__ __forceinline__ Sums<K> reduce_identity(Sums<K>) { return sums_empty<K>(); }
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
