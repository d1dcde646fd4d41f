// Batch normalization of rows x channels data (R, C), channels contiguous: BatchNorm on (N, C) and
// every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C)) are this one problem.
// Compiles standalone with nvcc; kernels/norm/cuda.py compiles it once per process with pycuda's
// SourceModule and launches the extern "C" entries.
//
// Threads run along C: lane i of a warp owns channels [VEC * i, VEC * i + VEC) of a 32 * VEC
// channel tile, so a warp reads 32 * VEC contiguous elements of a row (coalesced; 128-bit loads
// on the _vec entries, launched only when every data pointer is 16-byte aligned and C is a
// multiple of VEC). Reductions: a (ceil(C / (32 VEC)), nsplit) grid, each block owning a channel
// tile over one contiguous range of rows; its 8 warps take interleaved rows and are merged per
// channel in warp order. The partials hold batchnorm.cu's fields (bn::kPartial, bn::kSumPartial)
// with its numerics (values shifted by the channel's first one, float32 chunks folded into
// float-float totals), laid out planar so that they are written and read whole sectors at a time,
// and the last block of each tile to finish (bn::last_block) merges them in float64 in a fixed
// order: no float atomics, results bitwise repeatable and dependent on the shape only. The elementwise passes take the reductions'
// per-channel factors (the normalize factor a, the dx coefficients), or compute the inference
// factor themselves as bn::frozen_factor does (inference is one launch), and round
// as batchnorm.cu's kernels do.
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
};

// --- block partials, planar ---------------------------------------------------------------------
// A block's partial records go out field by field: part[(split * K + field) * cp + channel], cp =
// C rounded up to 8 floats, so consecutive threads write (and the tile's last block reads)
// consecutive channels of one field and every 32-byte sector is used whole. The block first
// gathers its tile's records in shared memory, rec[field][channel in tile].

__device__ __forceinline__ int padded_channels(int c) { return (c + 7) & ~7; }

// A channel's three backward sums in float64 (the last block's merge).
struct Sum3 {
    double s0, s1, s2;
};

// Writes the block's K-float records of its tile's `valid` channels; true in the threads that
// wrote (min(kBlock, K * valid) of them in every block of the tile).
template <int K, int TILE>
__device__ __forceinline__ bool write_records(const float (&rec)[K][TILE], float* part, int c,
                                              int valid)
{
    const int cp = padded_channels(c);
    const int first = blockIdx.x * TILE;
    for (int i = threadIdx.x; i < K * valid; i += kBlock) {
        const int f = i / valid;
        const int k = i - f * valid;
        part[(static_cast<long long>(blockIdx.y) * K + f) * cp + first + k] = rec[f][k];
    }
    return static_cast<int>(threadIdx.x) < K * valid;
}

// The tile's last block merges its channels' records: TILE channels x kBlock / TILE threads per
// channel; thread p of a channel merges splits p, p + P, ... in order, then the first merges the
// P results in p order (fixed by the shape). read(split, channel) -> R, merge(R, R) -> R,
// finish(R, channel) on the first thread of each channel.
template <int TILE, typename R, typename Read, typename Merge, typename Finish>
__device__ __forceinline__ void finish_tile(int nsplit, int c, R empty, const Read& read,
                                            const Merge& merge, const Finish& finish)
{
    constexpr int P = kBlock / TILE;
    __shared__ R acc[kBlock];
    const int k = threadIdx.x % TILE;
    const int p = threadIdx.x / TILE;
    const int ch = blockIdx.x * TILE + k;
    R r = empty;
    if (ch < c) {
        for (int b = p; b < nsplit; b += P) {
            r = merge(r, read(b, ch));
        }
    }
    if (P > 1) {
        acc[threadIdx.x] = r;
        __syncthreads();
        if (p == 0) {
#pragma unroll
            for (int q = 1; q < P; ++q) {
                r = merge(r, acc[q * TILE + k]);
            }
        }
    }
    if (p == 0 && ch < c) {
        finish(r, ch);
    }
}

// --- batch statistics ---------------------------------------------------------------------------

// Welford per channel over the split's rows, shifted by the channel's row-0 value (the same shift
// in every split). kUnroll rows are loaded before any is used and each channel takes them as one
// batch (one division per batch, not per value); the VEC channels of a lane step together, so one
// step counter closes all their float32 chunks (bn::kChunk batches) at once. The tile's last
// block merges the partials in float64 and writes the statistics (as bn::stats_finalize).
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c, unsigned int* counters,
                                              const bn::StatsOut& out)
{
    constexpr int kTile = 32 * VEC;
    // per-warp results, one per thread, merged by warp 0 one pack position at a time (so the tile
    // does not grow with VEC)
    __shared__ Welford tile[kWarps][32];
    __shared__ float rec[bn::kPartial][kTile];
    const Tile t = Tile::make<VEC>(n);
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
        // K rows' values into the chunks, one batch per channel; a chunk closes after bn::kChunk
        // batches
        auto add_rows = [&](const auto& pk) {
            constexpr int K = sizeof(pk) / sizeof(pk[0]);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                float v[K];
                float raw = 0.f;
#pragma unroll
                for (int u = 0; u < K; ++u) {
                    const float xi = to_float(pk[u].v[i]);
                    raw = __fadd_rn(raw, xi);
                    v[u] = __fsub_rn(xi, shift[i]);
                }
                bn::welford_add<K>(chunk[i], v, raw);
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
        long long row = t.begin + t.warp;
        for (; row + (kUnroll - 1) * kWarps < t.end; row += kUnroll * kWarps) {
            Pack<T, VEC> pk[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                pk[u] = load_pack<T, VEC>(x + (row + u * kWarps) * c + t.ch0);
            }
            add_rows(pk);
        }
        for (; row < t.end; row += kWarps) {
            const Pack<T, VEC> pk[1] = {load_pack<T, VEC>(x + row * c + t.ch0)};
            add_rows(pk);
        }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        tile[t.warp][t.lane] = bn::welford_merge(total[i], chunk[i]);
        __syncthreads();
        if (t.warp == 0) {
            const Welford r = merge_warps(tile, t.lane);
            const int k = t.lane * VEC + i;
            rec[0][k] = r.n;
            rec[1][k] = r.mean;
            rec[2][k] = r.mean_lo;
            rec[3][k] = r.m2;
            rec[4][k] = r.m2_lo;
            rec[5][k] = r.total;
            rec[6][k] = shift[i];
        }
        __syncthreads();  // the tile is reused for the next pack position
    }
    const int valid = min(kTile, c - static_cast<int>(blockIdx.x) * kTile);
    const bool wrote = write_records(rec, part, c, valid);
    const unsigned int writers = static_cast<unsigned int>(min(kBlock, bn::kPartial * valid));
    if (!bn::last_block(counters + blockIdx.x, gridDim.y, wrote, writers)) {
        return;
    }
    const int cp = padded_channels(c);
    const int nsplit = gridDim.y;
    finish_tile<kTile>(
        nsplit, c, bn::WelfordD{0.0, 0.0, 0.0, 0.0},
        [&](int b, int ch) {
            const float* p = part + static_cast<long long>(b) * bn::kPartial * cp + ch;
            Welford w;
            w.n = __ldcg(p);
            w.mean = __ldcg(p + cp);
            w.mean_lo = __ldcg(p + 2 * cp);
            w.m2 = __ldcg(p + 3 * cp);
            w.m2_lo = __ldcg(p + 4 * cp);
            w.total = __ldcg(p + 5 * cp);
            return bn::to_double(w);
        },
        [](const bn::WelfordD& a, const bn::WelfordD& b) { return bn::welford_merge(a, b); },
        [&](const bn::WelfordD& w, int ch) {
            // as bn::stats_finalize: each figure computed in float64 and rounded once
            double mean, var;
            bn::welford_finish(w, __ldcg(part + 6 * cp + ch), mean, var);
            const double invstd = 1.0 / sqrt(var + out.eps);
            out.savemean[ch] = static_cast<float>(mean);
            out.saveinvvar[ch] = static_cast<float>(invstd);
            out.a[ch] = static_cast<float>(static_cast<double>(out.scale[ch]) / sqrt(var + out.eps));
            const double keep = 1.0 - out.factor;
            out.run_mean[ch] = static_cast<float>(keep * out.run_mean[ch] + out.factor * mean);
            out.run_var[ch] = static_cast<float>(keep * out.run_var[ch] +
                                                 out.factor * (var * (w.n / (w.n - 1.0))));
        });
}

// --- backward sums ------------------------------------------------------------------------------

// bn::kSums compensated sums per channel (sum(dy), sum(dy * (x - m)), sum(x - m)), as
// batchnorm.cu's backward partials; RELU: dy masked by the forward's output y. The tile's last
// block merges them in float64 and writes the parameter gradients and dx coefficients (as
// bn::backward_finalize).
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const T* __restrict__ y,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c,
                                                 unsigned int* counters, const bn::SumsOut& out)
{
    constexpr int kTile = 32 * VEC;
    __shared__ Sums<bn::kSums> tile[kWarps][32];
    __shared__ float rec[bn::kSumPartial][kTile];
    const Tile t = Tile::make<VEC>(n);
    __shared__ float staged_mean[kTile];
    const int valid = min(kTile, c - static_cast<int>(blockIdx.x) * kTile);
    // the tile's means, consecutive threads on consecutive channels (lanes VEC channels apart
    // would use a fraction of each sector they touch)
    for (int i = threadIdx.x; i < valid; i += kBlock) {
        staged_mean[i] = savemean[blockIdx.x * kTile + i];
    }
    __syncthreads();
    bn::SumStream<bn::kSums> acc[VEC];
    float m[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        m[i] = 0.f;
    }
    if (t.ch0 < c) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            m[i] = staged_mean[t.lane * VEC + i];
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
        if (t.warp == 0) {
            const Sums<bn::kSums> r = merge_warps(tile, t.lane);
#pragma unroll
            for (int s = 0; s < bn::kSums; ++s) {
                rec[2 * s][t.lane * VEC + i] = r.hi[s];
                rec[2 * s + 1][t.lane * VEC + i] = r.lo[s];
            }
        }
        __syncthreads();
    }
    const bool wrote = write_records(rec, part, c, valid);
    const unsigned int writers = static_cast<unsigned int>(min(kBlock, bn::kSumPartial * valid));
    if (!bn::last_block(counters + blockIdx.x, gridDim.y, wrote, writers)) {
        return;
    }
    const int cp = padded_channels(c);
    __shared__ float coef_tile[3 * kTile];
    finish_tile<kTile>(
        static_cast<int>(gridDim.y), c, Sum3{0.0, 0.0, 0.0},
        [&](int b, int ch) {
            const float* p = part + static_cast<long long>(b) * bn::kSumPartial * cp + ch;
            return Sum3{bn::ff_value(__ldcg(p), __ldcg(p + cp)),
                           bn::ff_value(__ldcg(p + 2 * cp), __ldcg(p + 3 * cp)),
                           bn::ff_value(__ldcg(p + 4 * cp), __ldcg(p + 5 * cp))};
        },
        [](const Sum3& a, const Sum3& b) { return Sum3{a.s0 + b.s0, a.s1 + b.s1, a.s2 + b.s2}; },
        [&](const Sum3& sum, int ch) {
            // as bn::backward_factors: r = exact mean - savemean, each figure in float64,
            // rounded once
            const double fm = static_cast<double>(n);
            const double r = sum.s2 / fm;
            const double invstd = out.saveinvvar[ch];
            const double gs = (sum.s1 - bn::correction(r * sum.s0)) * invstd;
            const double k = static_cast<double>(out.scale[ch]) * invstd;
            const double c1 = k * invstd * gs / fm;
            out.dbias[ch] = static_cast<float>(sum.s0);
            out.dscale[ch] = static_cast<float>(gs);
            float* kc = coef_tile + 3 * (ch - static_cast<int>(blockIdx.x) * kTile);
            kc[0] = static_cast<float>(k);
            kc[1] = static_cast<float>(k * sum.s0 / fm - bn::correction(r * c1));
            kc[2] = static_cast<float>(c1);
        });
    // the coefficients out as consecutive floats (a thread per channel would write 12 bytes apart)
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * valid; i += kBlock) {
        out.coef[3 * blockIdx.x * kTile + i] = coef_tile[i];
    }
}

// --- elementwise passes -------------------------------------------------------------------------
// Each thread keeps one column (a pack of VEC channels) for the whole pass: the grid's threads are
// used in whole rows (step = a multiple of the columns, the host launches at least one row of
// threads), so a thread's per-channel constants are read once, not once per element. A block's
// threads cover consecutive columns (modulo the row), so the block first copies the constants of
// those columns to shared memory with consecutive threads on consecutive floats (every sector of
// the copy used in full: per-lane pack reads of 8 floats, 16-bit data, would use half of each),
// then each thread takes its own into registers.

// Packs in flight per thread: two 16-byte packs on the vector paths, 16 bytes of scalars (at
// least 4) otherwise, loaded before any is computed and stored (the output may alias the input,
// so the compiler could not hoist a later load above an earlier store by itself).
template <typename T, int VEC>
__host__ __device__ constexpr int elementwise_unroll()
{
    return VEC > 1 ? 2 : (16 / sizeof(T) > 4 ? static_cast<int>(16 / sizeof(T)) : 4);
}

template <int VEC>
struct Columns {
    long long total;  // packs
    long long step;   // packs between a thread's successive packs: whole rows
    long long j;      // this thread's first pack
    int first;        // the block's first column
    int local;        // this thread's column - first, modulo the row
    int span;         // columns the block covers

    __device__ __forceinline__ static Columns make(long long n, int c)
    {
        Columns w;
        const int cols = c / VEC;
        w.total = n * cols;
        w.step = static_cast<long long>(gridDim.x) * kBlock / cols * cols;
        w.j = static_cast<long long>(blockIdx.x) * kBlock + threadIdx.x;
        w.first = static_cast<int>(static_cast<long long>(blockIdx.x) * kBlock % cols);
        w.local = static_cast<int>(w.j % cols) - w.first;
        if (w.local < 0) {
            w.local += cols;
        }
        w.span = min(kBlock, cols);
        return w;
    }

    // Copies the block's constants from src (per floats per channel, channel-major) to dst: dst
    // holds span * VEC channels from the block's first, wrapping at c. Every thread of the block
    // must call it; the caller synchronizes.
    __device__ __forceinline__ void stage(float* dst, const float* __restrict__ src, int c,
                                          int per) const
    {
        const int count = span * VEC * per;
        const int all = c * per;
        const int from = first * VEC * per;
        for (int i = threadIdx.x; i < count; i += kBlock) {
            const int k = from + i;
            dst[i] = src[k < all ? k : k - all];
        }
    }

    // The inference factors a = scale / sqrt(run_var + eps) of the block's channels, each in
    // float64 and rounded once (bn::frozen_factor, once per channel per block).
    __device__ __forceinline__ void stage_factor(float* dst, const float* __restrict__ scale,
                                                 const float* __restrict__ run_var, double eps,
                                                 int c) const
    {
        const int count = span * VEC;
        const int from = first * VEC;
        for (int i = threadIdx.x; i < count; i += kBlock) {
            const int k = from + i < c ? from + i : from + i - c;
            dst[i] = static_cast<float>(static_cast<double>(scale[k]) / sqrt(run_var[k] + eps));
        }
    }

    // this thread's VEC constants (per floats each, channel-major) from the staged copy
    template <int PER>
    __device__ __forceinline__ void take(float (&dst)[VEC * PER], const float* staged) const
    {
#pragma unroll
        for (int i = 0; i < VEC * PER; ++i) {
            dst[i] = staged[local * VEC * PER + i];
        }
    }
};

// Runs finish(j, load(j)) over this thread's packs j, U loads issued before their use.
template <int U, int VEC, typename Load, typename Finish>
__device__ __forceinline__ void column_stream(const Columns<VEC>& w, const Load& load,
                                              const Finish& finish)
{
    if (w.j >= w.step) {
        return;  // past the last whole row of threads
    }
    using In = decltype(load(0LL));
    long long j = w.j;
    for (; j + (U - 1) * w.step < w.total; j += U * w.step) {
        In in[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            in[u] = load(j + u * w.step);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            finish(j + u * w.step, in[u]);
        }
    }
    for (; j < w.total; j += w.step) {
        In in = load(j);
        finish(j, in);
    }
}

template <typename T, int VEC>
struct Loaded {
    Pack<T, VEC> x, g, y;  // data, gradient, the ReLU mask (unused where not needed)
};

// y = fma(x - mean, a, bias) per channel, a = rc_stats_partial_*'s factor (training) or, INFER,
// scale / sqrt(run_var + eps) computed here from `a` = scale and `run_var` (as
// bn::frozen_factor); as batchnorm.cu's normalize (relu too when RELU). y may be x.
template <typename T, int VEC, bool RELU = false, bool INFER = false>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* __restrict__ mean,
                                          const float* __restrict__ a,
                                          const float* __restrict__ run_var, double eps,
                                          const float* __restrict__ bias, long long n, int c)
{
    __shared__ float staged[3][kBlock * VEC];
    const Columns<VEC> w = Columns<VEC>::make(n, c);
    w.stage(staged[0], mean, c, 1);
    if (INFER) {
        w.stage_factor(staged[1], a, run_var, eps, c);
    } else {
        w.stage(staged[1], a, c, 1);
    }
    w.stage(staged[2], bias, c, 1);
    __syncthreads();
    float m[VEC], k[VEC], b[VEC];
    w.template take<1>(m, staged[0]);
    w.template take<1>(k, staged[1]);
    w.template take<1>(b, staged[2]);
    column_stream<elementwise_unroll<T, VEC>()>(
        w, [&](long long j) { return load_pack<T, VEC>(x + j * VEC); },
        [&](long long j, Pack<T, VEC>& pk) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float v = fmaf(__fsub_rn(to_float(pk.v[i]), m[i]), k[i], b[i]);
                pk.v[i] = from_float<T>(RELU ? bn::relu(v) : v);
            }
            store_pack<T, VEC>(y + j * VEC, pk);
        });
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
    __shared__ float staged_mean[kBlock * VEC];
    __shared__ float staged_coef[3 * kBlock * VEC];
    const Columns<VEC> w = Columns<VEC>::make(n, c);
    w.stage(staged_mean, savemean, c, 1);
    w.stage(staged_coef, coef, c, 3);
    __syncthreads();
    float m[VEC], k3[3 * VEC];
    w.template take<1>(m, staged_mean);
    w.template take<3>(k3, staged_coef);
    column_stream<elementwise_unroll<T, VEC>()>(
        w,
        [&](long long j) {
            Loaded<T, VEC> in;
            in.x = load_pack<T, VEC>(x + j * VEC);
            in.g = load_pack<T, VEC>(dy + j * VEC);
            in.y = load_mask<T, VEC, RELU>(y, j * VEC);
            return in;
        },
        [&](long long j, Loaded<T, VEC>& in) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float u = fmaf(__fsub_rn(to_float(in.x.v[i]), m[i]), k3[3 * i + 2],
                                     k3[3 * i + 1]);
                const float g = masked<T, VEC, RELU>(to_float(in.g.v[i]), in.y, i);
                in.g.v[i] = from_float<T>(fmaf(g, k3[3 * i], -u));
            }
            store_pack<T, VEC>(dx + j * VEC, in.g);
        });
}

// dx = dy * k with frozen statistics, k = scale / sqrt(run_var + eps) computed here per channel
// (as bn::frozen_factor); dy masked by y when RELU.
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_infer(const T* __restrict__ dy, const T* __restrict__ y,
                                               const float* __restrict__ scale,
                                               const float* __restrict__ run_var, double eps,
                                               T* __restrict__ dx, long long n, int c)
{
    __shared__ float staged[kBlock * VEC];
    const Columns<VEC> w = Columns<VEC>::make(n, c);
    w.stage_factor(staged, scale, run_var, eps, c);
    __syncthreads();
    float k[VEC];
    w.template take<1>(k, staged);
    column_stream<elementwise_unroll<T, VEC>()>(
        w,
        [&](long long j) {
            Loaded<T, VEC> in;
            in.g = load_pack<T, VEC>(dy + j * VEC);
            in.y = load_mask<T, VEC, RELU>(y, j * VEC);
            return in;
        },
        [&](long long j, Loaded<T, VEC>& in) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float g = masked<T, VEC, RELU>(to_float(in.g.v[i]), in.y, i);
                in.g.v[i] = from_float<T>(__fmul_rn(g, k[i]));
            }
            store_pack<T, VEC>(dx + j * VEC, in.g);
        });
}

}  // namespace rc

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only; 256-thread blocks. Reductions: grid (ceil(C / (32 VEC)), nsplit), and
// in the same launch, the last block of each channel tile finishes it (one counter per tile, all 0
// and left 0). Elementwise: a 1-D grid of at least C / VEC threads, used in whole rows.

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

// Training normalization y = fmaf(x - savemean, a, bias), a from rc_stats_partial_*; y may be x.
extern "C" __global__ void rc_normalize_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 1>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 4>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}

// Inference normalization in one launch: y = fmaf(x - run_mean, a, bias), a = scale /
// sqrt(run_var + eps) computed per channel in each block (float64, rounded once).
extern "C" __global__ void rc_normalize_infer_f32(const float* x, float* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<float, 1, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_f32_vec(const float* x, float* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<float, 4, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_f16(const __half* x, __half* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_f16_vec(const __half* x, __half* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, false, true>(x, y, mean, scale, run_var, eps, bias, n, c);
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

// Backward with frozen statistics: dx = dy * k, k = scale / sqrt(run_var + eps) computed per
// channel in each block (float64, rounded once), one launch.
extern "C" __global__ void rc_backward_infer_f32(const float* dy, const float* scale, const float* run_var, double eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 1>(dy, nullptr, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f32_vec(const float* dy, const float* scale, const float* run_var, double eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 4>(dy, nullptr, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16(const __half* dy, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 1>(dy, nullptr, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_f16_vec(const __half* dy, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 8>(dy, nullptr, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16(const __nv_bfloat16* dy, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 1>(dy, nullptr, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_bf16_vec(const __nv_bfloat16* dy, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 8>(dy, nullptr, scale, run_var, eps, dx, n, c);
}

// Fused ReLU: the same passes with relu(v) = v <= 0 ? 0 : v on the output, or the gradient masked
// by the forward's output y (0 where y <= 0), in the same pass.
extern "C" __global__ void rc_normalize_relu_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 1, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<float, 4, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_relu_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, true>(x, y, mean, a, nullptr, 0.0, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_f32(const float* x, float* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<float, 1, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_f32_vec(const float* x, float* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<float, 4, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_f16(const __half* x, __half* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__half, 1, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_f16_vec(const __half* x, __half* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__half, 8, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 1, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
}
extern "C" __global__ void rc_normalize_infer_relu_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c)
{
    rc::normalize<__nv_bfloat16, 8, true, true>(x, y, mean, scale, run_var, eps, bias, n, c);
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
extern "C" __global__ void rc_backward_infer_relu_f32(const float* dy, const float* y, const float* scale, const float* run_var, double eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 1, true>(dy, y, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f32_vec(const float* dy, const float* y, const float* scale, const float* run_var, double eps, float* dx, long long n, int c)
{
    rc::backward_infer<float, 4, true>(dy, y, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f16(const __half* dy, const __half* y, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 1, true>(dy, y, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_f16_vec(const __half* dy, const __half* y, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c)
{
    rc::backward_infer<__half, 8, true>(dy, y, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 1, true>(dy, y, scale, run_var, eps, dx, n, c);
}
extern "C" __global__ void rc_backward_infer_relu_bf16_vec(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c)
{
    rc::backward_infer<__nv_bfloat16, 8, true>(dy, y, scale, run_var, eps, dx, n, c);
}
