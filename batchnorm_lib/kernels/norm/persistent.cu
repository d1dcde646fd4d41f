// Single-read training passes of batch normalization over NCHW data (N, C, S): each block keeps
// its part of a channel on chip (shared memory) between the statistics and the elementwise pass,
// so the forward reads x once and writes y once (8 bytes per float32 element instead of the
// two-pass kernels' 12) and the backward reads x and dy once and writes dx (12 instead of 20).
//
// Launch: grid (nsplit, G), G <= C, kBlock threads, slots * kBlock packs of dynamic shared memory
// per data array held (x; the backward also the masked dy; less for padded rows, see Tile). Block
// (split, g) takes channels g, g + G, g + 2G, ... one after another (G = C: one channel each), and
// of channel ch owns the packs [split * chunk, min((split + 1) * chunk, total)) of channel ch's
// n * S / VEC packs, chunk = ceil(total / nsplit) <= slots * kBlock; thread t takes packs
// begin + t + k * kBlock and keeps pack k in slot k of its column of the tile. Except on padded
// rows, tiling, thread assignment, batching of the loads and accumulation order are
// batchnorm.cu's (bn_stats_partial, bn_backward_partial), so each block's partial is the one the
// two-pass kernel writes for the same nsplit.
//
// The blocks of a channel meet at a barrier on two counters of `sync` (arrivals, generation) after
// writing their partials. With nsplit > 1 that needs every block of the grid resident at once,
// which the host guarantees by sizing the grid from the kernel's registers and shared memory and
// the device's SMs (kernels/norm/cuda.py, _persistent_plan): pycuda has no cooperative launch.
// A channel of more than the device can hold for all channels at once is split all the same: the
// grid is then G groups of nsplit blocks that fit the device, each group walking its channels in
// turn (the channel's counters are its own, so a group's barrier waits only for its own blocks).
// With nsplit 1 no block waits, and the grid may be of any size. The last block
// to arrive sets the arrival count back to 0 and advances the generation, so the counters are
// ready for the next launch without a memset. After the barrier every block merges all of its
// channel's partials in the same fixed order, in float64 as bn_stats_finalize and
// bn_backward_finalize do, so every block holds bitwise the same per-channel factors and results
// are bitwise repeatable. Block 0 of a channel writes the per-channel outputs. float64 appears
// only in that per-channel merge (once per block), never per element.
#include "bn_common.cuh"

namespace persist {

using bn::kBlock;
using bn::kPartial;
using bn::kSumPartial;
using bn::kSums;
using bn::Pack;
using bn::RowWalk;
using bn::Sums;
using bn::SumStream;
using bn::Welford;
using bn::WelfordD;
using bn::WelfordStream;
using bn::add_packs;
using bn::channel_barrier;
using bn::read_partial_cg;
using bn::from_float;
using bn::load_pack;
using bn::store_pack;
using bn::to_float;

// Packs loaded before any is used: batchnorm.cu's reduction_unroll, so that the Welford batches
// (one division per batch) and hence a block's partial are bitwise the two-pass kernel's.
template <typename T, int VEC>
__host__ __device__ constexpr int batch_packs()
{
    return VEC > 1 ? 2 : static_cast<int>(16 / sizeof(T));
}

// Bytes of the data arrays each thread of a packed (8- or 16-byte) entry loads before it uses any:
// 256 threads x 64 bytes = 16 KiB, what an SM needs in flight at ~700 ns (3.0 TB/s over 132 SMs,
// Little's law), so one resident block per SM reaches the bandwidth and a block may hold a whole
// channel of up to 227 KiB. The host's plan (cuda.py, PERSIST_AHEAD_BYTES) relies on this figure.
constexpr int kAheadBytes = 64;

// Batches of packs a thread loads before folding the first, over `arrays` data arrays (x; x and
// dy): kAheadBytes on the packed entries; the scalar entries load one batch ahead.
template <typename T, int VEC, int ARRAYS>
__host__ __device__ constexpr int ahead_batches()
{
    constexpr int batch_bytes = batch_packs<T, VEC>() * VEC * static_cast<int>(sizeof(T)) * ARRAYS;
    return VEC > 1 && batch_bytes < kAheadBytes ? kAheadBytes / batch_bytes : 1;
}

// The part of a channel one block holds, and this thread's walk over its packs.
//
// The walk runs over `cols` packs per row: S / VEC, or, on the scalar entries for rows a little
// short of a power of two (cols a power of two dividing kBlock, S >= 3/4 cols: 7x7 rows of 49 run
// as 64), a row padded to cols positions. Padded, a warp's 32 lanes take positions of one row only,
// so each load or store request covers one contiguous stretch of memory (the sectors it touches
// are the fewest its bytes need), where 32 lanes over 49-element rows would mostly span two rows
// C * S elements apart. The block then starts at a row, so each thread keeps one column (kBlock
// is a multiple of cols): the threads of the padding columns load nothing, and the held tile packs
// the others' slots (S of each cols threads) so no shared memory is spent on the padding.
struct Tile {
    int ch;
    int split;
    int nsplit;
    long long cols;   // walk positions per row (S / VEC, or the padded row)
    long long begin;  // first position of the block
    long long end;
    bool active;      // the thread's column is in the row (always, unpadded)
    int rank;         // the thread's column of the held tile
    int stride;       // held packs per slot: kBlock, or S per cols threads padded

    __device__ __forceinline__ Tile(long long n, long long s, int vec, long long walk_cols, int channel)
    {
        ch = channel;
        split = blockIdx.x;
        nsplit = gridDim.x;
        // (S / VEC on the packed entries, whatever the host passes: a constant division lets
        // nvcc keep their loads ahead of the arithmetic)
        cols = vec == 1 ? walk_cols : s / vec;
        const long long total = n * cols;
        long long chunk = (total + nsplit - 1) / nsplit;
        // only the scalar entries pad (the packed ones fold all of this away)
        const bool padded = vec == 1 && cols != s;
        if (padded) {
            chunk = (chunk + cols - 1) / cols * cols;  // whole rows
        }
        begin = split * chunk;
        end = min(begin + chunk, total);
        active = true;
        rank = threadIdx.x;
        stride = kBlock;
        if (padded) {
            const int columns = static_cast<int>(cols);  // a power of two <= kBlock
            const int column = static_cast<int>(threadIdx.x) & (columns - 1);
            active = column < s;
            rank = static_cast<int>(threadIdx.x) / columns * static_cast<int>(s) + column;
            stride = kBlock / columns * static_cast<int>(s);
        }
    }

    // Element offset of the pack a walk points at.
    __device__ __forceinline__ long long offset(const RowWalk& w, int c, long long s, int vec) const
    {
        return (w.row * c + ch) * s + w.col * vec;
    }
};

// The held tile's slot stride and this thread's column in it: only the scalar entries pad rows, so
// the packed ones keep a stride known at compile time (their loads stay ahead of the shared-memory
// address arithmetic).
template <int VEC>
__device__ __forceinline__ int held_stride(const Tile& t)
{
    return VEC > 1 ? kBlock : t.stride;
}

template <int VEC>
__device__ __forceinline__ int held_rank(const Tile& t)
{
    return VEC > 1 ? static_cast<int>(threadIdx.x) : t.rank;
}

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC>* held_packs()
{
    extern __shared__ __align__(16) unsigned char persist_tile[];
    return reinterpret_cast<Pack<T, VEC>*>(persist_tile);
}

// --- training forward -----------------------------------------------------------------------------

struct ForwardArgs {
    float* part;
    unsigned int* sync;
    double eps;
    double factor;
    const float* scale;
    const float* bias;
    float* savemean;
    float* saveinvvar;
    float* run_mean;
    float* run_var;
    int relu;
};

// Warp 0 merges the channel's partials lane-strided then down a shuffle tree (bn_stats_finalize's
// order) and lane 0 finishes: the normalize constants go to `k` (mean, factor, bias) for the whole
// block; block 0 also writes savemean, saveinvvar and the running statistics.
__device__ __forceinline__ void forward_finalize(const ForwardArgs& a, const Tile& t, float shift,
                                                 float* k)
{
    const int lane = threadIdx.x & 31;
    if (threadIdx.x >= 32) {
        return;
    }
    const float* base = a.part + static_cast<long long>(t.ch) * t.nsplit * kPartial;
    WelfordD w = {0.0, 0.0, 0.0, 0.0};
    for (int b = lane; b < t.nsplit; b += 32) {
        w = bn::welford_merge(w, read_partial_cg(base + b * kPartial));
    }
    w = bn::warp_reduce(w);
    if (lane == 0) {
        double mean, var;
        bn::welford_finish(w, shift, mean, var);
        const float m = static_cast<float>(mean);
        k[0] = m;
        k[1] = static_cast<float>(static_cast<double>(a.scale[t.ch]) / sqrt(var + a.eps));
        k[2] = a.bias[t.ch];
        if (t.split == 0) {
            a.savemean[t.ch] = m;
            a.saveinvvar[t.ch] = static_cast<float>(1.0 / sqrt(var + a.eps));
            const double keep = 1.0 - a.factor;
            a.run_mean[t.ch] = static_cast<float>(keep * a.run_mean[t.ch] + a.factor * mean);
            a.run_var[t.ch] =
                static_cast<float>(keep * a.run_var[t.ch] + a.factor * (var * (w.n / (w.n - 1.0))));
        }
    }
}

// relu(v) = 0 if v <= 0 else v: NaN stays NaN, -0 becomes +0 (the contract's fused ReLU).
__device__ __forceinline__ float relu_if(float v, int relu)
{
    return relu && v <= 0.f ? 0.f : v;
}

// K packs of the thread's walk loaded (all issued before any is used), folded into the statistics
// in batches of BATCH packs (the same batches, in the same order, whatever K: the partial does not
// depend on how far ahead the loads run) and held in the next K slots.
template <typename T, int VEC, int K, int BATCH>
__device__ __forceinline__ void forward_step(const T* x, const Tile& t, RowWalk& walk, int c,
                                             long long s, float shift, WelfordStream& acc,
                                             Pack<T, VEC>* held, int& slots)
{
    Pack<T, VEC> pk[K];
#pragma unroll
    for (int u = 0; u < K; ++u) {
        pk[u] = load_pack<T, VEC>(x + t.offset(walk, c, s, VEC));
        walk.advance();
    }
#pragma unroll
    for (int b = 0; b < K / BATCH; ++b) {
        Pack<T, VEC> batch[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
            batch[u] = pk[b * BATCH + u];
        }
        add_packs(acc, batch, shift);
    }
#pragma unroll
    for (int u = 0; u < K; ++u) {
        held[(slots + u) * held_stride<VEC>(t)] = pk[u];
    }
    slots += K;
}

// One channel's part: x and y may be the same buffer: each element is read and written by one
// thread, and every read of x (the shift included) happens before the barrier, every write after
// it. The block's next channel may start as soon as its threads are done: each thread reuses only
// its own slots of the held tile, and `k` and the reduction's scratch are written again only past
// the next channel's barrier, which every thread reaches after its stores.
template <typename T, int VEC>
__device__ __forceinline__ void forward_channel(const T* x, T* y, long long n, int c, long long s,
                                                long long cols, const ForwardArgs& a, int ch)
{
    constexpr int kBatch = batch_packs<T, VEC>();
    constexpr int kGroup = ahead_batches<T, VEC, 1>() * kBatch;
    __shared__ float k[3];
    const Tile t(n, s, VEC, cols, ch);
    Pack<T, VEC>* held = held_packs<T, VEC>() + held_rank<VEC>(t);
    const float shift = to_float(x[static_cast<long long>(t.ch) * s]);

    WelfordStream acc;
    int slots = 0;
    long long j = t.begin + threadIdx.x;
    if ((VEC > 1 || t.active) && j < t.end) {
        RowWalk walk(j, kBlock, t.cols);
        for (; j + (kGroup - 1) * kBlock < t.end; j += kGroup * kBlock) {
            forward_step<T, VEC, kGroup, kBatch>(x, t, walk, c, s, shift, acc, held, slots);
        }
        for (; j + (kBatch - 1) * kBlock < t.end; j += kBatch * kBlock) {  // < kAhead batches left
            forward_step<T, VEC, kBatch, kBatch>(x, t, walk, c, s, shift, acc, held, slots);
        }
        for (; j < t.end; j += kBlock) {  // at most kBatch - 1 packs left
            forward_step<T, VEC, 1, 1>(x, t, walk, c, s, shift, acc, held, slots);
        }
    }
    const Welford w = bn::block_reduce(acc.result());
    if (threadIdx.x == 0) {
        bn::write_partial(a.part + (static_cast<long long>(t.ch) * t.nsplit + t.split) * kPartial,
                          w, shift);
    }
    channel_barrier(a.sync, t.ch, t.nsplit);
    forward_finalize(a, t, shift, k);
    __syncthreads();

    if (slots == 0) {
        return;
    }
    const float m = k[0], f = k[1], b = k[2];
    RowWalk walk(t.begin + threadIdx.x, kBlock, t.cols);
    for (int i = 0; i < slots; ++i) {
        Pack<T, VEC> pk = held[i * held_stride<VEC>(t)];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            pk.v[e] = from_float<T>(relu_if(fmaf(__fsub_rn(to_float(pk.v[e]), m), f, b), a.relu));
        }
        store_pack<T, VEC>(y + t.offset(walk, c, s, VEC), pk);
        walk.advance();
    }
}

// --- training backward ----------------------------------------------------------------------------

struct BackwardArgs {
    float* part;
    unsigned int* sync;
    const float* scale;
    const float* savemean;
    const float* saveinvvar;
    float* dscale;
    float* dbias;
};

// bn_backward_finalize's merge and coefficients (k, c0, c1 of dx = dy k - ((x - m) c1 + c0)) for
// the whole block in `k`; block 0 also writes dscale and dbias.
__device__ __forceinline__ void backward_finalize(const BackwardArgs& a, const Tile& t, long long m,
                                                  float* k)
{
    const int lane = threadIdx.x & 31;
    if (threadIdx.x >= 32) {
        return;
    }
    double f[5];
    bn::backward_factors(a.part, t.ch, t.nsplit, m, lane, a.scale, a.saveinvvar, f);
    if (lane == 0) {
        k[0] = static_cast<float>(f[2]);
        k[1] = static_cast<float>(f[3]);
        k[2] = static_cast<float>(f[4]);
        if (t.split == 0) {
            a.dbias[t.ch] = static_cast<float>(f[0]);
            a.dscale[t.ch] = static_cast<float>(f[1]);
        }
    }
}

// dy where the fused ReLU passed its input (y > 0, or y NaN), else 0.
template <typename T, int VEC>
__device__ __forceinline__ void relu_mask(Pack<T, VEC>& g, const Pack<T, VEC>& y)
{
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        if (to_float(y.v[e]) <= 0.f) {
            g.v[e] = from_float<T>(0.f);
        }
    }
}

// One pack's terms of the backward sums, as one step (batchnorm.cu's order: a flush per pack).
template <typename T, int VEC>
__device__ __forceinline__ void add_terms(SumStream<kSums>& acc, const Pack<T, VEC>& px,
                                          const Pack<T, VEC>& pg, float mean)
{
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        bn::backward_terms(acc, to_float(pg.v[e]), __fsub_rn(to_float(px.v[e]), mean));
    }
    acc.flush_step();
}

// K packs of x and dy (and y for the fused ReLU's mask) loaded, every load issued before any is
// used, their terms added pack by pack, and held in the next K slots.
template <typename T, int VEC, int K>
__device__ __forceinline__ void backward_step(const T* x, const T* dy, const T* y, const Tile& t,
                                              RowWalk& walk, int c, long long s, float mean,
                                              SumStream<kSums>& acc, Pack<T, VEC>* held_x,
                                              Pack<T, VEC>* held_g, int& slots)
{
    Pack<T, VEC> px[K], pg[K], py[K];
    long long off[K];
#pragma unroll
    for (int u = 0; u < K; ++u) {
        off[u] = t.offset(walk, c, s, VEC);
        px[u] = load_pack<T, VEC>(x + off[u]);
        pg[u] = load_pack<T, VEC>(dy + off[u]);
        walk.advance();
    }
    if (y != nullptr) {
#pragma unroll
        for (int u = 0; u < K; ++u) {
            py[u] = load_pack<T, VEC>(y + off[u]);
        }
#pragma unroll
        for (int u = 0; u < K; ++u) {
            relu_mask<T, VEC>(pg[u], py[u]);
        }
    }
#pragma unroll
    for (int u = 0; u < K; ++u) {
        add_terms(acc, px[u], pg[u], mean);
        held_x[(slots + u) * held_stride<VEC>(t)] = px[u];
        held_g[(slots + u) * held_stride<VEC>(t)] = pg[u];
    }
    slots += K;
}

// y: the forward's output for the fused ReLU's gradient, or null; only the masked dy is held.
// dx may be dy or x: every read happens before the barrier, every write after it.
template <typename T, int VEC>
__device__ __forceinline__ void backward_channel(const T* x, const T* dy, const T* y, T* dx,
                                                 long long n, int c, long long s, long long cols,
                                                 int slots_per_array, const BackwardArgs& a, int ch)
{
    constexpr int kBatch = batch_packs<T, VEC>();
    constexpr int kGroup = ahead_batches<T, VEC, 2>() * kBatch;
    __shared__ float k[3];
    const Tile t(n, s, VEC, cols, ch);
    Pack<T, VEC>* held_x = held_packs<T, VEC>() + held_rank<VEC>(t);
    Pack<T, VEC>* held_g = held_x + static_cast<long long>(slots_per_array) * held_stride<VEC>(t);
    const float mean = a.savemean[t.ch];

    SumStream<kSums> acc;
    int slots = 0;
    long long j = t.begin + threadIdx.x;
    if ((VEC > 1 || t.active) && j < t.end) {
        RowWalk walk(j, kBlock, t.cols);
        for (; j + (kGroup - 1) * kBlock < t.end; j += kGroup * kBlock) {
            backward_step<T, VEC, kGroup>(x, dy, y, t, walk, c, s, mean, acc, held_x, held_g, slots);
        }
        for (; j + (kBatch - 1) * kBlock < t.end; j += kBatch * kBlock) {  // < kAhead batches left
            backward_step<T, VEC, kBatch>(x, dy, y, t, walk, c, s, mean, acc, held_x, held_g, slots);
        }
        for (; j < t.end; j += kBlock) {  // at most kBatch - 1 packs left
            backward_step<T, VEC, 1>(x, dy, y, t, walk, c, s, mean, acc, held_x, held_g, slots);
        }
    }
    const Sums<kSums> r = bn::block_reduce(acc.result());
    if (threadIdx.x == 0) {
        bn::write_sums(a.part + (static_cast<long long>(t.ch) * t.nsplit + t.split) * kSumPartial, r);
    }
    channel_barrier(a.sync, t.ch, t.nsplit);
    backward_finalize(a, t, n * s, k);
    __syncthreads();

    if (slots == 0) {
        return;
    }
    const float kk = k[0], c0 = k[1], c1 = k[2];
    RowWalk walk(t.begin + threadIdx.x, kBlock, t.cols);
    for (int i = 0; i < slots; ++i) {
        const Pack<T, VEC> px = held_x[i * held_stride<VEC>(t)];
        Pack<T, VEC> pg = held_g[i * held_stride<VEC>(t)];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const float u = fmaf(__fsub_rn(to_float(px.v[e]), mean), c1, c0);
            pg.v[e] = from_float<T>(fmaf(to_float(pg.v[e]), kk, -u));
        }
        store_pack<T, VEC>(dx + t.offset(walk, c, s, VEC), pg);
        walk.advance();
    }
}

// The block's channels: blockIdx.y, then every gridDim.y-th (see the top of the file).
template <typename T, int VEC>
__device__ __forceinline__ void forward_train(const T* x, T* y, long long n, int c, long long s,
                                              long long cols, const ForwardArgs& a)
{
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        forward_channel<T, VEC>(x, y, n, c, s, cols, a, ch);
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void backward_train(const T* x, const T* dy, const T* y, T* dx,
                                               long long n, int c, long long s, long long cols,
                                               int slots_per_array, const BackwardArgs& a)
{
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        backward_channel<T, VEC>(x, dy, y, dx, n, c, s, cols, slots_per_array, a, ch);
    }
}

}  // namespace persist

// --- entry points ---------------------------------------------------------------------------------
// Grid (nsplit, G) of bn::kBlock threads, G <= C groups walking the channels, every block resident
// at once when nsplit > 1 (see the top of the file),
// with the dynamic shared memory of the tile: slots * kBlock packs (forward), twice that
// (backward). part holds C * nsplit partials; sync 2 * C counters, zero before the first launch and
// left zero by every launch. relu: nonzero for the fused ReLU. y in the backward: the forward's
// output for the fused ReLU's gradient, or null. cols: the walk's positions per row, S / VEC or
// the padded row of the scalar entries (see Tile). Suffixes: none, one element per load; _vec,
// 16-byte packs; _vec8, 8-byte packs (rows a multiple of 8 bytes but not of 16, as 16-bit data at
// 14x14): the spatial size a multiple of the pack and every data pointer aligned to it.

extern "C" __global__ void bn_persist_forward_f32(const float* x, float* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<float, 1>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_f32_vec(const float* x, float* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<float, 4>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_f16(const __half* x, __half* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__half, 1>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_f16_vec(const __half* x, __half* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__half, 8>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__nv_bfloat16, 1>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_bf16_vec(const __nv_bfloat16* x, __nv_bfloat16* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__nv_bfloat16, 8>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_backward_f32(const float* x, const float* dy, const float* y, float* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<float, 1>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_f32_vec(const float* x, const float* dy, const float* y, float* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<float, 4>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_f16(const __half* x, const __half* dy, const __half* y, __half* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__half, 1>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_f16_vec(const __half* x, const __half* dy, const __half* y, __half* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__half, 8>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__nv_bfloat16, 1>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_bf16_vec(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__nv_bfloat16, 8>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_forward_f32_vec8(const float* x, float* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<float, 2>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_f16_vec8(const __half* x, __half* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__half, 4>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_forward_bf16_vec8(const __nv_bfloat16* x, __nv_bfloat16* y, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, double eps, double factor, const float* scale, const float* bias, float* savemean, float* saveinvvar, float* run_mean, float* run_var, int relu)
{
    persist::forward_train<__nv_bfloat16, 4>(x, y, n, c, s, cols, {part, sync, eps, factor, scale, bias, savemean, saveinvvar, run_mean, run_var, relu});
}
extern "C" __global__ void bn_persist_backward_f32_vec8(const float* x, const float* dy, const float* y, float* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<float, 2>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_f16_vec8(const __half* x, const __half* dy, const __half* y, __half* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__half, 4>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
extern "C" __global__ void bn_persist_backward_bf16_vec8(const __nv_bfloat16* x, const __nv_bfloat16* dy, const __nv_bfloat16* y, __nv_bfloat16* dx, float* part, unsigned int* sync, long long n, int c, long long s, long long cols, int slots, const float* scale, const float* savemean, const float* saveinvvar, float* dscale, float* dbias)
{
    persist::backward_train<__nv_bfloat16, 4>(x, dy, y, dx, n, c, s, cols, slots, {part, sync, scale, savemean, saveinvvar, dscale, dbias});
}
