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
// as batchnorm.cu's kernels do. Where a channel tile's rows fit on chip, the single-read entries
// (rc_persist_*, see "single-read training passes") do a training pass in one launch.
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
// step counter closes all their float32 chunks (bn::kChunk batches) at once. The block's records
// of its tile go to `rec`; hold(i, pack) sees the thread's i-th row (rows begin + warp + i kWarps)
// as loaded, for the single-read kernels to keep on chip.
template <typename T, int VEC, typename Hold>
__device__ __forceinline__ void stats_records(const T* __restrict__ x, long long n, int c,
                                              const Tile& t, float (&rec)[bn::kPartial][32 * VEC],
                                              const Hold& hold)
{
    // per-warp results, one per thread, merged by warp 0 one pack position at a time (so the tile
    // does not grow with VEC)
    __shared__ Welford tile[kWarps][32];
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
        int held = 0;
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
#pragma unroll
            for (int u = 0; u < K; ++u) {
                hold(held++, pk[u]);
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
}

// Split b's statistics record of channel ch, written by another block of this launch (__ldcg).
__device__ __forceinline__ bn::WelfordD read_stats(const float* part, int cp, int b, int ch)
{
    const float* p = part + static_cast<long long>(b) * bn::kPartial * cp + ch;
    Welford w;
    w.n = __ldcg(p);
    w.mean = __ldcg(p + cp);
    w.mean_lo = __ldcg(p + 2 * cp);
    w.m2 = __ldcg(p + 3 * cp);
    w.m2_lo = __ldcg(p + 4 * cp);
    w.total = __ldcg(p + 5 * cp);
    return bn::to_double(w);
}

// Channel ch's statistics from its merged partials, as bn::stats_finalize (each figure computed in
// float64 and rounded once): the mean and normalize factor a = scale / sqrt(var + eps) returned;
// savemean, saveinvvar and the running statistics written when `write`.
__device__ __forceinline__ float2 stats_finish(const bn::WelfordD& w, const float* part, int cp,
                                               int ch, const bn::StatsOut& out, bool write)
{
    double mean, var;
    bn::welford_finish(w, __ldcg(part + 6 * cp + ch), mean, var);
    const float a = static_cast<float>(static_cast<double>(out.scale[ch]) / sqrt(var + out.eps));
    if (write) {
        out.savemean[ch] = static_cast<float>(mean);
        out.saveinvvar[ch] = static_cast<float>(1.0 / sqrt(var + out.eps));
        const double keep = 1.0 - out.factor;
        out.run_mean[ch] = static_cast<float>(keep * out.run_mean[ch] + out.factor * mean);
        out.run_var[ch] = static_cast<float>(keep * out.run_var[ch] +
                                             out.factor * (var * (w.n / (w.n - 1.0))));
    }
    return make_float2(static_cast<float>(mean), a);
}

// Merges the tile's statistics records (finish_tile's fixed order), finish(channel, mean, a) on
// the first thread of each channel; savemean etc. written when `write`.
template <int TILE, typename Finish>
__device__ __forceinline__ void merge_stats(const float* part, int nsplit, int c,
                                            const bn::StatsOut& out, bool write,
                                            const Finish& finish)
{
    const int cp = padded_channels(c);
    finish_tile<TILE>(
        nsplit, c, bn::WelfordD{0.0, 0.0, 0.0, 0.0},
        [&](int b, int ch) { return read_stats(part, cp, b, ch); },
        [](const bn::WelfordD& a, const bn::WelfordD& b) { return bn::welford_merge(a, b); },
        [&](const bn::WelfordD& w, int ch) {
            const float2 r = stats_finish(w, part, cp, ch, out, write);
            finish(ch, r.x, r.y);
        });
}

// The statistics reduction: the tile's last block merges the partials in float64 and writes the
// statistics and the normalize factor.
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c, unsigned int* counters,
                                              const bn::StatsOut& out)
{
    constexpr int kTile = 32 * VEC;
    __shared__ float rec[bn::kPartial][kTile];
    const Tile t = Tile::make<VEC>(n);
    stats_records<T, VEC>(x, n, c, t, rec, [](int, const Pack<T, VEC>&) {});
    const int valid = min(kTile, c - static_cast<int>(blockIdx.x) * kTile);
    const bool wrote = write_records(rec, part, c, valid);
    const unsigned int writers = static_cast<unsigned int>(min(kBlock, bn::kPartial * valid));
    if (!bn::last_block(counters + blockIdx.x, gridDim.y, wrote, writers)) {
        return;
    }
    merge_stats<kTile>(part, static_cast<int>(gridDim.y), c, out, true,
                       [&](int ch, float, float a) { out.a[ch] = a; });
}

// --- backward sums ------------------------------------------------------------------------------

// bn::kSums compensated sums per channel (sum(dy), sum(dy * (x - m)), sum(x - m)), as
// batchnorm.cu's backward partials; RELU: dy masked by the forward's output y. The block's records
// of its tile go to `rec`; hold(i, x pack, masked dy pack) sees the thread's i-th row as loaded.
template <typename T, int VEC, bool RELU, typename Hold>
__device__ __forceinline__ void sums_records(const T* __restrict__ x, const T* __restrict__ dy,
                                             const T* __restrict__ y,
                                             const float* __restrict__ savemean, long long n,
                                             int c, const Tile& t,
                                             float (&rec)[bn::kSumPartial][32 * VEC],
                                             const Hold& hold)
{
    constexpr int kTile = 32 * VEC;
    __shared__ Sums<bn::kSums> tile[kWarps][32];
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
        int held = 0;
        auto add_row = [&](const Pack<T, VEC>& px, Pack<T, VEC> pg, const Pack<T, VEC>& py) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float g = masked<T, VEC, RELU>(to_float(pg.v[i]), py, i);
                if (RELU) {
                    pg.v[i] = from_float<T>(g);
                }
                bn::backward_terms(acc[i], g, __fsub_rn(to_float(px.v[i]), m[i]));
                acc[i].flush_step();
            }
            hold(held++, px, pg);
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
}

// Channel ch's parameter gradients and dx coefficients from its merged sums, as
// bn::backward_factors (r = exact mean - savemean, each figure in float64, rounded once):
// (k, c0, c1) of dx = dy k - ((x - m) c1 + c0) to kc; dbias and dscale written when `write`.
__device__ __forceinline__ void sums_finish(const Sum3& sum, long long n, int ch,
                                            const bn::SumsOut& out, bool write, float* kc)
{
    const double fm = static_cast<double>(n);
    const double r = sum.s2 / fm;
    const double invstd = out.saveinvvar[ch];
    const double gs = (sum.s1 - bn::correction(r * sum.s0)) * invstd;
    const double k = static_cast<double>(out.scale[ch]) * invstd;
    const double c1 = k * invstd * gs / fm;
    if (write) {
        out.dbias[ch] = static_cast<float>(sum.s0);
        out.dscale[ch] = static_cast<float>(gs);
    }
    kc[0] = static_cast<float>(k);
    kc[1] = static_cast<float>(k * sum.s0 / fm - bn::correction(r * c1));
    kc[2] = static_cast<float>(c1);
}

// Merges the tile's backward records (finish_tile's fixed order) into the coefficients of its
// channels, coef_tile[3 * (channel in tile) ..]; dbias and dscale written when `write`.
template <int TILE>
__device__ __forceinline__ void merge_sums(const float* part, int nsplit, long long n, int c,
                                           const bn::SumsOut& out, bool write, float* coef_tile)
{
    const int cp = padded_channels(c);
    finish_tile<TILE>(
        nsplit, c, Sum3{0.0, 0.0, 0.0},
        [&](int b, int ch) {
            const float* p = part + static_cast<long long>(b) * bn::kSumPartial * cp + ch;
            return Sum3{bn::ff_value(__ldcg(p), __ldcg(p + cp)),
                        bn::ff_value(__ldcg(p + 2 * cp), __ldcg(p + 3 * cp)),
                        bn::ff_value(__ldcg(p + 4 * cp), __ldcg(p + 5 * cp))};
        },
        [](const Sum3& a, const Sum3& b) { return Sum3{a.s0 + b.s0, a.s1 + b.s1, a.s2 + b.s2}; },
        [&](const Sum3& sum, int ch) {
            sums_finish(sum, n, ch, out, write,
                        coef_tile + 3 * (ch - static_cast<int>(blockIdx.x) * TILE));
        });
}

// The backward reduction: the tile's last block merges the sums in float64 and writes the
// parameter gradients and dx coefficients.
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const T* __restrict__ y,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c,
                                                 unsigned int* counters, const bn::SumsOut& out)
{
    constexpr int kTile = 32 * VEC;
    __shared__ float rec[bn::kSumPartial][kTile];
    const Tile t = Tile::make<VEC>(n);
    sums_records<T, VEC, RELU>(x, dy, y, savemean, n, c, t, rec,
                               [](int, const Pack<T, VEC>&, const Pack<T, VEC>&) {});
    const int valid = min(kTile, c - static_cast<int>(blockIdx.x) * kTile);
    const bool wrote = write_records(rec, part, c, valid);
    const unsigned int writers = static_cast<unsigned int>(min(kBlock, bn::kSumPartial * valid));
    if (!bn::last_block(counters + blockIdx.x, gridDim.y, wrote, writers)) {
        return;
    }
    __shared__ float coef_tile[3 * kTile];
    merge_sums<kTile>(part, static_cast<int>(gridDim.y), n, c, out, true, coef_tile);
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

// --- single-read training passes ----------------------------------------------------------------
// Where a channel tile's rows fit on chip, one launch does a training pass: grid (tiles, nsplit)
// as the reductions, each block holding the rows it reads in dynamic shared memory (slot i of
// thread t at held[i * kBlock + t]: held_slots(n) packs per thread and data array) between the
// statistics and the elementwise pass, so the forward reads x once and writes y once (8 bytes per
// float32 element instead of 12) and the backward reads x and dy once and writes dx (12 instead
// of 20). The blocks' records are the reductions' (same rows, same order); the nsplit blocks of a
// tile meet at bn::channel_barrier on the tile's two counters (every block of the grid resident at
// once when nsplit > 1: the host's plan, kernels/norm/cuda.py), and then every block merges all of
// the tile's records in finish_tile's fixed order with the reductions' finish, so every block
// holds bitwise the same per-channel factors; split 0 writes the per-channel outputs. x may be y,
// dy or x may be dx: a block reads only its own rows (and the tiles' row 0, split 0's, for the
// shift) before the barrier and writes only its own rows after it.

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC>* held_packs()
{
    extern __shared__ __align__(16) unsigned char rc_held[];
    return reinterpret_cast<Pack<T, VEC>*>(rc_held);
}

// Slots per thread and data array: a split's rows per warp at most.
__device__ __forceinline__ int held_slots(long long n)
{
    const long long chunk = (n + gridDim.y - 1) / gridDim.y;
    return static_cast<int>((chunk + kWarps - 1) / kWarps);
}

// Writes the block's records, then waits for the tile's other splits to have written theirs.
template <int K, int TILE>
__device__ __forceinline__ void publish(const float (&rec)[K][TILE], float* part, int c,
                                        unsigned int* sync)
{
    const int valid = min(TILE, c - static_cast<int>(blockIdx.x) * TILE);
    if (write_records(rec, part, c, valid)) {
        __threadfence();  // released before thread 0 arrives (bn::channel_barrier)
    }
    __syncthreads();
    bn::channel_barrier(sync, blockIdx.x, gridDim.y);
}

// y = fma(x - mean, a, bias) (relu'd when `relu`) as normalize computes it.
template <typename T, int VEC>
__device__ __forceinline__ void persist_forward(const T* x, T* y, float* part, unsigned int* sync,
                                                long long n, int c, const float* bias, int relu,
                                                const bn::StatsOut& out)
{
    constexpr int kTile = 32 * VEC;
    __shared__ float rec[bn::kPartial][kTile];
    __shared__ float factors[2][kTile];  // mean, a
    const Tile t = Tile::make<VEC>(n);
    Pack<T, VEC>* held = held_packs<T, VEC>() + threadIdx.x;
    int slots = 0;
    stats_records<T, VEC>(x, n, c, t, rec, [&](int i, const Pack<T, VEC>& pk) {
        held[i * kBlock] = pk;
        slots = i + 1;
    });
    publish(rec, part, c, sync);
    const int first = static_cast<int>(blockIdx.x) * kTile;
    merge_stats<kTile>(part, static_cast<int>(gridDim.y), c, out, blockIdx.y == 0,
                       [&](int ch, float mean, float a) {
                           factors[0][ch - first] = mean;
                           factors[1][ch - first] = a;
                       });
    __syncthreads();
    if (slots == 0) {
        return;
    }
    float m[VEC], k[VEC], b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        m[i] = factors[0][t.lane * VEC + i];
        k[i] = factors[1][t.lane * VEC + i];
        b[i] = bias[t.ch0 + i];
    }
    long long row = t.begin + t.warp;
    for (int s = 0; s < slots; ++s, row += kWarps) {
        Pack<T, VEC> pk = held[s * kBlock];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float v = fmaf(__fsub_rn(to_float(pk.v[i]), m[i]), k[i], b[i]);
            pk.v[i] = from_float<T>(relu ? bn::relu(v) : v);
        }
        store_pack<T, VEC>(y + row * c + t.ch0, pk);
    }
}

// dx = dy * k - ((x - mean) * c1 + c0) as backward_dx computes it, dy masked by y when RELU (the
// masked dy is what the block holds).
template <typename T, int VEC, bool RELU>
__device__ __forceinline__ void persist_backward(const T* x, const T* dy, const T* y, T* dx,
                                                 const float* savemean, float* part,
                                                 unsigned int* sync, long long n, int c,
                                                 const bn::SumsOut& out)
{
    constexpr int kTile = 32 * VEC;
    __shared__ float rec[bn::kSumPartial][kTile];
    __shared__ float coef_tile[3 * kTile];
    const Tile t = Tile::make<VEC>(n);
    Pack<T, VEC>* held_x = held_packs<T, VEC>() + threadIdx.x;
    Pack<T, VEC>* held_g = held_x + static_cast<long long>(held_slots(n)) * kBlock;
    int slots = 0;
    sums_records<T, VEC, RELU>(x, dy, y, savemean, n, c, t, rec,
                               [&](int i, const Pack<T, VEC>& px, const Pack<T, VEC>& pg) {
                                   held_x[i * kBlock] = px;
                                   held_g[i * kBlock] = pg;
                                   slots = i + 1;
                               });
    publish(rec, part, c, sync);
    merge_sums<kTile>(part, static_cast<int>(gridDim.y), n, c, out, blockIdx.y == 0, coef_tile);
    __syncthreads();
    if (slots == 0) {
        return;
    }
    float m[VEC], k3[3 * VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        m[i] = savemean[t.ch0 + i];
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            k3[3 * i + j] = coef_tile[3 * (t.lane * VEC + i) + j];
        }
    }
    long long row = t.begin + t.warp;
    for (int s = 0; s < slots; ++s, row += kWarps) {
        const Pack<T, VEC> px = held_x[s * kBlock];
        Pack<T, VEC> pg = held_g[s * kBlock];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float u = fmaf(__fsub_rn(to_float(px.v[i]), m[i]), k3[3 * i + 2], k3[3 * i + 1]);
            pg.v[i] = from_float<T>(fmaf(to_float(pg.v[i]), k3[3 * i], -u));
        }
        store_pack<T, VEC>(dx + row * c + t.ch0, pg);
    }
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

// Single-read training passes (see the top of the single-read section): grid (ceil(C / (32 VEC)),
// nsplit) of bn::kBlock threads, every block resident at once when nsplit > 1, with the dynamic
// shared memory of held_slots(n) * kBlock packs per data array (x; x and the masked dy); part
// holds the reductions' planar records of nsplit splits, sync 2 counters per channel tile, zero
// before the first launch and left zero by every launch. relu: nonzero for the fused ReLU; the
// _relu backward entries take the forward's output y for the gradient's mask.
extern "C" __global__ void rc_persist_forward_f32(const float* x, float* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<float, 1>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_forward_f32_vec(const float* x, float* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<float, 4>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_forward_f16(const __half* x, __half* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<__half, 1>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_forward_f16_vec(const __half* x, __half* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<__half, 8>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<__nv_bfloat16, 1>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_forward_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, float* part, unsigned int* sync, long long n, int c, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    rc::persist_forward<__nv_bfloat16, 8>(x, y, part, sync, n, c, bias, relu, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, nullptr, run_mean, run_var});
}
extern "C" __global__ void rc_persist_backward_f32(const float* x, const float* dy, const float* savemean, float* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<float, 1, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_f32_vec(const float* x, const float* dy, const float* savemean, float* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<float, 4, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_f16(const __half* x, const __half* dy, const float* savemean, __half* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__half, 1, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_f16_vec(const __half* x, const __half* dy, const float* savemean, __half* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__half, 8, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__nv_bfloat16, 1, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__nv_bfloat16, 8, false>(x, dy, nullptr, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_f32(const float* x, const float* dy, const float* y, const float* savemean, float* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<float, 1, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_f32_vec(const float* x, const float* dy, const float* y, const float* savemean, float* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<float, 4, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, __half* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__half, 1, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_f16_vec(const __half* x, const __half* dy, const __half* y, const float* savemean, __half* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__half, 8, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__nv_bfloat16, 1, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
extern "C" __global__ void rc_persist_backward_relu_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, const float* scale, const float* saveinvvar, float* dscale, float* dbias)
{
    rc::persist_backward<__nv_bfloat16, 8, true>(x, dy, y, dx, savemean, part, sync, n, c, bn::SumsOut{scale, saveinvvar, dscale, dbias, nullptr});
}
