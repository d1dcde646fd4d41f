// cudasim_instrument.h: memory-access checking and traffic counting for the CUDA simulator.
//
// Force-included after cudasim_runtime.h. Every build gets the misaligned-access check: the host
// compiler's alignment check (-fsanitize=alignment, type-aware, a test and a branch per typed
// access) calls the handler below, which fails the launch as the GPU's "misaligned address" fault
// does. With CUDASIM_INSTRUMENT (a separate build, see compiler.py) the kernel is also compiled
// with -fsanitize=thread, so every load and store calls __tsan_{read,write}{1,2,4,8,16}(addr) (or
// the _range forms for block copies) here first; this header defines them, no sanitizer runtime
// library is involved. Those hooks classify the address
// (a device allocation from the table the launcher passes, the block's shared memory, or anything
// else, which is ignored), and then
//   - the sanitizer checks races (happens-before: same thread; __syncthreads epochs; warp
//     operations that both lanes took part in; across blocks, a __threadfence() followed by an
//     atomic releases, a later atomic on the same address acquires), uninitialized loads and
//     out-of-bounds accesses, and
//   - the profiler counts bytes, warp requests and 32-byte sectors of global memory. A warp
//     request is what one instruction (the hook's return address) does for the lanes of a warp
//     that execute it at the same point: the same iteration of every enclosing loop (each `for`
//     of the kernel source is tracked per thread, see LoopGuard below), and the same occurrence
//     within that iteration. Lanes that skip an iteration's access (a branch) or run fewer
//     iterations simply are not in that request, as on the GPU, where threads run as fibers
//     one after another here.
// Findings are kept in a small table the launcher reads when the launch ends.
#ifndef CUDASIM_INSTRUMENT_H
#define CUDASIM_INSTRUMENT_H

#define CUDASIM_NOINSTR __attribute__((no_sanitize_thread, no_sanitize("alignment"), noinline))
#define CUDASIM_NOINSTR_INLINE \
    __attribute__((no_sanitize_thread, no_sanitize("alignment"), always_inline)) inline

namespace cudasim_instr {

enum { K_RACE = 1, K_UNINIT = 2, K_MISALIGNED = 3, K_OOB = 4 };
enum { SP_GLOBAL = 1, SP_SHARED = 2, SP_OTHER = 3 };

struct Finding {  // mirrored in instrument.py
    int32_t kind, space;
    uint64_t addr;
    uint32_t size, is_write;
    uint32_t block[3], thread[3];
    uint32_t other_block[3], other_thread[3];
    uint32_t other_is_write, has_other;
    uint64_t pc, other_pc;
    const char* file;
    uint32_t line, dynamic;  // dynamic: in the launch's dynamic shared memory
    int64_t offset;  // there (dynamic); other offsets are found by the launcher from the address
};

enum { MAX_FINDINGS = 16 };
static Finding g_findings[MAX_FINDINGS];
static int g_nfindings;
static int g_nsuppressed;

static void fill_who(uint32_t* b, uint32_t* t) {
    b[0] = cudasim::g.block_idx.x;
    b[1] = cudasim::g.block_idx.y;
    b[2] = cudasim::g.block_idx.z;
    const cudasim::Fiber* f = cudasim::g.cur;
    t[0] = f ? f->tid.x : 0;
    t[1] = f ? f->tid.y : 0;
    t[2] = f ? f->tid.z : 0;
}

static Finding* new_finding(int kind, uint64_t pc) {
    for (int i = 0; i < g_nfindings; ++i)  // one report per check and instruction
        if (g_findings[i].kind == kind && g_findings[i].pc == pc) return nullptr;
    if (g_nfindings == MAX_FINDINGS) {
        g_nsuppressed++;
        return nullptr;
    }
    Finding* f = &g_findings[g_nfindings++];
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->pc = pc;
    fill_who(f->block, f->thread);
    return f;
}

struct TypeMismatchData {  // the host compiler's alignment-check record
    const char* file;
    uint32_t line, column;
    const void* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};

}  // namespace cudasim_instr

extern "C" {
// A misaligned access faults on the GPU whatever the sanitizer setting: so here, in every build.
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __ubsan_handle_type_mismatch_v1(
    void* data, void* ptr) {
    using namespace cudasim_instr;
    const TypeMismatchData* d = (const TypeMismatchData*)data;
    uint64_t align = 1ull << d->log_alignment;
    if (!ptr || ((uintptr_t)ptr & (align - 1)) == 0) return;
    if (!cudasim::g.cur) return;  // the launcher's own code
    Finding* f = new_finding(K_MISALIGNED, (uint64_t)(uintptr_t)__builtin_return_address(0));
    if (f) {
        f->addr = (uint64_t)(uintptr_t)ptr;
        f->size = (uint32_t)align;
        f->file = d->file;
        f->line = d->line;
        f->space = 0;  // global or not: classified by the launcher
        const cudasim::State& g = cudasim::g;
        uint64_t a = (uint64_t)(uintptr_t)ptr;
        uint64_t st = (uint64_t)(uintptr_t)cudasim::__start_cudasim_shared;
        uint64_t sp = (uint64_t)(uintptr_t)cudasim::__stop_cudasim_shared;
        uint64_t dy = (uint64_t)(uintptr_t)g.dyn_shared;
        if (st && a >= st && a < sp) {
            f->space = SP_SHARED;
            f->offset = (int64_t)(a - st);
        } else if (dy && a >= dy && a < dy + g.dyn_shared_len + 256) {
            f->space = SP_SHARED;
            f->dynamic = 1;
            f->offset = (int64_t)(a - dy);
        }
        for (int i = 0; i < g.npoison; ++i)
            if (a >= g.poison_addr[i] && a < g.poison_addr[i] + g.poison_size[i]) {
                f->space = SP_SHARED;
                f->offset = (int64_t)(a - g.poison_addr[i]);
            }
    }
    cudasim::fail("misaligned address");
}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __ubsan_handle_type_mismatch_v1_abort(
    void* data, void* ptr) {
    __ubsan_handle_type_mismatch_v1(data, ptr);
}
CUDASIM_EXPORT CUDASIM_NOINSTR int cudasim_findings(const cudasim_instr::Finding** out,
                                                    int* suppressed) {
    *out = cudasim_instr::g_findings;
    *suppressed = cudasim_instr::g_nsuppressed;
    return cudasim_instr::g_nfindings;
}
CUDASIM_EXPORT CUDASIM_NOINSTR void cudasim_clear_findings() {
    cudasim_instr::g_nfindings = 0;
    cudasim_instr::g_nsuppressed = 0;
}
CUDASIM_EXPORT int cudasim_instrumented() {
#if defined(CUDASIM_INSTRUMENT)
    return 1;
#else
    return 0;
#endif
}
}

#if defined(CUDASIM_INSTRUMENT)
#include <unordered_map>
#include <vector>

namespace cudasim_instr {

// -- what the launcher passes ---------------------------------------------------------------------
struct Alloc {  // mirrored in instrument.py
    uint64_t start, size;  // the bytes a kernel may touch
    uint64_t lo, hi;       // the whole mapping, guard pages and padding included
    uint8_t* init;         // 1 = written, per byte; null when every byte is written
};

struct Counters {  // mirrored in instrument.py
    uint64_t load_bytes, store_bytes, load_requests, store_requests, load_sectors, store_sectors,
        unique_load_sectors, unique_store_sectors, ideal_load_sectors, ideal_store_sectors;
};

// An access as the race check remembers it (one per 4-byte word and kind).
struct Acc {
    uint32_t block;    // linear block index + 1 (0 = none)
    uint16_t tid;      // linear thread index in the block
    uint8_t mask;      // bytes of the word touched
    uint8_t atomic;
    uint32_t epoch;    // __syncthreads passed by the thread
    uint32_t wseq;     // operations completed by its warp so far
    uint32_t seq;      // the thread's fences and atomics so far
    uint64_t pc;
};

struct Cell {
    Acc w, r[2];
};

enum { MAX_LOOP_DEPTH = 8 };

struct LoopFrame {
    uint32_t id, iteration;  // the `for` statement (__COUNTER__), iterations started
};

struct Thread {
    uint32_t epoch, seq, fence_seq, fence_epoch;
    uint32_t sync_with[32];  // per lane of the warp: the warp operation both last took part in
    uint32_t depth;          // `for` statements the thread is inside (profiling only)
    LoopFrame loops[MAX_LOOP_DEPTH];
};

struct Release {  // a __threadfence() followed by an atomic, by one thread
    uint32_t block, tid, fence_epoch, fence_seq, atomic_seq;
};

struct Acquire {  // an atomic: it sees the releases logged on its address before it
    uint64_t addr;
    uint32_t nlog, tid, epoch, seq;
};

struct AllocState {
    Cell* cells;
    uint64_t* load_bits;   // unique sectors
    uint64_t* store_bits;
};

struct Request {
    std::vector<uint64_t> sectors;
    std::vector<uint32_t> bytes;  // per sector: a mask of the bytes the lanes asked for
    uint64_t first;               // lowest address asked for
    uint64_t ideal;               // sectors those bytes need, packed from `first`
};

// (thread or warp, instruction and load/store, place): the place is the thread's loop context
// (for a thread) or the context and the occurrence in it (for a warp)
struct Key {
    uint64_t pc, place;
    uint32_t who;
    bool operator==(const Key& o) const {
        return pc == o.pc && place == o.place && who == o.who;
    }
};
struct KeyHash {
    size_t operator()(const Key& x) const {
        uint64_t h = x.pc * 0x9E3779B97F4A7C15ULL ^ x.place * 0xC2B2AE3D27D4EB4FULL ^ x.who;
        return (size_t)(h ^ (h >> 29));
    }
};

static CUDASIM_NOINSTR_INLINE uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0xFF51AFD7ED558CCDULL;
}

struct St {
    bool sanitize, profile;
    const Alloc* allocs;
    int nallocs;
    int last_alloc;
    AllocState* astate;
    Counters* counters;
    // shared memory: the static section, the dynamic buffer and template statics
    uint64_t sh_lo[64], sh_hi[64], sh_cap[64];
    int nsh;
    uint64_t sh_min, sh_max;        // bounds of the static ranges
    uint64_t alloc_min, alloc_max;  // bounds of the allocations
    uint64_t* pages;                // 1 bit per page in [alloc_min, alloc_max): an allocation's
    uint64_t npages;
    Cell* sh_cells[64];
    uint32_t* sh_init[64];  // block generation that wrote each byte
    // block
    uint32_t block;  // linear + 1
    Thread* threads;
    int nthreads;
    uint32_t warp_seq[32];
    std::vector<Acquire> acquires;  // of the current block (blocks run whole here)
    std::unordered_map<uint64_t, std::vector<Release>> releases;  // by address
    // profiling (per block)
    std::unordered_map<Key, uint32_t, KeyHash> exec_count;  // (thread, pc, context) -> executions
    std::unordered_map<Key, Request, KeyHash> requests;     // (warp, pc, place) -> sectors
    int atomic_depth;
    pthread_t launcher;  // the thread that runs the launch's blocks
    bool busy;  // inside a hook: the hooks' own (instrumented library) accesses are not the kernel's
    bool atomic_first;
    bool atomic_ordered;
};

static St s;

static CUDASIM_NOINSTR_INLINE uint32_t block_linear() {
    const dim3& gd = cudasim::g.grid;
    const uint3& b = cudasim::g.block_idx;
    return b.x + gd.x * (b.y + gd.y * b.z) + 1;
}

// The dynamic shared buffer is (re)allocated by the launch itself: its address is read per block.
static CUDASIM_NOINSTR_INLINE void refresh_dynamic() {
    int d = s.nsh - 1;
    if (d < 0) return;
    uint64_t lo = (uint64_t)(uintptr_t)cudasim::g.dyn_shared;
    s.sh_lo[d] = lo;
    s.sh_hi[d] = lo + cudasim::g.dyn_shared_len;
    s.sh_cap[d] = lo + ((cudasim::g.dyn_shared_len + 256) / 256 * 256);
}

static CUDASIM_NOINSTR void enter_block(uint32_t blk) {
    s.block = blk;
    refresh_dynamic();
    int n = cudasim::g.nthreads;
    if (n > s.nthreads) {
        free(s.threads);
        s.threads = (Thread*)calloc((size_t)n, sizeof(Thread));
        s.nthreads = n;
    }
    memset(s.threads, 0, sizeof(Thread) * (size_t)n);
    memset(s.warp_seq, 0, sizeof s.warp_seq);
    s.exec_count.clear();
    s.requests.clear();
    s.acquires.clear();
}

static CUDASIM_NOINSTR_INLINE void sync_block() {
    uint32_t blk = block_linear();
    if (blk != s.block) enter_block(blk);
}

static CUDASIM_NOINSTR_INLINE Thread& me() { return s.threads[(size_t)cudasim::g.cur->linear]; }

// Does `a` (recorded earlier) happen before the current access `b` of the current block?
static CUDASIM_NOINSTR bool ordered(const Acc& a, const Acc& b) {
    if (a.block == b.block) {
        if (a.tid == b.tid || a.epoch < b.epoch) return true;
        if ((a.tid >> 5) == (b.tid >> 5))
            return s.threads[b.tid].sync_with[a.tid & 31] > a.wseq;
        return false;
    }
    // another block: through a fence + atomic release that this block acquired
    const std::vector<Acquire>& acqs = s.acquires;
    for (const Acquire& q : acqs) {
        if (!(b.epoch > q.epoch || (b.tid == q.tid && b.seq > q.seq))) continue;
        auto it = s.releases.find(q.addr);
        if (it == s.releases.end()) continue;
        const std::vector<Release>& log = it->second;
        for (uint32_t i = 0; i < q.nlog && i < log.size(); ++i) {
            const Release& r = log[i];
            if (r.block != a.block) continue;
            if (a.epoch < r.fence_epoch || (a.tid == r.tid && a.seq < r.fence_seq) ||
                (a.atomic && a.tid == r.tid && a.seq == r.atomic_seq))
                return true;
        }
    }
    return false;
}

static CUDASIM_NOINSTR void report_race(int space, uint64_t addr, int64_t offset, uint32_t size,
                                        bool write, const Acc& other, bool other_write,
                                        uint64_t pc, const dim3& grid, uint32_t bdx,
                                        uint32_t bdy) {
    Finding* f = new_finding(K_RACE, pc);
    if (!f) return;
    f->space = space;
    f->addr = addr;
    f->offset = offset;
    f->dynamic = offset >= 0 && space == SP_SHARED;
    f->size = size;
    f->is_write = write;
    f->has_other = 1;
    f->other_is_write = other_write;
    f->other_pc = other.pc;
    uint32_t ob = other.block - 1;
    f->other_block[0] = ob % grid.x;
    f->other_block[1] = ob / grid.x % grid.y;
    f->other_block[2] = ob / (grid.x * grid.y);
    f->other_thread[0] = other.tid % bdx;
    f->other_thread[1] = other.tid / bdx % bdy;
    f->other_thread[2] = other.tid / (bdx * bdy);
}

static CUDASIM_NOINSTR_INLINE bool conflicts(const Acc& a, const Acc& b, uint8_t mask) {
    return a.block && (a.mask & mask) && !(a.block == b.block && a.tid == b.tid) &&
           !(a.atomic && b.atomic);
}

static CUDASIM_NOINSTR void race_check(Cell* cells, uint64_t base_off, uint64_t off,
                                       uint32_t size, bool write, const Acc& cur, int space,
                                       uint64_t addr, int64_t rep_off) {
    const dim3& gd = cudasim::g.grid;
    uint32_t bdx = cudasim::g.block.x, bdy = cudasim::g.block.y;
    uint64_t first = (base_off + off) >> 2, last = (base_off + off + size - 1) >> 2;
    for (uint64_t wi = first; wi <= last; ++wi) {
        uint64_t lo = wi << 2;
        uint8_t mask = 0;
        for (int b = 0; b < 4; ++b) {
            uint64_t byte = lo + (uint64_t)b;
            if (byte >= base_off + off && byte < base_off + off + size) mask |= (uint8_t)(1u << b);
        }
        Cell& c = cells[wi];
        if (space == SP_SHARED) {  // another block's shared memory is another memory
            if (c.w.block != cur.block) c.w.block = 0;
            for (int k = 0; k < 2; ++k)
                if (c.r[k].block != cur.block) c.r[k].block = 0;
        }
        Acc a = cur;
        a.mask = mask;
        if (conflicts(c.w, a, mask) && !ordered(c.w, a))
            report_race(space, addr, rep_off, size, write, c.w, true, cur.pc, gd, bdx, bdy);
        if (write)
            for (int k = 0; k < 2; ++k)
                if (conflicts(c.r[k], a, mask) && !ordered(c.r[k], a))
                    report_race(space, addr, rep_off, size, true, c.r[k], false, cur.pc, gd, bdx,
                                bdy);
        if (write || a.atomic) {
            c.w = a;
            for (int k = 0; k < 2; ++k)
                if (c.r[k].block && ordered(c.r[k], a)) c.r[k].block = 0;
        }
        if (!write || a.atomic) {
            int slot = 1;
            for (int k = 0; k < 2; ++k) {
                const Acc& r = c.r[k];
                if (!r.block || (r.block == a.block && r.tid == a.tid) || ordered(r, a)) {
                    slot = k;
                    break;
                }
            }
            c.r[slot] = a;
        }
    }
}

static CUDASIM_NOINSTR void atomic_sync(uint64_t addr) {
    // an atomic acquires the releases logged on its address so far, then releases if its thread
    // fenced before it
    Thread& t = me();
    uint32_t tid = (uint32_t)cudasim::g.cur->linear;
    std::vector<Release>& log = s.releases[addr];
    Acquire q;
    q.addr = addr;
    q.nlog = (uint32_t)log.size();
    q.tid = tid;
    q.epoch = t.epoch;
    q.seq = t.seq;
    if (q.nlog) s.acquires.push_back(q);
    if (t.fence_seq) {
        Release r;
        r.block = s.block;
        r.tid = tid;
        r.fence_epoch = t.fence_epoch;
        r.fence_seq = t.fence_seq;
        r.atomic_seq = t.seq;
        log.push_back(r);
    }
}

// Sectors that `bytes` distinct bytes need when packed from `first` on: the fewest any request
// for them can touch, so an access pattern with one sector more than this wastes one.
static CUDASIM_NOINSTR_INLINE uint64_t ideal_sectors(uint64_t first, uint64_t bytes) {
    return ((first & 31) + bytes + 31) >> 5;
}

static CUDASIM_NOINSTR void count(uint64_t addr, uint32_t size, bool write, uint64_t pc, int ai) {
    Counters& c = *s.counters;
    const cudasim::Fiber* f = cudasim::g.cur;
    const Thread& t = me();
    // where the thread is: the iteration of every `for` it is inside
    uint64_t context = 0;
    for (uint32_t i = 0; i < t.depth && i < MAX_LOOP_DEPTH; ++i)
        context = mix(mix(context, t.loops[i].id), t.loops[i].iteration);
    // pc * 2 + write: an atomic's load and store come from one instruction in some builds
    Key key = {pc * 2 + write, context, (uint32_t)f->linear};
    uint32_t k = s.exec_count[key]++;
    Key rkey = {pc * 2 + write, mix(context, k), (uint32_t)f->warp};
    auto ins = s.requests.emplace(rkey, Request());
    Request& r = ins.first->second;
    if (ins.second) {
        (write ? c.store_requests : c.load_requests)++;
        r.first = addr;
        r.ideal = 0;
    }
    (write ? c.store_bytes : c.load_bytes) += size;
    const Alloc& al = s.allocs[ai];
    AllocState& st = s.astate[(size_t)ai];
    uint64_t*& bits = write ? st.store_bits : st.load_bits;
    if (!bits) bits = (uint64_t*)calloc((size_t)((al.size + 31) / 32 / 64 + 1), 8);
    uint64_t distinct = 0;
    for (uint64_t sec = addr >> 5; sec <= (addr + size - 1) >> 5; ++sec) {
        size_t at = r.sectors.size();
        for (size_t i = 0; i < r.sectors.size(); ++i)
            if (r.sectors[i] == sec) at = i;
        if (at == r.sectors.size()) {
            r.sectors.push_back(sec);
            r.bytes.push_back(0);
            (write ? c.store_sectors : c.load_sectors)++;
        }
        uint64_t lo = std::max(addr, sec << 5), hi = std::min(addr + size, (sec + 1) << 5);
        uint32_t mask = (uint32_t)((hi - lo == 32 ? ~0ull : ((1ull << (hi - lo)) - 1))
                                   << (lo & 31));
        r.bytes[at] |= mask;
        uint64_t rel = sec - (al.start >> 5);
        if (!(bits[rel >> 6] >> (rel & 63) & 1)) {
            bits[rel >> 6] |= 1ull << (rel & 63);
            (write ? c.unique_store_sectors : c.unique_load_sectors)++;
        }
    }
    r.first = std::min(r.first, addr);
    for (uint32_t m : r.bytes) distinct += (uint64_t)__builtin_popcount(m);
    uint64_t ideal = ideal_sectors(r.first, distinct);
    (write ? c.ideal_store_sectors : c.ideal_load_sectors) += ideal - r.ideal;
    r.ideal = ideal;
}

static CUDASIM_NOINSTR_INLINE int find_alloc(uint64_t a) {
    int i = s.last_alloc;
    if (i >= 0 && a >= s.allocs[i].lo && a < s.allocs[i].hi) return i;
    int lo = 0, hi = s.nallocs - 1, found = -1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (s.allocs[mid].lo <= a) {
            found = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    if (found >= 0 && a < s.allocs[found].hi) {
        s.last_alloc = found;
        return found;
    }
    return -1;
}

// Most calls come from the simulator's own code (its state, the threads' stacks): turn those away
// before any other work, with the page bitmap of the allocations and the shared-memory bounds.
static CUDASIM_NOINSTR_INLINE bool interesting(uint64_t a) {
    if (a - s.sh_min < s.sh_max - s.sh_min) return true;
    uint64_t dy = (uint64_t)(uintptr_t)cudasim::g.dyn_shared;
    if (a - dy < cudasim::g.dyn_shared_len + 256) return true;
    uint64_t page = (a - s.alloc_min) >> 12;
    return page < s.npages && (s.pages[page >> 6] >> (page & 63) & 1);
}

static CUDASIM_NOINSTR void note(int kind, int space, uint64_t addr, int64_t offset, bool dynamic,
                                 uint32_t size, bool write, uint64_t pc) {
    Finding* f = new_finding(kind, pc);
    if (!f) return;
    f->space = space;
    f->addr = addr;
    f->offset = offset;
    f->dynamic = dynamic;
    f->size = size;
    f->is_write = write;
}

static CUDASIM_NOINSTR void access(uint64_t addr, uint32_t size, bool write, uint64_t pc) {
    cudasim::Fiber* f = cudasim::g.cur;
    if (!f || size == 0 || s.busy) return;
    // another thread of the process (the runtime's watchdog, say) is not the kernel: its accesses
    // would set `busy` under the launch's feet and hide the kernel's own
    if (!pthread_equal(pthread_self(), s.launcher)) return;
    // the simulator's own state and the threads' stacks, which most non-kernel accesses touch
    const cudasim::State& g = cudasim::g;
    if ((addr >= (uint64_t)(uintptr_t)&g && addr < (uint64_t)(uintptr_t)(&g + 1)) ||
        (addr >= (uint64_t)(uintptr_t)g.stacks &&
         addr < (uint64_t)(uintptr_t)g.stacks + g.stacks_len) ||
        (addr >= (uint64_t)(uintptr_t)g.fibers &&
         addr < (uint64_t)(uintptr_t)(g.fibers + g.stacks_threads)) ||
        (addr >= (uint64_t)(uintptr_t)&s && addr < (uint64_t)(uintptr_t)(&s + 1)))
        return;
    struct Busy {
        CUDASIM_NOINSTR_INLINE Busy() { s.busy = true; }
        CUDASIM_NOINSTR_INLINE ~Busy() { s.busy = false; }
    } busy;
    sync_block();
    bool atomic = s.atomic_depth > 0;
    // shared memory?
    int si = -1, d = s.nsh - 1;
    if (d >= 0 && addr >= s.sh_lo[d] && addr < s.sh_cap[d]) {
        si = d;
    } else if (addr >= s.sh_min && addr < s.sh_max) {
        for (int i = 0; i < d; ++i)
            if (addr >= s.sh_lo[i] && addr < s.sh_cap[i]) {
                si = i;
                break;
            }
    }
    int ai = si < 0 && addr >= s.alloc_min && addr < s.alloc_max ? find_alloc(addr) : -1;
    if (si < 0 && ai < 0) return;
    Thread& t = me();
    if (atomic && s.atomic_first) {
        s.atomic_first = false;
        if (ai >= 0) atomic_sync(addr);
    }
    Acc cur;
    cur.block = s.block;
    cur.tid = (uint16_t)f->linear;
    cur.mask = 0;
    cur.atomic = atomic;
    cur.epoch = t.epoch;
    cur.wseq = s.warp_seq[f->warp];
    cur.seq = t.seq;
    cur.pc = pc;
    if (si >= 0) {
        if (!s.sanitize) return;
        uint64_t off = addr - s.sh_lo[si];
        bool dynamic = si == s.nsh - 1;
        if (addr + size > s.sh_hi[si]) {
            note(K_OOB, SP_SHARED, addr, (int64_t)off, dynamic, size, write, pc);
            cudasim::fail("out of bounds");
        }
        uint32_t* init = s.sh_init[(size_t)si];
        if (!write) {
            for (uint32_t b = 0; b < size; ++b)
                if (init[off + b] != s.block) {
                    note(K_UNINIT, SP_SHARED, addr, (int64_t)off, dynamic, size, write, pc);
                    break;
                }
        }
        if (write)
            for (uint32_t b = 0; b < size; ++b) init[off + b] = s.block;
        race_check(s.sh_cells[(size_t)si], 0, off, size, write, cur, SP_SHARED, addr,
                   si == s.nsh - 1 ? (int64_t)off : -1);
        return;
    }
    const Alloc& al = s.allocs[ai];
    if (addr < al.start || addr + size > al.start + al.size) {
        if (!s.sanitize) return;
        note(K_OOB, SP_GLOBAL, addr, -1, false, size, write, pc);
        cudasim::fail("out of bounds");
    }
    if (s.profile) {
        count(addr, size, write, pc, ai);
    }
    if (!s.sanitize) return;
    uint64_t off = addr - al.start;
    if (al.init && !write) {
        for (uint32_t b = 0; b < size; ++b)
            if (!al.init[off + b]) {
                note(K_UNINIT, SP_GLOBAL, addr, -1, false, size, write, pc);
                break;
            }
    }
    if (al.init && write) memset(al.init + off, 1, size);
    AllocState& st = s.astate[(size_t)ai];
    if (!st.cells) st.cells = (Cell*)calloc((size_t)((al.size + 3) / 4 + 1), sizeof(Cell));
    if (!st.cells) return;  // no memory for the race check of this allocation
    race_check(st.cells, al.start & 3, off, size, write, cur, SP_GLOBAL, addr, (int64_t)off);
}

// -- hooks the kernel's code calls ----------------------------------------------------------------
static CUDASIM_NOINSTR int barrier(int result) {
    if (cudasim::g.cur && !s.busy) {
        sync_block();
        me().epoch++;
    }
    return result;
}

static CUDASIM_NOINSTR void fence() {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!cudasim::g.cur) return;
    sync_block();
    Thread& t = me();
    t.seq++;
    t.fence_seq = t.seq;
    t.fence_epoch = t.epoch;
}

struct AtomicScope {
    CUDASIM_NOINSTR AtomicScope() {
        if (s.atomic_depth++ == 0) s.atomic_first = true;
    }
    CUDASIM_NOINSTR ~AtomicScope() {
        if (--s.atomic_depth == 0 && cudasim::g.cur) {
            sync_block();
            me().seq++;
        }
    }
};

// One per execution of a `for` statement of the kernel source (the macro below): keeps the
// thread's loop context, which tells the profiler which lanes of a warp run an instruction
// together. Costs nothing unless profiling.
struct LoopGuard {
    bool on;
    CUDASIM_NOINSTR_INLINE explicit LoopGuard(uint32_t id) : on(false) {
        if (!s.profile || !cudasim::g.cur || s.busy) return;
        sync_block();
        Thread& t = me();
        if (t.depth < MAX_LOOP_DEPTH) t.loops[t.depth] = LoopFrame{id, 0};
        t.depth++;
        on = true;
    }
    CUDASIM_NOINSTR_INLINE ~LoopGuard() {
        if (on) me().depth--;
    }
    CUDASIM_NOINSTR_INLINE explicit operator bool() const { return false; }
    CUDASIM_NOINSTR_INLINE bool tick() const {
        if (on) {
            Thread& t = me();
            if (t.depth <= MAX_LOOP_DEPTH) t.loops[t.depth - 1].iteration++;
        }
        return false;
    }
};

}  // namespace cudasim_instr

// the warp-operation hook of cudasim_runtime.h: the lanes in `need` have just synchronized
namespace cudasim {
static CUDASIM_NOINSTR void instr_warp_done(Fiber* base, unsigned need) {
    using namespace cudasim_instr;
    sync_block();
    int w = base->warp;
    uint32_t seq = ++s.warp_seq[w];
    for (int l = 0; l < 32; ++l) {
        if (!(need >> l & 1u)) continue;
        Thread& t = s.threads[(size_t)(w * 32 + l)];
        for (int j = 0; j < 32; ++j)
            if (need >> j & 1u) t.sync_with[j] = seq;
    }
}
}  // namespace cudasim

extern "C" {
#define CUDASIM_HOOK(NAME, N, WRITE)                                                           \
    __attribute__((visibility("hidden"))) CUDASIM_NOINSTR void NAME(void* p) {                \
        if (cudasim_instr::interesting((uint64_t)(uintptr_t)p))                               \
            cudasim_instr::access((uint64_t)(uintptr_t)p, N, WRITE,                           \
                                  (uint64_t)(uintptr_t)__builtin_return_address(0));          \
    }
#define CUDASIM_ACCESS_HOOKS(N)                          \
    CUDASIM_HOOK(__tsan_read##N, N, false)               \
    CUDASIM_HOOK(__tsan_write##N, N, true)               \
    CUDASIM_HOOK(__tsan_unaligned_read##N, N, false)     \
    CUDASIM_HOOK(__tsan_unaligned_write##N, N, true)
CUDASIM_HOOK(__tsan_read1, 1, false)
CUDASIM_HOOK(__tsan_write1, 1, true)
CUDASIM_ACCESS_HOOKS(2)
CUDASIM_ACCESS_HOOKS(4)
CUDASIM_ACCESS_HOOKS(8)
CUDASIM_ACCESS_HOOKS(16)
#undef CUDASIM_ACCESS_HOOKS
#undef CUDASIM_HOOK
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_read_range(void* p,
                                                                            unsigned long n) {
    if (cudasim_instr::interesting((uint64_t)(uintptr_t)p))
        cudasim_instr::access((uint64_t)(uintptr_t)p, (uint32_t)n, false,
                          (uint64_t)(uintptr_t)__builtin_return_address(0));
}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_write_range(void* p,
                                                                             unsigned long n) {
    if (cudasim_instr::interesting((uint64_t)(uintptr_t)p))
        cudasim_instr::access((uint64_t)(uintptr_t)p, (uint32_t)n, true,
                          (uint64_t)(uintptr_t)__builtin_return_address(0));
}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_init() {}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_func_entry(void*) {}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_func_exit() {}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_vptr_update(void*, void*) {}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_vptr_read(void*) {}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_atomic_thread_fence(int) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
__attribute__((visibility("hidden"))) CUDASIM_NOINSTR void __tsan_atomic_signal_fence(int) {}

// Before a launch: what to check or count, the live allocations (sorted by start) and where the
// counters go.
CUDASIM_EXPORT CUDASIM_NOINSTR void cudasim_instr_begin(int sanitize, int profile,
                                                        const cudasim_instr::Alloc* allocs,
                                                        int nallocs,
                                                        cudasim_instr::Counters* counters,
                                                        uint64_t dyn_shared_bytes) {
    using namespace cudasim_instr;
    s.sanitize = sanitize != 0;
    s.profile = profile != 0;
    s.launcher = pthread_self();
    s.allocs = allocs;
    s.nallocs = nallocs;
    s.last_alloc = -1;
    free(s.astate);
    s.astate = (AllocState*)calloc((size_t)nallocs + 1, sizeof(AllocState));
    s.counters = counters;
    s.block = 0;
    s.releases.clear();
    s.acquires.clear();
    s.atomic_depth = 0;
    s.busy = false;
    // shared memory as the runtime will lay it out for this launch
    s.nsh = 0;
    size_t static_len = (size_t)(cudasim::__stop_cudasim_shared - cudasim::__start_cudasim_shared);
    if (cudasim::__start_cudasim_shared && static_len) {
        s.sh_lo[s.nsh] = (uint64_t)(uintptr_t)cudasim::__start_cudasim_shared;
        s.sh_hi[s.nsh] = s.sh_cap[s.nsh] = s.sh_lo[s.nsh] + static_len;
        s.nsh++;
    }
    for (int i = 0; i < cudasim::g.npoison && s.nsh < 63; ++i) {
        s.sh_lo[s.nsh] = cudasim::g.poison_addr[i];
        s.sh_hi[s.nsh] = s.sh_cap[s.nsh] = s.sh_lo[s.nsh] + cudasim::g.poison_size[i];
        s.nsh++;
    }
    s.sh_lo[s.nsh] = 0;  // the dynamic buffer: filled in by cudasim_instr_dynamic below
    s.sh_hi[s.nsh] = s.sh_cap[s.nsh] = 0;
    s.nsh++;
    for (int i = 0; i < s.nsh - 1; ++i) {
        size_t len = (size_t)(s.sh_hi[i] - s.sh_lo[i]);
        s.sh_cells[(size_t)i] = (Cell*)calloc(len / 4 + 2, sizeof(Cell));
        s.sh_init[(size_t)i] = (uint32_t*)calloc(len + 1, 4);
    }
    int d = s.nsh - 1;
    s.sh_min = ~0ull;
    s.sh_max = 0;
    for (int i = 0; i < d; ++i) {
        s.sh_min = std::min(s.sh_min, s.sh_lo[i]);
        s.sh_max = std::max(s.sh_max, s.sh_cap[i]);
    }
    s.alloc_min = nallocs ? allocs[0].lo & ~4095ull : 0;
    s.alloc_max = nallocs ? allocs[nallocs - 1].hi : 0;
    free(s.pages);
    s.npages = (s.alloc_max - s.alloc_min + 4095) >> 12;
    if (s.npages > (1ull << 30)) s.npages = 1ull << 30;  // at most 128 MB of bitmap
    s.pages = (uint64_t*)calloc((size_t)(s.npages / 64 + 1), 8);
    if (!s.pages) s.npages = 0;
    for (int i = 0; i < nallocs; ++i)
        for (uint64_t a = allocs[i].lo & ~4095ull; a < allocs[i].hi; a += 4096) {
            uint64_t p = (a - s.alloc_min) >> 12;
            if (p < s.npages) s.pages[p >> 6] |= 1ull << (p & 63);
        }
    size_t dyn = (size_t)dyn_shared_bytes;
    s.sh_cells[(size_t)d] = (Cell*)calloc(dyn / 4 + 2, sizeof(Cell));
    s.sh_init[(size_t)d] = (uint32_t*)calloc(dyn + 1, 4);
}

CUDASIM_EXPORT CUDASIM_NOINSTR void cudasim_instr_end() {
    using namespace cudasim_instr;
    for (int i = 0; i < s.nallocs; ++i) {
        free(s.astate[i].cells);
        free(s.astate[i].load_bits);
        free(s.astate[i].store_bits);
    }
    free(s.astate);
    s.astate = nullptr;
    for (int i = 0; i < s.nsh; ++i) {
        free(s.sh_cells[i]);
        free(s.sh_init[i]);
        s.sh_cells[i] = nullptr;
        s.sh_init[i] = nullptr;
    }
    s.nsh = 0;
    s.releases.clear();
    s.acquires.clear();
    s.requests.clear();
    s.exec_count.clear();
    s.nallocs = 0;
    s.allocs = nullptr;
    s.counters = nullptr;
}
}


// Kernel-facing spellings that the checks must see: barriers, fences, atomics.
#undef __syncthreads
#undef __syncthreads_count
#undef __syncthreads_and
#undef __syncthreads_or
#define __syncthreads() cudasim_instr::barrier(cudasim::syncthreads_impl(0, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) \
    cudasim_instr::barrier(cudasim::syncthreads_impl(1, (p), __FILE__, __LINE__))
#define __syncthreads_and(p) \
    cudasim_instr::barrier(cudasim::syncthreads_impl(2, (p), __FILE__, __LINE__))
#define __syncthreads_or(p) \
    cudasim_instr::barrier(cudasim::syncthreads_impl(3, (p), __FILE__, __LINE__))
#define __threadfence() cudasim_instr::fence()
#define __threadfence_system() cudasim_instr::fence()
#define CUDASIM_INSTR_ATOMIC(name) (cudasim_instr::AtomicScope(), ::name
#define atomicAdd(...) CUDASIM_INSTR_ATOMIC(atomicAdd)(__VA_ARGS__))
#define atomicSub(...) CUDASIM_INSTR_ATOMIC(atomicSub)(__VA_ARGS__))
#define atomicExch(...) CUDASIM_INSTR_ATOMIC(atomicExch)(__VA_ARGS__))
#define atomicMin(...) CUDASIM_INSTR_ATOMIC(atomicMin)(__VA_ARGS__))
#define atomicMax(...) CUDASIM_INSTR_ATOMIC(atomicMax)(__VA_ARGS__))
#define atomicAnd(...) CUDASIM_INSTR_ATOMIC(atomicAnd)(__VA_ARGS__))
#define atomicOr(...) CUDASIM_INSTR_ATOMIC(atomicOr)(__VA_ARGS__))
#define atomicXor(...) CUDASIM_INSTR_ATOMIC(atomicXor)(__VA_ARGS__))
#define atomicInc(...) CUDASIM_INSTR_ATOMIC(atomicInc)(__VA_ARGS__))
#define atomicDec(...) CUDASIM_INSTR_ATOMIC(atomicDec)(__VA_ARGS__))
#define atomicCAS(...) CUDASIM_INSTR_ATOMIC(atomicCAS)(__VA_ARGS__))
// Every `for` of the kernel source after this header keeps the thread's loop context (LoopGuard):
// the guard lives for the whole statement (a condition's variable spans both branches), and each
// iteration ticks it before the body. The dangling else binds as the source's own would.
#define for(...)                                                                  \
    if (cudasim_instr::LoopGuard cudasim_loop_guard_{__COUNTER__}) {              \
    } else                                                                        \
        for (__VA_ARGS__)                                                         \
            if (cudasim_loop_guard_.tick()) {                                     \
            } else

#endif  // CUDASIM_INSTRUMENT
#endif  // CUDASIM_INSTRUMENT_H
