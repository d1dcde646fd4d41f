// Batch normalization over NCHW data (N, C, S): statistics, normalization, backward and the
// parameter-gradient update. Compiles standalone with nvcc; the Python side (kernels/norm/cuda.py)
// compiles it once per process with pycuda's SourceModule and launches the extern "C" entries.
//
// Layout: element (n, ch, s) lives at (n * C + ch) * S + s. Every index is 64-bit. Data is T
// (float, __half or __nv_bfloat16); statistics, parameters and accumulation are float32.
// Entries ending in _vec move 16 bytes per load/store and are launched only when every data
// pointer is 16-byte aligned and, for the reductions, S is a multiple of the pack width (the
// elementwise passes' packs may run across a channel boundary, and their last one may be partial).
//
// Reductions take one launch: C x nsplit tiles each write one partial (a grid of at most the
// blocks the device holds at once walks them in a fixed order; spatial size 1: a (ceil(C / 32),
// nsplit) grid, a block per tile), and the last tile of each channel to finish (an integer
// counter per channel, bn::last_block) merges the channel's
// partials in a fixed order (lane-strided, then a shuffle-down tree; bn::stats_finalize and
// bn::backward_finalize). No float atomics: the result depends only on the shapes, so repeated runs
// are bitwise equal. Float64 runs only per channel: there, in the inference factors
// (bn::frozen_factor, once per channel per block of the one-launch inference passes).
#include "bn_common.cuh"

namespace bn {

// --- batch statistics ---------------------------------------------------------------------------

// Element offset of the pack a RowWalk over a channel's (N, S / VEC) packs points at.
template <int VEC>
__device__ __forceinline__ long long pack_offset(const RowWalk& walk, int c, int ch, long long s)
{
    return (walk.row * c + ch) * s + walk.col * VEC;
}

// Packs per thread loaded ahead in the (channel, split) reductions: 16 bytes of scalar loads, two
// 16-byte packs on the vector paths (see elementwise_unroll).
template <typename T, int VEC>
__host__ __device__ constexpr int reduction_unroll()
{
    return VEC > 1 ? 2 : static_cast<int>(16 / sizeof(T));
}

// One (channel, split) tile of the statistics: split `split` of `nsplit` equal runs of the
// channel's (N, S / VEC) packs. Values are shifted by the channel's first element before Welford,
// so data far from zero (1e4 + N(0, 1)) keeps float32 precision in the running means. The
// channel's last tile to finish merges its partials (stats_finalize). Every thread of the block.
template <typename T, int VEC>
__device__ __forceinline__ void stats_tile(const T* __restrict__ x, float* __restrict__ part, int c,
                                           long long s, int nsplit, int ch, int split,
                                           long long total, long long chunk,
                                           unsigned int* counters, const StatsOut& out)
{
    const long long cols = s / VEC;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, total);
    const float shift = to_float(x[static_cast<long long>(ch) * s]);

    // kUnroll packs are loaded before any is used and folded in as one batch (one division per
    // batch): several loads in flight per thread, none waiting on the previous one's arithmetic
    constexpr int kUnroll = reduction_unroll<T, VEC>();
    WelfordStream acc;
    long long j = begin + threadIdx.x;
    if (j < end) {
        RowWalk walk(j, kBlock, cols);
        for (; j + (kUnroll - 1) * kBlock < end; j += kUnroll * kBlock) {
            Pack<T, VEC> pk[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                pk[u] = load_pack<T, VEC>(x + pack_offset<VEC>(walk, c, ch, s));
                walk.advance();
            }
            add_packs(acc, pk, shift);
        }
        for (; j < end; j += kBlock) {  // at most kUnroll - 1 packs left
            const Pack<T, VEC> pk = load_pack<T, VEC>(x + pack_offset<VEC>(walk, c, ch, s));
            float v[VEC];
            float raw = 0.f;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float xi = to_float(pk.v[i]);
                raw = __fadd_rn(raw, xi);
                v[i] = __fsub_rn(xi, shift);
            }
            acc.add<VEC>(v, raw);
            walk.advance();
        }
    }
    const Welford w = block_reduce(acc.result());
    if (threadIdx.x == 0) {
        write_partial(part + (static_cast<long long>(ch) * nsplit + split) * kPartial, w, shift);
    }
    if (last_block(counters + ch, nsplit, threadIdx.x == 0, 1)) {
        finish_channels(ch, 1, c, [&](int k, int l) { stats_finalize(part, k, nsplit, l, out); });
    }
}

// Batch statistics over a grid sized to the blocks the device holds at once: block b takes the
// tiles b, b + gridDim.x, ... in channel-major order. A tile's partial depends only on the shape
// (n, c, s, nsplit), not on the block or the grid, so results are bitwise repeatable.
template <typename T, int VEC>
__device__ __forceinline__ void stats_partial(const T* __restrict__ x, float* __restrict__ part,
                                              long long n, int c, long long s, int nsplit,
                                              unsigned int* counters, const StatsOut& out)
{
    const long long cols = s / VEC;
    const long long total = n * cols;
    const long long chunk = (total + nsplit - 1) / nsplit;
    for (long long tile = blockIdx.x; tile < static_cast<long long>(c) * nsplit;
         tile += gridDim.x) {
        stats_tile<T, VEC>(x, part, c, s, nsplit, static_cast<int>(tile / nsplit),
                           static_cast<int>(tile % nsplit), total, chunk, counters, out);
    }
}

// Threads of each block of a column grid that write a partial record: the lanes of warp 0 whose
// channel exists.
__device__ __forceinline__ unsigned int col_writers(int c)
{
    return static_cast<unsigned int>(min(32, c - static_cast<int>(blockIdx.x) * 32));
}

// Spatial size 1 ((N, C) data): a channel's values are C apart, so the per-channel tiles above would
// read one value per 32-byte sector. Here a block takes 32 consecutive channels (one per lane, so
// each warp reads whole rows) and its 8 warps take interleaved rows of its slice; the warps'
// results are merged per channel in warp order. Grid (ceil(C / 32), nsplit); same partial layout.
template <typename T>
__device__ __forceinline__ void stats_partial_cols(const T* __restrict__ x, float* __restrict__ part,
                                                   long long n, int c, unsigned int* counters,
                                                   const StatsOut& out)
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

    WelfordStream acc;
    float shift = 0.f;
    if (ch < c) {
        shift = to_float(x[ch]);
        constexpr int kUnroll = reduction_unroll<T, 1>();
        long long row = begin + warp;
        // kUnroll rows loaded before any is used, folded in as one batch
        for (; row + (kUnroll - 1) * kWarps < end; row += kUnroll * kWarps) {
            T raw_v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                raw_v[u] = x[(row + u * kWarps) * c + ch];
            }
            float v[kUnroll];
            float raw = 0.f;
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const float xi = to_float(raw_v[u]);
                raw = __fadd_rn(raw, xi);
                v[u] = __fsub_rn(xi, shift);
            }
            acc.add<kUnroll>(v, raw);
        }
        for (; row < end; row += kWarps) {
            const float xi = to_float(x[row * c + ch]);
            const float v[1] = {__fsub_rn(xi, shift)};
            acc.add<1>(v, xi);
        }
    }
    tile[warp][lane] = acc.result();
    __syncthreads();
    if (warp == 0 && ch < c) {
        Welford r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r = welford_merge(r, tile[k][lane]);
        }
        write_partial(part + (static_cast<long long>(ch) * nsplit + split) * kPartial, r, shift);
    }
    if (last_block(counters + blockIdx.x, nsplit, warp == 0 && ch < c, col_writers(c))) {
        finish_channels(blockIdx.x * 32, 32, c,
                        [&](int k, int l) { stats_finalize(part, k, nsplit, l, out); });
    }
}

// The inference factor a = scale / sqrt(run_var + eps) of one channel, in float64 and rounded
// once: the one-launch inference passes' (FrozenFactor here, rows_channels.cu's stage_factor), so
// NCHW and rows x channels data give the same bits.
__device__ __forceinline__ float frozen_factor(const float* __restrict__ scale,
                                              const float* __restrict__ run_var, double eps, int ch)
{
    return static_cast<float>(static_cast<double>(scale[ch]) / sqrt(run_var[ch] + eps));
}

// Where an elementwise pass takes its per-channel factor from: an array (the training passes: a
// from the statistics launch), or computed from the running statistics (inference: no separate
// factor launch). Either is evaluated once per channel per block (channel_stream's table).
struct GivenFactor {
    const float* __restrict__ a;

    __device__ __forceinline__ float operator()(int ch) const { return a[ch]; }
};

struct FrozenFactor {
    const float* __restrict__ scale;
    const float* __restrict__ run_var;
    double eps;

    __device__ __forceinline__ float operator()(int ch) const
    {
        return frozen_factor(scale, run_var, eps, ch);
    }
};

// --- normalization ------------------------------------------------------------------------------

// Packs per thread in flight in the elementwise passes: at least 16 bytes of scalar loads over the
// pass's input arrays and at least 4 steps (8 16-bit values from one array, 4 steps otherwise), two
// steps on the 16-byte vector paths. Little's law wants ~16 KB in flight per SM at ~700 ns DRAM
// latency, i.e. >= 11 bytes per thread at 1536 resident threads; more steps cost registers.
template <typename T, int VEC, int ARRAYS>
__host__ __device__ constexpr int elementwise_unroll()
{
    return VEC > 1 ? 2
                   : (16 / (sizeof(T) * ARRAYS) > 4 ? static_cast<int>(16 / (sizeof(T) * ARRAYS)) : 4);
}

// Channels whose constants a block of an elementwise pass keeps in shared memory (channel_stream):
// a multiple of kBlock.
constexpr int kTable = 512;
static_assert(kTable % kBlock == 0, "channel_stream fills the table in whole rounds of the block");

// Walk over the flat (N * C * S / VEC) pack index for an elementwise pass Op. Block b owns the
// contiguous packs [b * chunk, (b + 1) * chunk), chunk = ceil(packs / gridDim.x), so it covers a
// run of consecutive (n, channel) rows. It takes them in segments of at most kTable rows (one
// segment unless S is small): the segment's channels' constants (Op::constants: in the inference
// passes the factor, in float64) are computed once into a shared table, while the segment's first
// loads are in flight, and looked up from there. Each step takes kUnroll packs kBlock apart: it
// issues every load (Op::load), looks up their channel constants, then computes (Op::apply, per
// element) and stores (Op::store). The output may alias an input, so the compiler may not hoist a
// later load above an earlier store by itself: written this way each thread keeps kUnroll loads
// in flight instead of one.
//
// Packs run over the flat index whatever S is (the host needs only the pointers aligned): a pack
// that runs past the end of its channel (S not a multiple of VEC, or S < VEC) takes each
// element's own channel's constants, so small spatial sizes (7x7, 14x14 in 16-bit data) still
// move 16-byte packs, and the last N * C * S % VEC elements go as one partial pack (thread 0 of
// block 0, before its share of whole packs).
template <typename T, int VEC, typename Op>
__device__ __forceinline__ void channel_stream(const Op& op, long long n, int c, long long s)
{
    typedef typename Op::Constants Constants;
    constexpr int kUnroll = elementwise_unroll<T, VEC, Op::kArrays>();
    __shared__ Constants table[kTable];
    const long long total = n * c * s / VEC;
    const long long chunk = (total + gridDim.x - 1) / gridDim.x;
    const long long begin = min(static_cast<long long>(blockIdx.x) * chunk, total);
    const long long end = min(begin + chunk, total);
    // one pack: all elements with its first element's channel's constants k, or, when fewer than
    // VEC of the channel's elements are left from there, each element with its own channel's
    auto compute = [&](const auto& get, typename Op::Loaded& in, const Constants& k, int ch,
                       int left) {
        if (VEC > 1 && left < VEC) {
            Constants ki = k;
            long long rem = left;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (rem == 0) {
                    ch = ch + 1 == c ? 0 : ch + 1;
                    ki = get(ch);
                    rem = s;
                }
                op.apply(in, i, ki);
                --rem;
            }
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                op.apply(in, i, k);
            }
        }
    };
    if (VEC > 1 && blockIdx.x == 0 && threadIdx.x == 0) {
        const int tail = static_cast<int>(n * c * s - total * VEC);
        if (tail > 0) {  // past every block's range: its constants are not in a table
            const ChannelWalk at(total * VEC, 1, s, c);
            typename Op::Loaded in = op.load_part(total, tail);
            compute([&](int ch) { return op.constants(ch); }, in, op.constants(at.channel),
                    at.channel, static_cast<int>(min(s - at.col, static_cast<long long>(VEC))));
            op.store_part(total, in, tail);
        }
    }
    // elements of the pack's first channel from its start, capped at VEC
    auto left_of = [&](const ChannelWalk& w) {
        return static_cast<int>(min(s - w.col, static_cast<long long>(VEC)));
    };
    // block-uniform: every thread walks the same segments and reaches the same barriers
    for (long long seg = begin; seg < end;) {
        // the segment's packs touch rows row0 .. row0 + kTable - 1 at most
        const long long row0 = seg * VEC / s;
        const long long seg_end = min(end, (row0 + kTable) * s / VEC);
        const int ch0 = static_cast<int>(row0 % c);
        const int count = static_cast<int>(
            min((seg_end * VEC - 1) / s - row0 + 1, static_cast<long long>(c)));
        auto fetch = [&](int ch) -> Constants {
            const int i = ch - ch0;
            return table[i < 0 ? i + c : i];
        };
        long long j = seg + threadIdx.x;
        typename Op::Loaded in[kUnroll];
        auto load_step = [&]() {
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                in[u] = op.load(j + u * kBlock);
            }
        };
        const bool first = j + (kUnroll - 1) * kBlock < seg_end;
        if (first) {
            load_step();
        }
        if (seg != begin) {
            __syncthreads();  // the previous segment's lookups are done
        }
        // count <= kTable = 2 * kBlock: at most two entries a thread, written out (no loop)
#pragma unroll
        for (int r = 0; r < kTable / kBlock; ++r) {
            const int i = threadIdx.x + r * kBlock;
            if (i < count) {
                const int ch = ch0 + i;
                table[i] = op.constants(ch < c ? ch : ch - c);
            }
        }
        __syncthreads();
        seg = seg_end;
        if (j >= seg_end) {
            continue;
        }
        ChannelWalk walk(j * VEC, static_cast<long long>(kBlock) * VEC, s, c);
        // the constants are read from the table at every step, not kept across steps: a shared
        // load is cheap, registers holding kUnroll slots' constants would cost occupancy
        auto finish_step = [&]() {
            int ch[kUnroll];
            int left[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                ch[u] = walk.channel;
                left[u] = left_of(walk);
                walk.advance();
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                compute(fetch, in[u], fetch(ch[u]), ch[u], left[u]);
                op.store(j + u * kBlock, in[u]);
            }
            j += kUnroll * kBlock;
        };
        if (first) {  // its loads went out before the table
            finish_step();
            while (j + (kUnroll - 1) * kBlock < seg_end) {
                load_step();
                finish_step();
            }
        }
        for (; j < seg_end; j += kBlock) {  // at most kUnroll - 1 steps left
            typename Op::Loaded one = op.load(j);
            compute(fetch, one, fetch(walk.channel), walk.channel, left_of(walk));
            op.store(j, one);
            walk.advance();
        }
    }
}

// y = fma(x - mean, a, bias) with the per-channel factor a of stats_finalize or frozen_factor:
// two roundings, as the CPU backend does (values equal to the mean give bias exactly), then relu
// when RELU (before the rounding to T: the same result, and -0 stays out). The constants come from
// channel_stream's per-block table. x and y may be the same buffer.
template <typename T, int VEC, bool RELU, typename Factor>
struct NormalizeOp {
    const T* x;
    T* y;
    const float* __restrict__ mean;
    Factor factor;
    const float* __restrict__ bias;

    static constexpr int kArrays = 1;
    struct Constants {
        float m, a, b;
    };
    typedef Pack<T, VEC> Loaded;

    __device__ __forceinline__ Constants constants(int ch) const
    {
        return {mean[ch], factor(ch), bias[ch]};
    }
    __device__ __forceinline__ Loaded load(long long j) const { return load_pack<T, VEC>(x + j * VEC); }
    __device__ __forceinline__ void apply(Loaded& pk, int i, const Constants& k) const
    {
        const float v = fmaf(__fsub_rn(to_float(pk.v[i]), k.m), k.a, k.b);
        pk.v[i] = from_float<T>(RELU ? relu(v) : v);
    }
    __device__ __forceinline__ void store(long long j, const Loaded& pk) const
    {
        store_pack<T, VEC>(y + j * VEC, pk);
    }
    __device__ __forceinline__ Loaded load_part(long long j, int count) const
    {
        return bn::load_part<T, VEC>(x + j * VEC, count);
    }
    __device__ __forceinline__ void store_part(long long j, const Loaded& pk, int count) const
    {
        bn::store_part<T, VEC>(y + j * VEC, pk, count);
    }
};

template <typename T, int VEC, bool RELU = false, typename Factor>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* __restrict__ mean,
                                          const Factor& factor, const float* __restrict__ bias,
                                          long long n, int c, long long s)
{
    channel_stream<T, VEC>(NormalizeOp<T, VEC, RELU, Factor>{x, y, mean, factor, bias}, n, c, s);
}

// --- backward -----------------------------------------------------------------------------------

// Partial backward sums (kSums) of one (channel, split) tile, as float-float pairs (tiles as in
// stats_tile). RELU: dy masked by the forward's output y (bn::relu_grad); y is not read otherwise.
template <typename T, int VEC, bool RELU>
__device__ __forceinline__ void backward_tile(const T* __restrict__ x, const T* __restrict__ dy,
                                              const T* __restrict__ y,
                                              const float* __restrict__ savemean,
                                              float* __restrict__ part, long long n, int c,
                                              long long s, int nsplit, int ch, int split,
                                              long long total, long long chunk,
                                              unsigned int* counters, const SumsOut& out)
{
    const long long cols = s / VEC;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, total);
    const float m = savemean[ch];

    constexpr int kUnroll = reduction_unroll<T, VEC>();
    SumStream<kSums> acc;
    long long j = begin + threadIdx.x;
    if (j < end) {
        RowWalk walk(j, kBlock, cols);
        // kUnroll steps' loads first, then their sums in step order
        for (; j + (kUnroll - 1) * kBlock < end; j += kUnroll * kBlock) {
            Pack<T, VEC> px[kUnroll], pg[kUnroll], py[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const long long off = pack_offset<VEC>(walk, c, ch, s);
                px[u] = load_pack<T, VEC>(x + off);
                pg[u] = load_pack<T, VEC>(dy + off);
                py[u] = load_mask<T, VEC, RELU>(y, off);
                walk.advance();
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    backward_terms(acc, masked<T, VEC, RELU>(to_float(pg[u].v[i]), py[u], i),
                                   __fsub_rn(to_float(px[u].v[i]), m));
                }
                acc.flush_step();
            }
        }
        for (; j < end; j += kBlock) {
            const long long off = pack_offset<VEC>(walk, c, ch, s);
            const Pack<T, VEC> px = load_pack<T, VEC>(x + off);
            const Pack<T, VEC> pg = load_pack<T, VEC>(dy + off);
            const Pack<T, VEC> py = load_mask<T, VEC, RELU>(y, off);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                backward_terms(acc, masked<T, VEC, RELU>(to_float(pg.v[i]), py, i),
                               __fsub_rn(to_float(px.v[i]), m));
            }
            acc.flush_step();
            walk.advance();
        }
    }
    const Sums<kSums> r = block_reduce(acc.result());
    if (threadIdx.x == 0) {
        write_sums(part + (static_cast<long long>(ch) * nsplit + split) * kSumPartial, r);
    }
    if (last_block(counters + ch, nsplit, threadIdx.x == 0, 1)) {
        finish_channels(ch, 1, c,
                        [&](int k, int l) { backward_finalize(part, k, nsplit, n * s, l, out); });
    }
}

// The backward sums over a resident-sized grid, tiles walked as in stats_partial.
template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const T* __restrict__ y,
                                                 const float* __restrict__ savemean,
                                                 float* __restrict__ part, long long n, int c,
                                                 long long s, int nsplit, unsigned int* counters,
                                                 const SumsOut& out)
{
    const long long total = n * (s / VEC);
    const long long chunk = (total + nsplit - 1) / nsplit;
    for (long long tile = blockIdx.x; tile < static_cast<long long>(c) * nsplit;
         tile += gridDim.x) {
        backward_tile<T, VEC, RELU>(x, dy, y, savemean, part, n, c, s, nsplit,
                                    static_cast<int>(tile / nsplit),
                                    static_cast<int>(tile % nsplit), total, chunk, counters, out);
    }
}

// Spatial size 1: the column layout of stats_partial_cols for the backward sums.
template <typename T, bool RELU = false>
__device__ __forceinline__ void backward_partial_cols(const T* __restrict__ x,
                                                      const T* __restrict__ dy,
                                                      const T* __restrict__ y,
                                                      const float* __restrict__ savemean,
                                                      float* __restrict__ part, long long n, int c,
                                                      unsigned int* counters, const SumsOut& out)
{
    __shared__ Sums<kSums> tile[kWarps][32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int ch = blockIdx.x * 32 + lane;
    const int split = blockIdx.y;
    const int nsplit = gridDim.y;
    const long long chunk = (n + nsplit - 1) / nsplit;
    const long long begin = split * chunk;
    const long long end = min(begin + chunk, n);

    SumStream<kSums> acc;
    if (ch < c) {
        const float m = savemean[ch];
        for (long long row = begin + warp; row < end; row += kWarps) {
            const long long at = row * c + ch;
            const float g = to_float(dy[at]);
            backward_terms(acc, RELU ? relu_grad(g, y[at]) : g, __fsub_rn(to_float(x[at]), m));
            acc.flush_step();
        }
    }
    tile[warp][lane] = acc.result();
    __syncthreads();
    if (warp == 0 && ch < c) {
        Sums<kSums> r = tile[0][lane];
#pragma unroll
        for (int k = 1; k < kWarps; ++k) {
            r = sums_merge(r, tile[k][lane]);
        }
        write_sums(part + (static_cast<long long>(ch) * nsplit + split) * kSumPartial, r);
    }
    if (last_block(counters + blockIdx.x, nsplit, warp == 0 && ch < c, col_writers(c))) {
        finish_channels(blockIdx.x * 32, 32, c,
                        [&](int k, int l) { backward_finalize(part, k, nsplit, n, l, out); });
    }
}

// dx = dy * k - ((x - mean) * c1 + c0) as two FMAs, as the CPU backend does; keeping (x - mean)
// whole avoids the cancellation of x * c1 - mean * c1. RELU: dy masked by y first.
template <typename T, int VEC, bool RELU>
struct BackwardDxOp {
    const T* __restrict__ x;
    const T* __restrict__ dy;
    const T* __restrict__ y;
    const float* __restrict__ savemean;
    const float* __restrict__ coef;
    T* __restrict__ dx;

    static constexpr int kArrays = RELU ? 3 : 2;
    struct Constants {
        float m, k, c0, c1;
    };
    struct Loaded {
        Pack<T, VEC> px, pg, py;
    };

    __device__ __forceinline__ Constants constants(int ch) const
    {
        return {savemean[ch], coef[ch * 3 + 0], coef[ch * 3 + 1], coef[ch * 3 + 2]};
    }
    __device__ __forceinline__ Loaded load(long long j) const
    {
        return {load_pack<T, VEC>(x + j * VEC), load_pack<T, VEC>(dy + j * VEC),
                load_mask<T, VEC, RELU>(y, j * VEC)};
    }
    __device__ __forceinline__ void apply(Loaded& in, int i, const Constants& k) const
    {
        const float u = fmaf(__fsub_rn(to_float(in.px.v[i]), k.m), k.c1, k.c0);
        const float g = masked<T, VEC, RELU>(to_float(in.pg.v[i]), in.py, i);
        in.pg.v[i] = from_float<T>(fmaf(g, k.k, -u));
    }
    __device__ __forceinline__ void store(long long j, const Loaded& in) const
    {
        store_pack<T, VEC>(dx + j * VEC, in.pg);
    }
    __device__ __forceinline__ Loaded load_part(long long j, int count) const
    {
        return {bn::load_part<T, VEC>(x + j * VEC, count), bn::load_part<T, VEC>(dy + j * VEC, count),
                load_mask_part<T, VEC, RELU>(y, j * VEC, count)};
    }
    __device__ __forceinline__ void store_part(long long j, const Loaded& in, int count) const
    {
        bn::store_part<T, VEC>(dx + j * VEC, in.pg, count);
    }
};

template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_dx(const T* __restrict__ x, const T* __restrict__ dy,
                                            const T* __restrict__ y,
                                            const float* __restrict__ savemean,
                                            const float* __restrict__ coef, T* __restrict__ dx,
                                            long long n, int c, long long s)
{
    channel_stream<T, VEC>(BackwardDxOp<T, VEC, RELU>{x, dy, y, savemean, coef, dx}, n, c, s);
}

// dx = dy * k with the per-channel factor k = scale / sqrt(run_var + eps) (frozen statistics),
// computed here in float64 once per channel per block. RELU: dy masked by y first.
template <typename T, int VEC, bool RELU>
struct BackwardInferOp {
    const T* __restrict__ dy;
    const T* __restrict__ y;
    FrozenFactor factor;
    T* __restrict__ dx;

    static constexpr int kArrays = RELU ? 2 : 1;
    struct Constants {
        float k;
    };
    struct Loaded {
        Pack<T, VEC> pg, py;
    };

    __device__ __forceinline__ Constants constants(int ch) const { return {factor(ch)}; }
    __device__ __forceinline__ Loaded load(long long j) const
    {
        return {load_pack<T, VEC>(dy + j * VEC), load_mask<T, VEC, RELU>(y, j * VEC)};
    }
    __device__ __forceinline__ void apply(Loaded& in, int i, const Constants& k) const
    {
        const float g = masked<T, VEC, RELU>(to_float(in.pg.v[i]), in.py, i);
        in.pg.v[i] = from_float<T>(__fmul_rn(g, k.k));
    }
    __device__ __forceinline__ void store(long long j, const Loaded& in) const
    {
        store_pack<T, VEC>(dx + j * VEC, in.pg);
    }
    __device__ __forceinline__ Loaded load_part(long long j, int count) const
    {
        return {bn::load_part<T, VEC>(dy + j * VEC, count),
                load_mask_part<T, VEC, RELU>(y, j * VEC, count)};
    }
    __device__ __forceinline__ void store_part(long long j, const Loaded& in, int count) const
    {
        bn::store_part<T, VEC>(dx + j * VEC, in.pg, count);
    }
};

template <typename T, int VEC, bool RELU = false>
__device__ __forceinline__ void backward_infer(const T* __restrict__ dy, const T* __restrict__ y,
                                               const FrozenFactor& factor, T* __restrict__ dx,
                                               long long n, int c, long long s)
{
    channel_stream<T, VEC>(BackwardInferOp<T, VEC, RELU>{dy, y, factor, dx}, n, c, s);
}

}  // namespace bn

// --- entry points ---------------------------------------------------------------------------------
// Plain signatures only (pointers and int / long long / float scalars): the Python side and the
// simulator backend launch them by name. All use 256-thread blocks (bn::kBlock).

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

// Batch statistics: C x nsplit tiles over a 1-D grid of any size, one Welford partial per tile;
// each channel's last tile finishes it (savemean, saveinvvar, the normalize factors a, the running statistics). counters:
// one per channel, all 0 (and left 0).
extern "C" __global__ void bn_stats_partial_f32(const float* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<float, 1>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_f32_vec(const float* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<float, 4>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_f16(const __half* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<__half, 1>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_f16_vec(const __half* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<__half, 8>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_bf16(const __nv_bfloat16* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<__nv_bfloat16, 1>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_bf16_vec(const __nv_bfloat16* x, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial<__nv_bfloat16, 8>(x, part, n, c, s, nsplit, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}

// Training normalization y = fmaf(x - mean, a, bias) (batch statistics, a from
// bn_stats_partial_*); y may be x.
extern "C" __global__ void bn_normalize_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 1>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 4>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 1>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 8>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}

// Inference normalization in one launch: the same with the running statistics and
// a = scale / sqrt(run_var + eps) (float64, rounded once), computed once per channel per block;
// y may be x.
extern "C" __global__ void bn_normalize_infer_f32(const float* x, float* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 1>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_f32_vec(const float* x, float* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 4>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_f16(const __half* x, __half* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 1>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_f16_vec(const __half* x, __half* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 8>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}

// Backward reduction: C x nsplit tiles as above, partial sum(dy) and sum(dy * (x - mean)); each
// channel's last tile finishes it (dscale, dbias and the dx coefficients coef). counters as above.
extern "C" __global__ void bn_backward_partial_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<float, 1>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_f32_vec(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<float, 4>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__half, 1>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_f16_vec(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__half, 8>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__nv_bfloat16, 1>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__nv_bfloat16, 8>(x, dy, nullptr, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}

// Backward elementwise (training statistics) with the coefficients of bn_backward_partial_*.
extern "C" __global__ void bn_backward_train_f32(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 1>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f32_vec(const float* x, const float* dy, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 4>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f16(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 1>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_f16_vec(const __half* x, const __half* dy, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 8>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 1>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 8>(x, dy, nullptr, savemean, coef, dx, n, c, s);
}

// Backward elementwise with frozen (running) statistics in one launch: dx = dy * k,
// k = scale / sqrt(run_var + eps) (float64, rounded once), computed once per channel per block.
extern "C" __global__ void bn_backward_infer_f32(const float* dy, const float* scale, const float* run_var, double eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 1>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f32_vec(const float* dy, const float* scale, const float* run_var, double eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 4>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f16(const __half* dy, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 1>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_f16_vec(const __half* dy, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 8>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_bf16(const __nv_bfloat16* dy, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 1>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_bf16_vec(const __nv_bfloat16* dy, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 8>(dy, nullptr, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}

// Spatial size 1: the column layout, grid (ceil(C / 32), nsplit), one counter per 32 channels.
extern "C" __global__ void bn_stats_partial_cols_f32(const float* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial_cols<float>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_cols_f16(const __half* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial_cols<__half>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}
extern "C" __global__ void bn_stats_partial_cols_bf16(const __nv_bfloat16* x, float* part, long long n, int c, unsigned int* counters, double eps, double factor, const float* scale, float* savemean, float* saveinvvar, float* a, float* run_mean, float* run_var)
{
    bn::stats_partial_cols<__nv_bfloat16>(x, part, n, c, counters, bn::StatsOut{eps, factor, scale, savemean, saveinvvar, a, run_mean, run_var});
}

// Spatial size 1: the column layout of the backward sums, one counter per 32 channels.
extern "C" __global__ void bn_backward_partial_cols_f32(const float* x, const float* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<float>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_cols_f16(const __half* x, const __half* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<__half>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_cols_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<__nv_bfloat16>(x, dy, nullptr, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}

// --- fused ReLU (relu(v) = v <= 0 ? 0 : v): the same passes with relu applied to the output, or the
// gradient masked by the forward's output y (0 where y <= 0), in the same pass.

// y = relu(fmaf(x - mean, a, bias)); y may be x.
extern "C" __global__ void bn_normalize_relu_f32(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 1, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_relu_f32_vec(const float* x, float* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 4, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_relu_f16(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 1, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_relu_f16_vec(const __half* x, __half* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 8, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_relu_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* mean, const float* a, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8, true>(x, y, mean, bn::GivenFactor{a}, bias, n, c, s);
}

// y = relu(fmaf(x - run_mean, scale / sqrt(run_var + eps), bias)) in one launch; y may be x.
extern "C" __global__ void bn_normalize_infer_relu_f32(const float* x, float* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 1, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_relu_f32_vec(const float* x, float* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<float, 4, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_relu_f16(const __half* x, __half* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 1, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_relu_f16_vec(const __half* x, __half* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__half, 8, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_relu_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 1, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}
extern "C" __global__ void bn_normalize_infer_relu_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, const float* run_mean, const float* scale, const float* run_var, double eps, const float* bias, long long n, int c, long long s)
{
    bn::normalize<__nv_bfloat16, 8, true>(x, y, run_mean, bn::FrozenFactor{scale, run_var, eps}, bias, n, c, s);
}

// Backward reduction, phase 1, of dy masked by y.
extern "C" __global__ void bn_backward_partial_relu_f32(const float* x, const float* dy, const float* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<float, 1, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_f32_vec(const float* x, const float* dy, const float* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<float, 4, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__half, 1, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_f16_vec(const __half* x, const __half* dy, const __half* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__half, 8, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__nv_bfloat16, 1, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, float* part, long long n, int c, long long s, int nsplit, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial<__nv_bfloat16, 8, true>(x, dy, y, savemean, part, n, c, s, nsplit, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_cols_f32(const float* x, const float* dy, const float* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<float, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_cols_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<__half, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}
extern "C" __global__ void bn_backward_partial_relu_cols_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, float* part, long long n, int c, unsigned int* counters, const float* scale, const float* saveinvvar, float* dscale, float* dbias, float* coef)
{
    bn::backward_partial_cols<__nv_bfloat16, true>(x, dy, y, savemean, part, n, c, counters, bn::SumsOut{scale, saveinvvar, dscale, dbias, coef});
}

// Backward elementwise (training statistics) of dy masked by y.
extern "C" __global__ void bn_backward_train_relu_f32(const float* x, const float* dy, const float* y, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 1, true>(x, dy, y, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_relu_f32_vec(const float* x, const float* dy, const float* y, const float* savemean, const float* coef, float* dx, long long n, int c, long long s)
{
    bn::backward_dx<float, 4, true>(x, dy, y, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_relu_f16(const __half* x, const __half* dy, const __half* y, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 1, true>(x, dy, y, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_relu_f16_vec(const __half* x, const __half* dy, const __half* y, const float* savemean, const float* coef, __half* dx, long long n, int c, long long s)
{
    bn::backward_dx<__half, 8, true>(x, dy, y, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_relu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 1, true>(x, dy, y, savemean, coef, dx, n, c, s);
}
extern "C" __global__ void bn_backward_train_relu_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* savemean, const float* coef, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_dx<__nv_bfloat16, 8, true>(x, dy, y, savemean, coef, dx, n, c, s);
}

// Backward with frozen statistics of dy masked by y: dx = relu_grad(dy, y) * k, k as above.
extern "C" __global__ void bn_backward_infer_relu_f32(const float* dy, const float* y, const float* scale, const float* run_var, double eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 1, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_relu_f32_vec(const float* dy, const float* y, const float* scale, const float* run_var, double eps, float* dx, long long n, int c, long long s)
{
    bn::backward_infer<float, 4, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_relu_f16(const __half* dy, const __half* y, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 1, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_relu_f16_vec(const __half* dy, const __half* y, const float* scale, const float* run_var, double eps, __half* dx, long long n, int c, long long s)
{
    bn::backward_infer<__half, 8, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_relu_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 1, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
extern "C" __global__ void bn_backward_infer_relu_bf16_vec(const __nv_bfloat16* dy, const __nv_bfloat16* y, const float* scale, const float* run_var, double eps, __nv_bfloat16* dx, long long n, int c, long long s)
{
    bn::backward_infer<__nv_bfloat16, 8, true>(dy, y, bn::FrozenFactor{scale, run_var, eps}, dx, n, c, s);
}
