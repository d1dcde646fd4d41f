// cudasim_coop.h: the device side of blocks that wait for each other (see cudasim_grid.h).
// Included by cudasim_runtime.h after the atomics, fences and cudasim_checks.h.
//
// - cooperative_groups::this_grid().sync() (and grid_group's size/thread_rank/num_blocks/
//   block_rank/is_valid, this_thread_block()): the toolkit's <cooperative_groups.h> is empty for a
//   host compiler, so the same kernel source compiles here and with nvcc;
// - atomics, __threadfence*() and __nanosleep() are the points where a spinning thread lets others
//   run: each atomic is wrapped by a macro that notes whether it changed memory (progress) or not
//   (a poll). Atomics defined after this file would be caught by these macros: keep them above.
#ifndef CUDASIM_COOP_H
#define CUDASIM_COOP_H

#define CUDASIM_WATCH(NAME, P, ...)                                                               \
    cudasim::watched_atomic([&](auto* cudasim_p_) { return NAME(cudasim_p_, __VA_ARGS__); }, (P), \
                            __FILE__, __LINE__)
#define atomicAdd(p, ...) CUDASIM_WATCH(atomicAdd, p, __VA_ARGS__)
#define atomicSub(p, ...) CUDASIM_WATCH(atomicSub, p, __VA_ARGS__)
#define atomicExch(p, ...) CUDASIM_WATCH(atomicExch, p, __VA_ARGS__)
#define atomicMin(p, ...) CUDASIM_WATCH(atomicMin, p, __VA_ARGS__)
#define atomicMax(p, ...) CUDASIM_WATCH(atomicMax, p, __VA_ARGS__)
#define atomicAnd(p, ...) CUDASIM_WATCH(atomicAnd, p, __VA_ARGS__)
#define atomicOr(p, ...) CUDASIM_WATCH(atomicOr, p, __VA_ARGS__)
#define atomicXor(p, ...) CUDASIM_WATCH(atomicXor, p, __VA_ARGS__)
#define atomicInc(p, ...) CUDASIM_WATCH(atomicInc, p, __VA_ARGS__)
#define atomicDec(p, ...) CUDASIM_WATCH(atomicDec, p, __VA_ARGS__)
#define atomicCAS(p, ...) CUDASIM_WATCH(atomicCAS, p, __VA_ARGS__)

static inline void __cudasim_fence(const char* file, int line) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    cudasim::spin_point(file, line);
}
#define __threadfence() __cudasim_fence(__FILE__, __LINE__)
#define __threadfence_block() __cudasim_fence(__FILE__, __LINE__)
#define __threadfence_system() __cudasim_fence(__FILE__, __LINE__)
#undef __nanosleep
#define __nanosleep(ns) ((void)(ns), cudasim::spin_point(__FILE__, __LINE__))

namespace cooperative_groups {

struct thread_block {
    void sync() const { __syncthreads(); }
    unsigned long long size() const { return (unsigned long long)blockDim.x * blockDim.y * blockDim.z; }
    unsigned long long num_threads() const { return size(); }
    unsigned long long thread_rank() const {
        return ((unsigned long long)threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    }
    dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
    dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
    dim3 group_dim() const { return blockDim; }
    dim3 dim_threads() const { return blockDim; }
};

// The grid of a cooperative launch. sync() waits until every thread of every block arrives (all
// blocks are resident: the launch is refused when they would not fit on the device).
struct grid_group {
    void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
        cudasim::grid_sync(file, line);
    }
    bool is_valid() const { return cudasim::g_grid.cooperative != 0; }
    unsigned long long num_blocks() const { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z; }
    unsigned long long block_rank() const {
        return ((unsigned long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    }
    unsigned long long size() const { return num_blocks() * thread_block().size(); }
    unsigned long long num_threads() const { return size(); }
    unsigned long long thread_rank() const { return block_rank() * thread_block().size() + thread_block().thread_rank(); }
    dim3 group_dim() const { return gridDim; }
    dim3 dim_blocks() const { return gridDim; }
    dim3 block_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
};

static inline grid_group this_grid() { return grid_group(); }
static inline thread_block this_thread_block() { return thread_block(); }
static inline void sync(const grid_group& g) { g.sync(); }
static inline void sync(const thread_block& b) { b.sync(); }

}  // namespace cooperative_groups

#endif  // CUDASIM_COOP_H
