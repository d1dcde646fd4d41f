// cudasim_runtime.h: CUDA's execution model on the host CPU.
//
// Force-included (g++ -include) ahead of every CUDA C source the simulator compiles. Each thread of
// a block is a fiber with its own small stack; one OS thread runs one block at a time, blocks run
// in order (unless they wait for each other: cudasim_grid.h). Device math is in cudasim_math.h. A fiber runs until it reaches a barrier (__syncthreads, __syncwarp, a warp shuffle,
// a vote) or returns; the scheduler then resumes a randomly chosen runnable fiber, so the order in
// which threads pass every barrier is shuffled (seeded, reproducible). Code that reads another
// thread's shared-memory write without a barrier in between therefore reads stale or poisoned data.
//
// Shuffles and votes are real lock-step exchanges: every lane named in the mask deposits its value,
// the last one to arrive computes every lane's result, and all of them resume together. Shared
// memory (static and dynamic) is filled with 0xff bytes (NaN for floats, -1 for integers) at the
// start of every block. Misuse that a GPU would hang on or silently mis-compute is reported as a
// launch error: divergent __syncthreads, a thread exiting while others wait at a barrier,
// mismatched shuffle masks, lanes named in a mask that do not exist, deadlocks.
#ifndef CUDASIM_RUNTIME_H
#define CUDASIM_RUNTIME_H

#define __CUDASIM__ 1

// Execution-space qualifiers first: the CUDA headers keep definitions that already exist.
#define __host__
#define __device__
#define __global__
#define __constant__
#define __managed__
#define __grid_constant__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __cudasim_shared_attr __attribute__((section("cudasim_shared"), aligned(16)))
#define __shared__ __cudasim_shared_attr static

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
// x86-64 switches fibers with a few instructions; elsewhere (or with -DCUDASIM_USE_UCONTEXT)
// ucontext's swapcontext, which is slower (a signal-mask system call per switch) but portable.
#if defined(__x86_64__) && !defined(CUDASIM_USE_UCONTEXT)
#define CUDASIM_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// The CUDA headers may have redefined some of these; ours win for the kernel source.
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __host__
#define __device__
#define __global__
#define __constant__
#define __managed__
#define __grid_constant__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ __cudasim_shared_attr static

#define CUDASIM_EXPORT extern "C" __attribute__((visibility("default")))

// The architecture the source is compiled "for" (SourceModule's arch, default the simulated
// device's), defined only now so the CUDA headers above took their host paths.
#if defined(CUDASIM_ARCH) && !defined(__CUDA_ARCH__)
#define __CUDA_ARCH__ CUDASIM_ARCH
#endif

namespace cudasim {

enum { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, EXITED = 3, AT_ACTIVEMASK = 4 };
enum { OP_SYNCWARP = 1, OP_SHFL, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR, OP_BALLOT, OP_ALL, OP_ANY,
       OP_MATCH_ANY, OP_REDUCE_ADD, OP_REDUCE_MIN, OP_REDUCE_MAX, OP_REDUCE_AND, OP_REDUCE_OR,
       OP_REDUCE_XOR, OP_REDUCE_UMIN, OP_REDUCE_UMAX };
static const char* const kOpNames[] = {
    "?", "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
    "__ballot_sync", "__all_sync", "__any_sync", "__match_any_sync", "__reduce_add_sync",
    "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync",
    "__reduce_xor_sync", "__reduce_min_sync", "__reduce_max_sync"};

struct Fiber {
    void* sp;
    uint3 tid;
    int linear, warp, lane, state;
    // at a barrier or warp operation
    const char* file;
    int line;
    int op;
    unsigned mask;
    uint64_t in, out;
    int src;
    int barrier_result;
    // the last atomic that changed nothing: its address and the value it saw (cudasim_grid.h,
    // watched_atomic: seeing another thread's change there is progress)
    const void* poll_addr;
    unsigned char poll_seen[16];
#if !defined(CUDASIM_ASM_SWITCH)
    ucontext_t ctx;
#endif
};

struct Warp {
    unsigned arrived;  // lanes waiting at the current warp operation
    unsigned exists;   // lanes that exist in this (possibly partial) warp
    unsigned exited;   // lanes that have returned
    int op;
    unsigned mask;
    const char* file;
    int line;
};

struct LaunchConfig {  // filled by the Python side; layout mirrored there
    uint32_t grid[3], block[3];
    uint64_t shared_bytes;
    uint64_t seed;
    uint64_t stack_bytes;
};

typedef void (*Thunk)(void* fn, const unsigned char* args);

struct State {
    // launch
    dim3 grid, block;
    Thunk thunk;
    void* fn;
    const unsigned char* args;
    const char* kernel;
    uint3 block_idx;
    // block
    Fiber* fibers;
    int nthreads, live, exited, arrivals, barrier_count;
    const char* barrier_file;
    int barrier_line;
    int first_exited;
    Warp warps[32];
    Fiber** ready;
    int nready;
    Fiber* cur;
    void* main_sp;
#if !defined(CUDASIM_ASM_SWITCH)
    ucontext_t main_ctx;
#endif
    // memory
    unsigned char* stacks;
    size_t stacks_len, stack_bytes, stack_stride;
    int stacks_threads;
    unsigned char* dyn_shared;
    size_t dyn_shared_len;
    // zero-initialised function-local statics (template __shared__ arrays), found by the loader
    const uint64_t* poison_addr;
    const uint64_t* poison_size;
    int npoison;
    // errors
    bool failed;
    char err[4096];
    uint64_t rng;
    sigjmp_buf fault_jmp;
    volatile void* fault_addr;
    volatile int fault_sig;
};

static State g;

extern "C" char __start_cudasim_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cudasim_shared[] __attribute__((weak, visibility("hidden")));

static inline uint64_t next_random() {  // xorshift64*
    uint64_t x = g.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g.rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

// ---- context switching -----------------------------------------------------------------------
#if defined(CUDASIM_ASM_SWITCH)
// cudasim_switch(save, to): push callee-saved registers and the FP control words, store the stack
// pointer in *save, load `to`, pop, return into the other context. No signal-mask syscall.
extern "C" void cudasim_switch(void** save, void* to);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".hidden cudasim_switch\n"
    ".type cudasim_switch,@function\n"
    "cudasim_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cudasim_switch, .-cudasim_switch\n");
#endif

static void fiber_main();

static inline void switch_to(Fiber* from, Fiber* to) {
    g.cur = to;
#if defined(CUDASIM_ASM_SWITCH)
    cudasim_switch(from ? &from->sp : &g.main_sp, to ? to->sp : g.main_sp);
#else
    swapcontext(from ? &from->ctx : &g.main_ctx, to ? &to->ctx : &g.main_ctx);
#endif
}

static void fiber_prepare(Fiber* f, unsigned char* stack_lo, size_t len) {
#if defined(CUDASIM_ASM_SWITCH)
    uintptr_t top = ((uintptr_t)(stack_lo + len)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                       // return address of fiber_main: never used
    *--sp = (uint64_t)(uintptr_t)&fiber_main;
    for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12..r15
    --sp;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    memcpy(sp, &mxcsr, 4);
    memcpy((char*)sp + 4, &fpucw, 2);
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = stack_lo;
    f->ctx.uc_stack.ss_size = len;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, (void (*)())fiber_main, 0);
#endif
}

// ---- errors ----------------------------------------------------------------------------------
static int describe_thread(char* buf, size_t n, const Fiber* f) {
    return snprintf(buf, n, "thread (%u,%u,%u) of block (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z,
                    g.block_idx.x, g.block_idx.y, g.block_idx.z);
}

// Abandon the launch: record the message and return to the launching context for good.
[[noreturn]] static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g.err, sizeof g.err, fmt, ap);
    va_end(ap);
    g.failed = true;
    Fiber* self = g.cur;
    switch_to(self, nullptr);
    abort();  // a failed launch never resumes its fibers
}

static void describe_waiters(char* buf, size_t n) {
    size_t used = 0;
    for (int i = 0; i < g.nthreads && used + 200 < n; ++i) {
        const Fiber* f = &g.fibers[i];
        if (f->state == RUNNABLE) continue;
        // report the first thread of each distinct situation only
        bool seen = false;
        for (int j = 0; j < i && !seen; ++j) {
            const Fiber* o = &g.fibers[j];
            seen = o->state == f->state && o->line == f->line && o->op == f->op &&
                   (f->state != AT_WARP || o->warp == f->warp);
        }
        if (seen) continue;
        char who[96];
        describe_thread(who, sizeof who, f);
        if (f->state == AT_BARRIER)
            used += snprintf(buf + used, n - used, "\n  %s (and others) waits at __syncthreads() %s:%d",
                             who, f->file, f->line);
        else if (f->state == AT_WARP)
            used += snprintf(buf + used, n - used,
                             "\n  %s (and others of warp %d) waits at %s(mask 0x%08x) %s:%d, lanes "
                             "arrived 0x%08x", who, f->warp, kOpNames[f->op], f->mask, f->file,
                             f->line, g.warps[f->warp].arrived);
        else if (f->state == EXITED)
            used += snprintf(buf + used, n - used, "\n  %s (and others) has exited", who);
    }
}

// ---- scheduling ------------------------------------------------------------------------------
static inline void make_ready(Fiber* f) {
    f->state = RUNNABLE;
    g.ready[g.nready++] = f;
}

static inline Fiber* pick_ready() {
    if (g.nready == 0) return nullptr;
    int i = (int)(next_random() % (uint64_t)g.nready);
    Fiber* f = g.ready[i];
    g.ready[i] = g.ready[--g.nready];
    return f;
}

static void activemask_settle(const Fiber* self);

// Give up the processor: resume a randomly chosen runnable thread, or the launcher when none is.
static void note_wait_over();

static inline void yield_from(Fiber* self) {
    const bool waits = self->state != RUNNABLE;
    if (waits) activemask_settle(self);
    Fiber* next = pick_ready();
    if (next == self) {
        g.cur = self;
    } else {
        switch_to(self, next);
    }
    if (waits) note_wait_over();
}

// The lanes a warp operation waits for: those named in its mask that exist and have not exited.
// CUDA requires every *non-exited* lane named in the mask to take part; lanes that exited (or that
// a partial warp lacks) are not waited for, and reading their value gives poison.
static inline unsigned warp_needed(const Warp& w) { return w.mask & w.exists & ~w.exited; }

static void warp_try_complete(Warp& w, Fiber* base);

static void thread_exit() {
    Fiber* self = g.cur;
    self->state = EXITED;
    g.live--;
    if (g.exited++ == 0) g.first_exited = self->linear;
    if (g.arrivals > 0) {
        char who[96];
        describe_thread(who, sizeof who, self);
        fail("%s exited while %d thread(s) wait at __syncthreads() %s:%d: the barrier can never "
             "complete (divergent __syncthreads or an early return)", who, g.arrivals,
             g.barrier_file, g.barrier_line);
    }
    Warp& w = g.warps[self->warp];
    w.exited |= 1u << self->lane;
    warp_try_complete(w, self - self->lane);
    activemask_settle(self);
    note_wait_over();
    Fiber* next = pick_ready();
    switch_to(self, next);
    abort();
}

static void fiber_main() {
    g.thunk(g.fn, g.args);
    thread_exit();
}

// ---- block barrier ---------------------------------------------------------------------------
static int syncthreads_impl(int kind, int pred, const char* file, int line) {
    Fiber* self = g.cur;
    if (g.exited > 0) {
        char who[96], gone[96];
        describe_thread(who, sizeof who, self);
        describe_thread(gone, sizeof gone, &g.fibers[g.first_exited]);
        fail("%s reached __syncthreads() %s:%d after %s had exited: the barrier can never complete "
             "(divergent __syncthreads or an early return)", who, file, line, gone);
    }
    if (g.warps[self->warp].arrived && (warp_needed(g.warps[self->warp]) >> self->lane & 1u)) {
        const Warp& w = g.warps[self->warp];
        char who[96];
        describe_thread(who, sizeof who, self);
        fail("%s reached __syncthreads() %s:%d while lanes 0x%08x of its warp wait at "
             "%s(mask 0x%08x) %s:%d", who, file, line, w.arrived, kOpNames[w.op], w.mask, w.file,
             w.line);
    }
    if (g.arrivals == 0) {
        g.barrier_file = file;
        g.barrier_line = line;
        g.barrier_count = 0;
    } else if (line != g.barrier_line || strcmp(file, g.barrier_file) != 0) {
        char who[96];
        describe_thread(who, sizeof who, self);
        fail("divergent __syncthreads(): %s is at %s:%d while %d thread(s) wait at %s:%d", who,
             file, line, g.arrivals, g.barrier_file, g.barrier_line);
    }
    self->state = AT_BARRIER;
    self->file = file;
    self->line = line;
    self->op = 0;
    g.barrier_count += pred != 0;
    if (++g.arrivals == g.live) {
        int result = kind == 0 ? 0 : kind == 1 ? g.barrier_count
                   : kind == 2 ? (g.barrier_count == g.live) : (g.barrier_count > 0);
        g.arrivals = 0;
        for (int i = 0; i < g.nthreads; ++i) {
            Fiber* f = &g.fibers[i];
            if (f->state == AT_BARRIER) {
                f->barrier_result = result;
                make_ready(f);
            }
        }
    }
    yield_from(self);
    return self->barrier_result;
}

// ---- warp operations -------------------------------------------------------------------------
static inline int popcount32(unsigned v) { return __builtin_popcount(v); }

static uint64_t reduce_value(int op, unsigned mask) {
    const Warp* unused = nullptr;
    (void)unused;
    uint64_t acc = 0;
    bool first = true;
    Fiber* base = g.cur - g.cur->lane;
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        uint32_t v = (uint32_t)base[l].in;
        uint32_t a = (uint32_t)acc;
        switch (op) {
            case OP_REDUCE_ADD: acc = first ? v : a + v; break;
            case OP_REDUCE_AND: acc = first ? v : (a & v); break;
            case OP_REDUCE_OR: acc = first ? v : (a | v); break;
            case OP_REDUCE_XOR: acc = first ? v : (a ^ v); break;
            case OP_REDUCE_UMIN: acc = first ? v : std::min(a, v); break;
            case OP_REDUCE_UMAX: acc = first ? v : std::max(a, v); break;
            case OP_REDUCE_MIN: acc = first ? v : (uint32_t)std::min((int32_t)a, (int32_t)v); break;
            case OP_REDUCE_MAX: acc = first ? v : (uint32_t)std::max((int32_t)a, (int32_t)v); break;
        }
        first = false;
    }
    return acc;
}

static const uint64_t kPoison = 0xffffffffffffffffULL;


// The instrumented build (cudasim_instrument.h) learns which lanes each warp operation ordered.
#if defined(CUDASIM_INSTRUMENT)
static void instr_warp_done(Fiber* base, unsigned need);
#else
static inline void instr_warp_done(Fiber*, unsigned) {}
#endif

// Complete the pending operation of warp `w` once every needed lane has arrived: compute each
// lane's result and make them all runnable (they resume in shuffled order).
static void warp_try_complete(Warp& w, Fiber* base) {
    const unsigned need = warp_needed(w);
    if (w.arrived == 0 || w.arrived != need) return;
    const int op = w.op;
    w.arrived = 0;
    instr_warp_done(base, need);
    unsigned votes = 0;
    for (int l = 0; l < 32; ++l)
        if ((need >> l & 1u) && base[l].in) votes |= 1u << l;
    uint64_t reduced = op >= OP_REDUCE_ADD ? reduce_value(op, need) : 0;
    for (int l = 0; l < 32; ++l) {
        if (!(need >> l & 1u)) continue;
        Fiber* f = &base[l];
        switch (op) {
            case OP_SYNCWARP: f->out = 0; break;
            case OP_BALLOT: f->out = votes; break;
            case OP_ALL: f->out = votes == need; break;
            case OP_ANY: f->out = votes != 0; break;
            case OP_MATCH_ANY: {
                unsigned m = 0;
                for (int k = 0; k < 32; ++k)
                    if ((need >> k & 1u) && base[k].in == f->in) m |= 1u << k;
                f->out = m;
                break;
            }
            case OP_SHFL: case OP_SHFL_UP: case OP_SHFL_DOWN: case OP_SHFL_XOR:
                // reading a lane outside the mask, exited or absent is undefined: poison
                f->out = (f->src >= 0 && f->src < 32 && (need >> f->src & 1u)) ? base[f->src].in
                                                                               : kPoison;
                break;
            default: f->out = reduced; break;
        }
        make_ready(f);
    }
}

// Every lane named in `mask` deposits `in` (and the lane it wants to read, for shuffles); the last
// to arrive computes all results.
static uint64_t warp_op(int op, unsigned mask, uint64_t in, int src, const char* file, int line) {
    Fiber* self = g.cur;
    Warp& w = g.warps[self->warp];
    char who[96];
    if (!(mask >> self->lane & 1u)) {
        describe_thread(who, sizeof who, self);
        fail("%s (lane %d) calls %s with mask 0x%08x, which does not name the calling lane (%s:%d)",
             who, self->lane, kOpNames[op], mask, file, line);
    }
    if (w.arrived == 0) {
        w.op = op;
        w.mask = mask;
        w.file = file;
        w.line = line;
    } else if (w.op != op || w.mask != mask) {
        describe_thread(who, sizeof who, self);
        fail("%s (lane %d) calls %s(mask 0x%08x) at %s:%d while lanes 0x%08x of its warp wait at "
             "%s(mask 0x%08x) %s:%d", who, self->lane, kOpNames[op], mask, file, line, w.arrived,
             kOpNames[w.op], w.mask, w.file, w.line);
    }
    Fiber* base = self - self->lane;
    self->state = AT_WARP;
    self->file = file;
    self->line = line;
    self->op = op;
    self->mask = mask;
    self->in = in;
    self->src = src;
    w.arrived |= 1u << self->lane;
    warp_try_complete(w, base);
    yield_from(self);
    return self->out;
}

template <class T>
static inline uint64_t to_bits(const T& v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    static_assert(std::is_trivially_copyable<T>::value, "warp shuffles need trivially copyable types");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
static inline T from_bits(uint64_t b) {
    T v;
    memcpy((void*)&v, &b, sizeof(T));
    return v;
}

template <class T>
struct shfl_type_ok {
    static constexpr bool value =
        (std::is_arithmetic<T>::value && !std::is_same<T, long double>::value) ||
        std::is_same<T, __half>::value || std::is_same<T, __half2>::value ||
        std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __nv_bfloat162>::value;
};

static inline bool valid_width(int width) {
    return width >= 1 && width <= 32 && (width & (width - 1)) == 0;
}

static inline void check_width(int width, const char* what, const char* file, int line) {
    if (!valid_width(width)) {
        char who[96];
        describe_thread(who, sizeof who, g.cur);
        fail("%s calls %s with width %d (must be a power of two from 1 to 32) at %s:%d", who, what,
             width, file, line);
    }
}

// __activemask(): the lanes that reach the same call together. Lanes run independently here, so a
// lane asking waits until no lane of its warp can run any further (every one waits somewhere or
// has exited); the lanes then waiting at the same __activemask() call are the converged set (all
// 32 in converged code, 0x000000ff inside `if (lane < 8)`), as on the GPU.
static void activemask_settle(const Fiber* self) {
    Fiber* base = g.fibers + self->warp * 32;
    const Warp& w = g.warps[self->warp];
    const unsigned live = w.exists & ~w.exited;
    unsigned asking = 0;
    for (int l = 0; l < 32; ++l) {
        if (!(live >> l & 1u)) continue;
        if (base[l].state == RUNNABLE) return;
        if (base[l].state == AT_ACTIVEMASK) asking |= 1u << l;
    }
    while (asking) {
        const Fiber* first = &base[__builtin_ctz(asking)];
        unsigned group = 0;
        for (int l = 0; l < 32; ++l)
            if ((asking >> l & 1u) && base[l].line == first->line && base[l].file == first->file)
                group |= 1u << l;
        for (int l = 0; l < 32; ++l)
            if (group >> l & 1u) {
                base[l].out = group;
                make_ready(&base[l]);
            }
        asking &= ~group;
    }
}

static unsigned activemask_impl(const char* file, int line) {
    Fiber* self = g.cur;
    self->state = AT_ACTIVEMASK;
    self->file = file;
    self->line = line;
    self->op = 0;
    yield_from(self);
    return (unsigned)self->out;
}

// ---- launch ----------------------------------------------------------------------------------
static struct sigaction g_old_segv, g_old_bus, g_old_fpe, g_old_ill;
static stack_t g_old_altstack;
static unsigned char g_altstack[64 * 1024];

static void fault_handler(int sig, siginfo_t* info, void*) {
    g.fault_sig = sig;
    g.fault_addr = info->si_addr;
    siglongjmp(g.fault_jmp, 1);
}

static void install_fault_handlers() {
    stack_t ss;
    ss.ss_sp = g_altstack;
    ss.ss_size = sizeof g_altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &g_old_altstack);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGFPE, &sa, &g_old_fpe);
    sigaction(SIGILL, &sa, &g_old_ill);
}

static void restore_fault_handlers() {
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    sigaction(SIGFPE, &g_old_fpe, nullptr);
    sigaction(SIGILL, &g_old_ill, nullptr);
    sigaltstack(&g_old_altstack, nullptr);
}

static bool ensure_stacks(int nthreads, size_t stack_bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    stack_bytes = (stack_bytes + page - 1) / page * page;
    if (g.stacks && g.stacks_threads >= nthreads && g.stack_bytes == stack_bytes) return true;
    if (g.stacks) munmap(g.stacks, g.stacks_len);
    g.stacks = nullptr;
    size_t stride = stack_bytes + page;  // one guard page below each stack
    size_t len = stride * (size_t)nthreads;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return false;
    g.stacks = (unsigned char*)p;
    g.stacks_len = len;
    g.stack_bytes = stack_bytes;
    g.stack_stride = stride;
    g.stacks_threads = nthreads;
    for (int i = 0; i < nthreads; ++i) mprotect(g.stacks + stride * i, page, PROT_NONE);
    free(g.fibers);
    free(g.ready);
    g.fibers = (Fiber*)calloc((size_t)nthreads, sizeof(Fiber));
    g.ready = (Fiber**)calloc((size_t)nthreads, sizeof(Fiber*));
    return g.fibers && g.ready;
}

static void init_block() {
    size_t static_len = (size_t)(__stop_cudasim_shared - __start_cudasim_shared);
    if (__start_cudasim_shared && static_len) memset(__start_cudasim_shared, 0xff, static_len);
    if (g.dyn_shared_len) memset(g.dyn_shared, 0xff, g.dyn_shared_len);
    for (int i = 0; i < g.npoison; ++i) memset((void*)(uintptr_t)g.poison_addr[i], 0xff, g.poison_size[i]);
    int n = g.nthreads;
    g.live = n;
    g.exited = 0;
    g.arrivals = 0;
    g.nready = 0;
    for (int w = 0; w < 32; ++w) {
        g.warps[w].arrived = 0;
        g.warps[w].exited = 0;
        int first = w * 32;
        int count = std::min(32, std::max(0, n - first));
        g.warps[w].exists = count == 32 ? 0xffffffffu : ((1u << count) - 1u);
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; ++i) {
        Fiber* f = &g.fibers[i];
        f->linear = i;
        f->tid.x = (unsigned)i % g.block.x;
        f->tid.y = (unsigned)i / g.block.x % g.block.y;
        f->tid.z = (unsigned)i / (g.block.x * g.block.y);
        f->warp = i / 32;
        f->lane = i % 32;
        f->line = 0;
        f->op = 0;
        f->in = 0;
        f->poll_addr = nullptr;
        fiber_prepare(f, g.stacks + g.stack_stride * i + page, g.stack_bytes);
        make_ready(f);
    }
}

}  // namespace cudasim
// Blocks run one after another and, when they wait for each other, side by side (run_grid).
#include "cudasim_grid.h"
namespace cudasim {

static int launch_grid(Thunk thunk, void* fn, const char* kernel, const LaunchConfig* cfg,
                       const unsigned char* args) {
    g.failed = false;
    g.err[0] = 0;
    g.thunk = thunk;
    g.fn = fn;
    g.args = args;
    g.kernel = kernel;
    g.grid = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    g.block = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
    g.nthreads = (int)(g.block.x * g.block.y * g.block.z);
    g.rng = cfg->seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (g.rng == 0) g.rng = 1;
    if (!ensure_stacks(g.nthreads, cfg->stack_bytes)) {
        snprintf(g.err, sizeof g.err, "cannot map %d fiber stacks of %llu bytes", g.nthreads,
                 (unsigned long long)cfg->stack_bytes);
        return -1;
    }
    if (cfg->shared_bytes > g.dyn_shared_len || !g.dyn_shared) {
        free(g.dyn_shared);
        g.dyn_shared = (unsigned char*)aligned_alloc(256, (cfg->shared_bytes + 256) / 256 * 256);
    }
    g.dyn_shared_len = cfg->shared_bytes;
    fflush(stdout);
    install_fault_handlers();
    watchdog_arm();
    if (sigsetjmp(g.fault_jmp, 1)) {
        restore_fault_handlers();
        if (watchdog_report()) return -1;
        watchdog_disarm();
        char who[96] = "a thread";
        const Fiber* f = g.cur;
        if (f) describe_thread(who, sizeof who, f);
        uintptr_t addr = (uintptr_t)g.fault_addr;
        bool stack_guard = false;
        if (g.stacks && addr >= (uintptr_t)g.stacks && addr < (uintptr_t)g.stacks + g.stacks_len) {
            size_t off = (addr - (uintptr_t)g.stacks) % g.stack_stride;
            stack_guard = off < (size_t)sysconf(_SC_PAGESIZE);
        }
        const char* what = g.fault_sig == SIGFPE ? "arithmetic exception (integer division by zero?)"
                           : g.fault_sig == SIGILL ? "illegal instruction"
                           : stack_guard ? "stack overflow (raise BATCHNORM_LIB_CUDASIM_STACK)"
                                         : "illegal memory access";
        snprintf(g.err, sizeof g.err, "%s at address 0x%llx by %s", what, (unsigned long long)addr, who);
        g.failed = true;
        release_extra_slots();
        fflush(stdout);
        return -1;
    }
    run_grid(cfg->stack_bytes);
    watchdog_disarm();
    restore_fault_handlers();
    fflush(stdout);
    return g.failed ? -1 : 0;
}

// ---- argument unpacking ----------------------------------------------------------------------
// Arguments arrive packed as CUDA lays out kernel parameters: each at the next multiple of its
// alignment. The Python side packs them from the signature string below.
template <class T>
constexpr size_t align_up(size_t off) { return (off + alignof(T) - 1) / alignof(T) * alignof(T); }

template <class... A>
struct Layout;
template <>
struct Layout<> {
    static constexpr size_t offset(size_t off, size_t) { return off; }
};
template <class H, class... R>
struct Layout<H, R...> {
    // offset of parameter i, starting at byte `off`
    static constexpr size_t offset(size_t off, size_t i) {
        return i == 0 ? align_up<H>(off) : Layout<R...>::offset(align_up<H>(off) + sizeof(H), i - 1);
    }
};

template <class T>
static inline T load_arg(const unsigned char* p) {
    T v;
    memcpy((void*)&v, p, sizeof(T));
    return v;
}

template <class... A, size_t... I>
static inline void call_with(void (*f)(A...), const unsigned char* args, std::index_sequence<I...>) {
    f(load_arg<typename std::decay<A>::type>(args + Layout<typename std::decay<A>::type...>::offset(0, I))...);
}

template <class... A>
static void thunk(void* fn, const unsigned char* args) {
    call_with((void (*)(A...))fn, args, std::index_sequence_for<A...>{});
}

template <class T>
static void describe_param(char*& out) {
    typedef typename std::decay<T>::type D;
    static_assert(std::is_trivially_copyable<D>::value, "kernel parameters must be trivially copyable");
    char kind = std::is_pointer<D>::value ? 'p'
              : std::is_floating_point<D>::value ? 'f'
              : std::is_integral<D>::value ? (std::is_signed<D>::value ? 'i' : 'u')
              : std::is_same<D, __half>::value || std::is_same<D, __nv_bfloat16>::value ? 'h'
              : 's';
    out += sprintf(out, "%c%zu:%zu ", kind, sizeof(D), alignof(D));
}

template <class... A>
static const char* signature(void (*)(A...)) {
    static char buf[64 * sizeof...(A) + 8];
    char* out = buf;
    buf[0] = 0;
    int dummy[] = {0, (describe_param<A>(out), 0)...};
    (void)dummy;
    return buf;
}

template <class... A>
static int launch(void (*f)(A...), const char* name, const LaunchConfig* cfg, const unsigned char* args) {
    return launch_grid(&thunk<A...>, (void*)f, name, cfg, args);
}

}  // namespace cudasim

CUDASIM_EXPORT const char* cudasim_error() { return cudasim::g.err; }
CUDASIM_EXPORT void cudasim_set_poison(const uint64_t* addr, const uint64_t* size, int n) {
    cudasim::g.poison_addr = addr;
    cudasim::g.poison_size = size;
    cudasim::g.npoison = n;
}
CUDASIM_EXPORT size_t cudasim_static_shared_bytes() {
    return (size_t)(cudasim::__stop_cudasim_shared - cudasim::__start_cudasim_shared);
}

// ---- the device-side API ---------------------------------------------------------------------
#define threadIdx (cudasim::g.cur->tid)
#define blockIdx (cudasim::g.block_idx)
#define blockDim (cudasim::g.block)
#define gridDim (cudasim::g.grid)
static constexpr int warpSize = 32;

#define __syncthreads() cudasim::syncthreads_impl(0, 0, __FILE__, __LINE__)
#define __syncthreads_count(p) cudasim::syncthreads_impl(1, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) cudasim::syncthreads_impl(2, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) cudasim::syncthreads_impl(3, (p), __FILE__, __LINE__)

static inline unsigned __cudasim_lane() { return (unsigned)cudasim::g.cur->lane; }

static inline void __cudasim_syncwarp(unsigned mask, const char* file, int line) {
    cudasim::warp_op(cudasim::OP_SYNCWARP, mask, 0, 0, file, line);
}
#define __syncwarp(...) __cudasim_syncwarp(__cudasim_mask_or_full(__VA_ARGS__), __FILE__, __LINE__)
static inline unsigned __cudasim_mask_or_full() { return 0xffffffffu; }
static inline unsigned __cudasim_mask_or_full(unsigned m) { return m; }

template <class T>
static inline T __cudasim_shfl(int op, unsigned mask, T var, int arg, int width, const char* file,
                               int line) {
    static_assert(cudasim::shfl_type_ok<T>::value,
                  "__shfl_sync/__shfl_up_sync/__shfl_down_sync/__shfl_xor_sync: CUDA has overloads "
                  "only for int, unsigned, long, long long (and unsigned forms), float, double, "
                  "__half, __half2, __nv_bfloat16, __nv_bfloat162; nvcc rejects this type (a "
                  "float2, a struct, a pointer): shuffle its members one by one");
    cudasim::check_width(width, cudasim::kOpNames[op], file, line);
    // PTX's shfl.sync: only the low 5 bits of the lane/offset operand count (an offset of 33 acts
    // as 1); CUDA passes c = ((32 - width) << 8) | 0x1f (0 in the low bits for up).
    const int lane = (int)__cudasim_lane();
    const int b = arg & 31;
    const int segmask = (32 - width) & 31;
    const int clamp = op == cudasim::OP_SHFL_UP ? 0 : 31;
    const int max_lane = (lane & segmask) | (clamp & ~segmask), min_lane = lane & segmask;
    int src;
    bool in_range;
    switch (op) {
        case cudasim::OP_SHFL: src = min_lane | (b & ~segmask); in_range = src <= max_lane; break;
        case cudasim::OP_SHFL_UP: src = lane - b; in_range = src >= max_lane; break;
        case cudasim::OP_SHFL_DOWN: src = lane + b; in_range = src <= max_lane; break;
        default: src = lane ^ b; in_range = src <= max_lane; break;
    }
    if (!in_range) src = lane;
    return cudasim::from_bits<T>(cudasim::warp_op(op, mask, cudasim::to_bits(var), src, file, line));
}

#define __shfl_sync(mask, var, ...) \
    __cudasim_shfl_w(cudasim::OP_SHFL, mask, var, __VA_ARGS__, __FILE__, __LINE__)
#define __shfl_up_sync(mask, var, ...) \
    __cudasim_shfl_w(cudasim::OP_SHFL_UP, mask, var, __VA_ARGS__, __FILE__, __LINE__)
#define __shfl_down_sync(mask, var, ...) \
    __cudasim_shfl_w(cudasim::OP_SHFL_DOWN, mask, var, __VA_ARGS__, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, var, ...) \
    __cudasim_shfl_w(cudasim::OP_SHFL_XOR, mask, var, __VA_ARGS__, __FILE__, __LINE__)

// (op, mask, var, arg, [width,] file, line)
template <class T>
static inline T __cudasim_shfl_w(int op, unsigned mask, T var, int arg, const char* file, int line) {
    return __cudasim_shfl(op, mask, var, arg, 32, file, line);
}
template <class T>
static inline T __cudasim_shfl_w(int op, unsigned mask, T var, int arg, int width, const char* file,
                                 int line) {
    return __cudasim_shfl(op, mask, var, arg, width, file, line);
}

#define __ballot_sync(mask, pred) \
    ((unsigned)cudasim::warp_op(cudasim::OP_BALLOT, (mask), (pred) != 0, 0, __FILE__, __LINE__))
#define __all_sync(mask, pred) \
    ((int)cudasim::warp_op(cudasim::OP_ALL, (mask), (pred) != 0, 0, __FILE__, __LINE__))
#define __any_sync(mask, pred) \
    ((int)cudasim::warp_op(cudasim::OP_ANY, (mask), (pred) != 0, 0, __FILE__, __LINE__))
#define __match_any_sync(mask, value) \
    ((unsigned)cudasim::warp_op(cudasim::OP_MATCH_ANY, (mask), cudasim::to_bits(value), 0, __FILE__, __LINE__))
#define __reduce_add_sync(mask, v) \
    ((unsigned)cudasim::warp_op(cudasim::OP_REDUCE_ADD, (mask), (uint32_t)(v), 0, __FILE__, __LINE__))
#define __reduce_and_sync(mask, v) \
    ((unsigned)cudasim::warp_op(cudasim::OP_REDUCE_AND, (mask), (uint32_t)(v), 0, __FILE__, __LINE__))
#define __reduce_or_sync(mask, v) \
    ((unsigned)cudasim::warp_op(cudasim::OP_REDUCE_OR, (mask), (uint32_t)(v), 0, __FILE__, __LINE__))
#define __reduce_xor_sync(mask, v) \
    ((unsigned)cudasim::warp_op(cudasim::OP_REDUCE_XOR, (mask), (uint32_t)(v), 0, __FILE__, __LINE__))
static inline unsigned __cudasim_reduce_min(unsigned mask, unsigned v, const char* f, int l) {
    return (unsigned)cudasim::warp_op(cudasim::OP_REDUCE_UMIN, mask, v, 0, f, l);
}
static inline int __cudasim_reduce_min(unsigned mask, int v, const char* f, int l) {
    return (int)(uint32_t)cudasim::warp_op(cudasim::OP_REDUCE_MIN, mask, (uint32_t)v, 0, f, l);
}
static inline unsigned __cudasim_reduce_max(unsigned mask, unsigned v, const char* f, int l) {
    return (unsigned)cudasim::warp_op(cudasim::OP_REDUCE_UMAX, mask, v, 0, f, l);
}
static inline int __cudasim_reduce_max(unsigned mask, int v, const char* f, int l) {
    return (int)(uint32_t)cudasim::warp_op(cudasim::OP_REDUCE_MAX, mask, (uint32_t)v, 0, f, l);
}
#define __reduce_min_sync(mask, v) __cudasim_reduce_min((mask), (v), __FILE__, __LINE__)
#define __reduce_max_sync(mask, v) __cudasim_reduce_max((mask), (v), __FILE__, __LINE__)

#define __activemask() cudasim::activemask_impl(__FILE__, __LINE__)
static inline unsigned __lanemask_lt() { return (1u << __cudasim_lane()) - 1u; }

static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __trap() {
    cudasim::fail("__trap() called by thread (%u,%u,%u) of block (%u,%u,%u)", threadIdx.x,
                  threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z);
}
#define __nanosleep(ns) ((void)(ns))

#if defined(__x86_64__)
static inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
#else
static inline long long clock64() { return 0; }
#endif
#define clock() ((int)clock64())  // <time.h> declares clock() for the host

// -- cached / streaming loads and stores: plain memory accesses on the host
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldca(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline T __ldlu(const T* p) { return *p; }
template <class T> static inline T __ldcv(const T* p) { return *p; }
template <class T> static inline void __stwb(T* p, T v) { *p = v; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
template <class T> static inline void __stwt(T* p, T v) { *p = v; }

// -- atomics: one OS thread runs every thread of a launch and switches only at barriers, so a
// plain read-modify-write is atomic; each returns the old value as CUDA's do.
#define CUDASIM_ATOMIC(NAME, EXPR)                                   \
    template <class T, class U>                                      \
    static inline T NAME(T* addr, U val) {                           \
        T old = *addr;                                               \
        *addr = (T)(EXPR);                                           \
        return old;                                                  \
    }
CUDASIM_ATOMIC(atomicAdd, old + (T)val)
CUDASIM_ATOMIC(atomicSub, old - (T)val)
CUDASIM_ATOMIC(atomicExch, (T)val)
CUDASIM_ATOMIC(atomicMin, ((T)val < old ? (T)val : old))
CUDASIM_ATOMIC(atomicMax, ((T)val > old ? (T)val : old))
CUDASIM_ATOMIC(atomicAnd, old & (T)val)
CUDASIM_ATOMIC(atomicOr, old | (T)val)
CUDASIM_ATOMIC(atomicXor, old ^ (T)val)
#undef CUDASIM_ATOMIC
static inline unsigned atomicInc(unsigned* addr, unsigned val) {
    unsigned old = *addr;
    *addr = old >= val ? 0u : old + 1u;
    return old;
}
static inline unsigned atomicDec(unsigned* addr, unsigned val) {
    unsigned old = *addr;
    *addr = (old == 0u || old > val) ? val : old - 1u;
    return old;
}
template <class T, class U, class V>
static inline T atomicCAS(T* addr, U compare, V val) {
    T old = *addr;
    if (old == (T)compare) *addr = (T)val;
    return old;
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd

// -- math: CUDA's device-only intrinsics and functions (IEEE-exact where CUDA's are)
#include "cudasim_math.h"
// -- what nvcc refuses: atomics CUDA has no overload for
#include "cudasim_checks.h"
// -- grid-wide sync, cooperative groups, spin points
#include "cudasim_coop.h"

// CUDA declares min/max for every pair of arithmetic types; std::min needs equal types.
#define CUDASIM_MINMAX(A, B, R)                                                           \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; }                   \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
CUDASIM_MINMAX(int, int, int)
CUDASIM_MINMAX(unsigned, unsigned, unsigned)
CUDASIM_MINMAX(int, unsigned, unsigned)
CUDASIM_MINMAX(unsigned, int, unsigned)
CUDASIM_MINMAX(long, long, long)
CUDASIM_MINMAX(unsigned long, unsigned long, unsigned long)
CUDASIM_MINMAX(long long, long long, long long)
CUDASIM_MINMAX(unsigned long long, unsigned long long, unsigned long long)
CUDASIM_MINMAX(long long, int, long long)
CUDASIM_MINMAX(int, long long, long long)
CUDASIM_MINMAX(long, int, long)
CUDASIM_MINMAX(int, long, long)
CUDASIM_MINMAX(unsigned long, unsigned, unsigned long)
CUDASIM_MINMAX(unsigned, unsigned long, unsigned long)
CUDASIM_MINMAX(unsigned long long, unsigned, unsigned long long)
CUDASIM_MINMAX(unsigned, unsigned long long, unsigned long long)
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin(a, b); }
static inline double max(float a, double b) { return fmax(a, b); }
static inline double min(double a, float b) { return fmin(a, b); }
static inline double max(double a, float b) { return fmax(a, b); }
#undef CUDASIM_MINMAX

// Dynamic shared memory: the simulator rewrites `extern __shared__ T name[];` into a pointer to
// this block's buffer (see cudasim/compiler.py).
static inline void* __cudasim_dynamic_shared() { return cudasim::g.dyn_shared; }

#endif  // CUDASIM_RUNTIME_H
