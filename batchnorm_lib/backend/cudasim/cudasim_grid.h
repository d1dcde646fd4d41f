// cudasim_grid.h: blocks that wait for each other. Included by cudasim_runtime.h after the block
// scheduler and before launch_grid; the device-side API is in cudasim_coop.h.
//
// Blocks run one after another, as before, until a block cannot go on by itself: all its threads
// wait at a grid-wide barrier (cudasim::grid_sync, cooperative_groups' this_grid().sync()), or
// they spin (keep reaching atomics, fences or __nanosleep without anything changing). The block is
// then set aside with its threads' stacks and its shared memory (the contents of the static
// __shared__ variables are swapped, since every block uses the same addresses) and another block
// is started, up to the number the simulated device keeps resident at once (132 SMs times the
// kernel's occupancy, set by the launcher), or a block set aside is resumed. A wait that nothing
// can end is reported as a deadlock naming the kernel and the waiting blocks; a thread that runs
// for BATCHNORM_LIB_CUDASIM_WATCHDOG seconds without reaching any of these points (a spin on a
// plain or volatile load) is stopped and reported by a watchdog thread.

#ifndef CUDASIM_GRID_H
#define CUDASIM_GRID_H

#include <pthread.h>
#include <vector>

namespace cudasim {

enum { AT_GRID = 5 };
enum { SLOT_READY = 0, SLOT_STALLED = 1, SLOT_AT_GRID = 2 };

struct GridConfig {
    int max_resident;    // blocks the device keeps resident for this launch
    int cooperative;     // launched as cuLaunchCooperativeKernel
    double watchdog;     // seconds without a scheduling point before a launch is stopped; 0: off
};
static GridConfig g_grid = {1 << 30, 0, 0.0};

// the per-block part of `g`, kept while a block is set aside
struct Slot {
    bool used;
    int status;
    Fiber* fibers;
    Fiber** ready;
    int nready, live, exited, arrivals, barrier_count, barrier_line, first_exited;
    const char* barrier_file;
    Warp warps[32];
    uint3 block_idx;
    unsigned char* stacks;
    size_t stacks_len, stack_bytes, stack_stride;
    int stacks_threads;
    unsigned char* dyn_shared;
    unsigned char* shared_copy;
    long spins;
    int grid_waiting;
    const char* spin_file;
    int spin_line;
};

static const long kSpinsPerThread = 4096;  // spins without progress, per live thread, = stalled
static long g_block_spins;
static int g_grid_waiting;
static bool g_stalled;
static const char* g_spin_file;
static int g_spin_line;
static uint64_t g_progress;
static volatile uint64_t g_epoch;  // scheduling points so far (read by the watchdog)
static volatile int g_in_launch;

static inline void note_progress() {
    ++g_progress;
    ++g_epoch;
    g_block_spins = 0;
}

// A thread resumes after a barrier or warp operation, or exits.
static void note_wait_over() { note_progress(); }

// A thread reaches an atomic, a fence or __nanosleep. Now and then let the block's other threads
// run (a thread may wait for another of its block); after too many without progress the block is
// stalled and set aside.
static void spin_point(const char* file, int line) {
    Fiber* self = g.cur;
    if (!self) return;
    ++g_epoch;
    g_spin_file = file;
    g_spin_line = line;
    if (++g_block_spins > kSpinsPerThread * (long)std::max(1, g.live)) {
        g_stalled = true;
        make_ready(self);
        switch_to(self, nullptr);
        return;
    }
    if ((g_block_spins & 15) == 0) {
        make_ready(self);
        Fiber* next = pick_ready();
        if (next == self) g.cur = self;
        else switch_to(self, next);
    }
}

// An atomic whose memory changed is progress, and so is a poll (an atomic that changed nothing)
// that sees another value than the same thread's last poll of that address: the wait it was in
// is over, even if the threads that ended it have finished. Any other poll is a spin.
template <class F, class P>
static inline auto watched_atomic(F op, P* p, const char* file, int line) -> decltype(op(p)) {
    unsigned char before[16];
    const size_t n = sizeof(*p) < sizeof before ? sizeof(*p) : sizeof before;
    memcpy(before, (const void*)p, n);
    auto result = op(p);
    if (memcmp(before, (const void*)p, n) != 0) {
        note_progress();
        return result;
    }
    Fiber* self = g.cur;
    if (self) {
        const bool seen_change = self->poll_addr == (const void*)p &&
                                 memcmp(self->poll_seen, before, n) != 0;
        self->poll_addr = (const void*)p;
        memcpy(self->poll_seen, before, n);
        if (seen_change) {
            note_progress();
            return result;
        }
    }
    spin_point(file, line);
    return result;
}

static void grid_sync(const char* file, int line) {
    ++g_epoch;
    Fiber* self = g.cur;
    char who[96];
    describe_thread(who, sizeof who, self);
    if (!g_grid.cooperative)
        fail("%s calls a grid-wide sync at %s:%d in kernel %s, which was not launched as a "
             "cooperative kernel (pass cooperative=True): on the GPU this is undefined and usually "
             "hangs", who, file, line, g.kernel);
    if (g.exited > 0) {
        char gone[96];
        describe_thread(gone, sizeof gone, &g.fibers[g.first_exited]);
        fail("%s reached a grid-wide sync at %s:%d after %s had exited: the grid barrier can never "
             "complete", who, file, line, gone);
    }
    self->state = AT_GRID;
    self->file = file;
    self->line = line;
    self->op = 0;
    ++g_grid_waiting;
    yield_from(self);
}

static std::vector<Slot> g_slots;
static int g_loaded = -1;

static size_t shared_image_bytes() {
    size_t n = (size_t)(__stop_cudasim_shared - __start_cudasim_shared);
    for (int i = 0; i < g.npoison; ++i) n += g.poison_size[i];
    return n;
}

static void copy_shared(unsigned char* image, bool save) {
    size_t off = 0, len = (size_t)(__stop_cudasim_shared - __start_cudasim_shared);
    if (__start_cudasim_shared && len) {
        if (save) memcpy(image, __start_cudasim_shared, len);
        else memcpy(__start_cudasim_shared, image, len);
        off = len;
    }
    for (int i = 0; i < g.npoison; ++i) {
        void* a = (void*)(uintptr_t)g.poison_addr[i];
        if (save) memcpy(image + off, a, g.poison_size[i]);
        else memcpy(a, image + off, g.poison_size[i]);
        off += g.poison_size[i];
    }
}

// Move the per-block state between `g` and a slot, one way or the other.
template <class T>
static inline void move(T& slot_field, T& live_field, bool save) {
    if (save) slot_field = live_field;
    else live_field = slot_field;
}
template <class T, size_t N>
static inline void move(T (&slot_field)[N], T (&live_field)[N], bool save) {
    if (save) memcpy(slot_field, live_field, sizeof slot_field);
    else memcpy(live_field, slot_field, sizeof slot_field);
}

static void transfer(Slot& s, bool save) {
#define CUDASIM_SLOT_FIELD(F) move(s.F, g.F, save);
    CUDASIM_SLOT_FIELD(fibers) CUDASIM_SLOT_FIELD(ready) CUDASIM_SLOT_FIELD(nready)
    CUDASIM_SLOT_FIELD(live) CUDASIM_SLOT_FIELD(exited) CUDASIM_SLOT_FIELD(arrivals)
    CUDASIM_SLOT_FIELD(barrier_count) CUDASIM_SLOT_FIELD(barrier_line)
    CUDASIM_SLOT_FIELD(first_exited) CUDASIM_SLOT_FIELD(barrier_file) CUDASIM_SLOT_FIELD(warps)
    CUDASIM_SLOT_FIELD(block_idx) CUDASIM_SLOT_FIELD(stacks) CUDASIM_SLOT_FIELD(stacks_len)
    CUDASIM_SLOT_FIELD(stack_bytes) CUDASIM_SLOT_FIELD(stack_stride)
    CUDASIM_SLOT_FIELD(stacks_threads) CUDASIM_SLOT_FIELD(dyn_shared)
#undef CUDASIM_SLOT_FIELD
    move(s.spins, g_block_spins, save);
    move(s.grid_waiting, g_grid_waiting, save);
    move(s.spin_file, g_spin_file, save);
    move(s.spin_line, g_spin_line, save);
    if (!s.used) return;  // a finished or fresh block's shared memory need not survive
    if (save && !s.shared_copy) s.shared_copy = (unsigned char*)malloc(shared_image_bytes() + 1);
    if (s.shared_copy) copy_shared(s.shared_copy, save);
}

static void save_slot(Slot& s) { transfer(s, true); }
static void load_slot(Slot& s) { transfer(s, false); }

static void switch_slot(int i) {
    if (g_loaded == i) return;
    if (g_loaded >= 0) save_slot(g_slots[g_loaded]);
    load_slot(g_slots[i]);
    g_loaded = i;
}

// A slot for a new block: a free one (its stacks reused) or a new one with its own stacks.
static int free_slot(size_t stack_bytes) {
    for (size_t i = 0; i < g_slots.size(); ++i)
        if (!g_slots[i].used) return (int)i;
    if (g_loaded >= 0) save_slot(g_slots[g_loaded]);
    Slot s;
    memset((void*)&s, 0, sizeof s);
    g.stacks = nullptr;
    g.fibers = nullptr;
    g.ready = nullptr;
    g.dyn_shared = (unsigned char*)aligned_alloc(256, (g.dyn_shared_len + 256) / 256 * 256);
    if (!ensure_stacks(g.nthreads, stack_bytes) || !g.dyn_shared) {
        snprintf(g.err, sizeof g.err, "cannot map the stacks of one more resident block");
        g.failed = true;
        return -1;
    }
    g_slots.push_back(s);
    g_loaded = (int)g_slots.size() - 1;
    save_slot(g_slots[g_loaded]);
    return g_loaded;
}

// -use_fast_math implies -ftz=true: single-precision subnormal inputs and results are flushed to
// zero. The fibers take the FP control word of the launcher when a block starts, so setting the
// host's flush-to-zero and denormals-are-zero bits for the launch applies them to every thread.
static unsigned g_saved_csr;
static bool g_csr_set;

static void fast_math_enter() {
#if defined(__USE_FAST_MATH__) && defined(__x86_64__)
    unsigned csr;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    g_saved_csr = csr;
    csr |= 0x8040u;  // FTZ | DAZ
    __asm__ volatile("ldmxcsr %0" : : "m"(csr));
    g_csr_set = true;
#endif
}

static void fast_math_leave() {
    if (g_csr_set) {
        unsigned csr = g_saved_csr;
        __asm__ volatile("ldmxcsr %0" : : "m"(csr));
        g_csr_set = false;
    }
}

static void release_extra_slots() {  // slot 0 keeps the launcher's own stacks for the next launch
    fast_math_leave();  // every way out of a launch comes through here
    if (g_slots.empty()) return;
    if (g_loaded != 0) {
        if (g_loaded > 0) save_slot(g_slots[g_loaded]);
        load_slot(g_slots[0]);
    }
    for (size_t i = 1; i < g_slots.size(); ++i) {
        Slot& s = g_slots[i];
        if (s.stacks) munmap(s.stacks, s.stacks_len);
        free(s.fibers);
        free(s.ready);
        free(s.dyn_shared);
    }
    for (Slot& s : g_slots) free(s.shared_copy);
    g_slots.clear();
    g_loaded = -1;
}

static int describe_block(char* buf, size_t n, const Slot& s) {
    const uint3 b = s.block_idx;
    if (s.status == SLOT_AT_GRID) {
        const Fiber* f = s.fibers;
        for (int i = 0; i < g.nthreads; ++i)
            if (s.fibers[i].state == AT_GRID) { f = &s.fibers[i]; break; }
        return snprintf(buf, n, "\n  block (%u,%u,%u) waits at the grid-wide sync %s:%d", b.x, b.y,
                        b.z, f->file, f->line);
    }
    return snprintf(buf, n, "\n  block (%u,%u,%u) spins at %s:%d (%ld atomics, fences or sleeps "
                    "with nothing changing)", b.x, b.y, b.z, s.spin_file ? s.spin_file : "?",
                    s.spin_line, s.spins);
}

static void report_grid_deadlock(long started, long total, long finished, int resident) {
    char buf[3000];
    size_t used = 0;
    int shown = 0;
    for (const Slot& s : g_slots) {
        if (!s.used || used + 200 > sizeof buf) continue;
        if (shown++ == 8) { used += snprintf(buf + used, sizeof buf - used, "\n  ..."); break; }
        used += describe_block(buf + used, sizeof buf - used, s);
    }
    buf[used < sizeof buf ? used : sizeof buf - 1] = 0;
    snprintf(g.err, sizeof g.err,
             "deadlock in kernel %s: %d resident block(s) wait for something no running block will "
             "do:%s\n  %ld of %ld blocks not started (at most %d resident at once on the simulated "
             "device%s), %ld finished", g.kernel, resident, buf, total - started, total,
             g_grid.max_resident, g_grid.cooperative ? ", cooperative launch" : "", finished);
    g.failed = true;
}

// ---- the watchdog: a thread that never reaches a scheduling point ------------------------------
// One thread per loaded module, asleep on a condition variable between launches; during a launch
// it looks at g_epoch every 50 ms. The mutex makes "still in the launch" and "signal it" one step,
// so the signal never arrives after the launch has put the old SIGUSR2 handler back.
static pthread_t g_launcher;
static volatile int g_watchdog_fired;
static pthread_mutex_t g_watch_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_watch_cond = PTHREAD_COND_INITIALIZER;

static void watchdog_signal(int) {
    g_watchdog_fired = 1;
    g.fault_sig = SIGUSR2;
    siglongjmp(g.fault_jmp, 1);
}

// Not instrumented: the sanitizer's hooks (cudasim_instrument.h) keep one launch's state and must
// see only the launching thread's accesses, not this thread's polls of g_epoch.
__attribute__((no_sanitize_thread)) static void* watchdog_main(void*) {
    pthread_mutex_lock(&g_watch_mutex);
    for (;;) {
        while (!g_in_launch) pthread_cond_wait(&g_watch_cond, &g_watch_mutex);
        uint64_t seen = g_epoch;
        double still = 0.0;
        while (g_in_launch) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 50000000L;
            if (until.tv_nsec >= 1000000000L) { until.tv_sec += 1; until.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&g_watch_cond, &g_watch_mutex, &until);
            if (!g_in_launch || g_grid.watchdog <= 0) continue;
            const uint64_t now = g_epoch;
            if (now != seen) { seen = now; still = 0.0; continue; }
            still += 0.05;
            if (still >= g_grid.watchdog) {
                g_in_launch = 0;
                pthread_kill(g_launcher, SIGUSR2);
            }
        }
    }
    return nullptr;
}

static struct sigaction g_old_usr2;

static void watchdog_arm() {
    static bool started = false;
    if (!started) {
        pthread_t t;
        if (pthread_create(&t, nullptr, watchdog_main, nullptr) == 0) pthread_detach(t);
        started = true;
    }
    g_launcher = pthread_self();
    g_watchdog_fired = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watchdog_signal;
    sa.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, &g_old_usr2);
    pthread_mutex_lock(&g_watch_mutex);
    ++g_epoch;
    g_in_launch = 1;
    pthread_cond_signal(&g_watch_cond);
    pthread_mutex_unlock(&g_watch_mutex);
}

static void watchdog_disarm() {
    pthread_mutex_lock(&g_watch_mutex);
    g_in_launch = 0;
    pthread_cond_signal(&g_watch_cond);
    pthread_mutex_unlock(&g_watch_mutex);
    sigaction(SIGUSR2, &g_old_usr2, nullptr);
}

// After the watchdog stopped the launch (we are back in launch_grid): say who was running.
static bool watchdog_report() {
    if (!g_watchdog_fired) return false;
    watchdog_disarm();
    char who[96] = "a thread";
    if (g.cur) describe_thread(who, sizeof who, g.cur);
    snprintf(g.err, sizeof g.err,
             "deadlock in kernel %s: %s ran for %.0f s without reaching a barrier, warp operation, "
             "atomic, fence or __nanosleep (a spin on a plain or volatile load that nothing will "
             "end?); %zu block(s) resident, at most %d at once on the simulated device "
             "(BATCHNORM_LIB_CUDASIM_WATCHDOG sets the limit)", g.kernel, who, g_grid.watchdog,
             g_slots.empty() ? (size_t)1 : g_slots.size(), g_grid.max_resident);
    release_extra_slots();
    g.failed = true;
    return true;
}

static void init_block();

// Run every block of the grid (see the top of this file).
static void run_grid(size_t stack_bytes) {
    release_extra_slots();  // a launch stopped by a fault may have left some
    fast_math_enter();
    const long total = (long)g.grid.x * g.grid.y * g.grid.z;
    long next = 0, finished = 0;
    int resident = 0;
    uint64_t round_progress = ~0ull;
    g_progress = 0;
    g_slots.push_back(Slot());
    memset((void*)&g_slots[0], 0, sizeof(Slot));
    g_loaded = 0;
    save_slot(g_slots[0]);
    size_t turn = 0;
    while (!g.failed) {
        int s = -1;
        for (size_t k = 0; k < g_slots.size() && s < 0; ++k) {
            const size_t i = (turn + k) % g_slots.size();
            if (g_slots[i].used && g_slots[i].status == SLOT_READY) s = (int)i;
        }
        if (s < 0 && next < total && resident < std::max(1, g_grid.max_resident)) {
            s = free_slot(stack_bytes);
            if (s < 0) break;
            switch_slot(s);
            g_slots[s].used = true;
            g_slots[s].status = SLOT_READY;
            const long b = next++;
            g.block_idx = make_uint3((unsigned)(b % g.grid.x), (unsigned)(b / g.grid.x % g.grid.y),
                                     (unsigned)(b / ((long)g.grid.x * g.grid.y)));
            g_block_spins = 0;
            g_grid_waiting = 0;
            g_spin_file = nullptr;
            init_block();
            ++resident;
            note_progress();
        }
        if (s < 0) {
            if (resident == 0) break;  // every block finished
            bool all_at_grid = true, any_stalled = false;
            for (const Slot& x : g_slots)
                if (x.used) {
                    all_at_grid &= x.status == SLOT_AT_GRID;
                    any_stalled |= x.status == SLOT_STALLED;
                }
            if (all_at_grid && next == total && finished == 0) {  // the grid barrier completes
                for (size_t i = 0; i < g_slots.size(); ++i) {
                    if (!g_slots[i].used) continue;
                    switch_slot((int)i);
                    for (int t = 0; t < g.nthreads; ++t)
                        if (g.fibers[t].state == AT_GRID) make_ready(&g.fibers[t]);
                    g_grid_waiting = 0;
                    g_slots[i].status = SLOT_READY;
                }
                note_progress();
                continue;
            }
            if (any_stalled && g_progress != round_progress) {  // something changed: try again
                round_progress = g_progress;
                for (Slot& x : g_slots)
                    if (x.used && x.status == SLOT_STALLED) { x.status = SLOT_READY; x.spins = 0; }
                continue;
            }
            if (g_loaded >= 0) save_slot(g_slots[g_loaded]);
            report_grid_deadlock(next, total, finished, resident);
            break;
        }
        turn = (size_t)s + 1;
        switch_slot(s);
        g_stalled = false;
        Fiber* first = pick_ready();
        if (first) switch_to(nullptr, first);
        if (g.failed) break;
        if (g.live == 0) {
            g_slots[s].used = false;
            --resident;
            ++finished;
            note_progress();
        } else if (g_stalled) {
            g_slots[s].status = SLOT_STALLED;
        } else if (g_grid_waiting == g.live) {
            g_slots[s].status = SLOT_AT_GRID;
        } else {  // no thread of the block can proceed and nothing outside it can help
            char state[3000];
            state[0] = 0;
            describe_waiters(state, sizeof state);
            snprintf(g.err, sizeof g.err, "deadlock in block (%u,%u,%u): no thread can proceed:%s%s",
                     g.block_idx.x, g.block_idx.y, g.block_idx.z, state,
                     g_grid_waiting ? "\n  (and others wait at a grid-wide sync)" : "");
            g.failed = true;
        }
    }
    release_extra_slots();
}

}  // namespace cudasim

// Set by the launcher before each launch: resident blocks, cooperative or not, watchdog seconds.
CUDASIM_EXPORT void cudasim_set_grid(int max_resident, int cooperative, double watchdog) {
    cudasim::g_grid.max_resident = max_resident;
    cudasim::g_grid.cooperative = cooperative;
    cudasim::g_grid.watchdog = watchdog;
}

#endif  // CUDASIM_GRID_H
