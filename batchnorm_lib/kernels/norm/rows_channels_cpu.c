/* Batch normalization of rows x channels data on the CPU: float32 (R, C), C-contiguous rows.
 *
 * BatchNorm on (N, C) and every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C))
 * are one problem: statistics per channel down R rows of C contiguous channels. Built into the
 * same shared library as bn_cpu.c by cpu_native.py (same flags: -O3 -ffp-contract=off, and
 * -march=native / -fopenmp where they work) and called through ctypes.
 *
 * Work split. The rows are cut into row parts by the shape alone (at most RC_MAX_PARTS, each of
 * at least RC_PART_ELEMS elements); a reduction task is one row part times one chunk of at most
 * RC_CHUNK channels, and the OpenMP threads share the tasks. A task reads its rows once, RC_RB
 * rows at a time (sequential streams). The parts are merged per channel in part order, so the
 * results depend on the shape only: bitwise the same for every thread count. The elementwise
 * passes split the rows among the threads and take several rows per step, so each per-channel
 * constant is loaded once for them.
 *
 * SIMD across channels: with AVX and FMA (-march=native on such a CPU) the inner loops are
 * written with 8-float intrinsics, the partial sums of 16 channels held in registers while a block
 * of rows goes by; the scalar loops (the channel tails, and every channel on other CPUs) do per
 * channel exactly what a vector lane does, so the results do not depend on which ran.
 *
 * Numerics, as in bn_cpu.c: a part's statistics are sums of deviations from a shift, the mean of
 * the part's first RC_RB rows, summed in float registers over blocks of RC_RB rows and then in
 * double, so no float rounding grows with the rows; the part's mean and M2 follow in double and
 * the parts merge with Chan's formula in double. The per-channel constants are computed in
 * float64 and rounded once; the backward also sums x - savemean, the float32 mean's offset from
 * the exact one, and corrects the gradients for it.
 * The elementwise formulas are evaluated in float32 in bn_cpu.c's order:
 *   forward:  out = fmaf(x - mean, a, bias),          a = scale / sqrt(var + eps)
 *   backward: dx  = (dy * k - c0) - (x - mean) * c1,  k = scale * invstd
 * so the two layouts give the same results up to the order of the double sums.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#define RC_AVX 1 /* 8-float vectors, fused multiply-adds, 32-byte non-temporal stores */
#endif

typedef int64_t i64;

/* bn_cpu.c, same library */
int bn_get_num_threads(void);
float bn_affine_factor(float scale, double var, double eps);
void bn_finish_channel(i64 c, double mean, double var, double total, double m, const float *scale,
                       double eps, double factor, float *mean32, float *a32, float *savemean,
                       float *saveinvvar, float *run_mean, float *run_var);

#ifndef RC_CHUNK
#define RC_CHUNK 1024                 /* channels per reduction task */
#endif
#ifndef RC_PART_ELEMS
#define RC_PART_ELEMS (128 * 1024)    /* a row part holds at least this many elements */
#endif
#ifndef RC_MIN_PART_ROWS
#define RC_MIN_PART_ROWS 64           /* ... and this many rows (partials stay small for wide C) */
#endif
#ifndef RC_MAX_PARTS
#define RC_MAX_PARTS 64
#endif
#ifndef RC_ELEMWISE_CHUNK
#define RC_ELEMWISE_CHUNK (32 * 1024) /* elements per task of the elementwise passes */
#endif
#ifndef RC_STREAM_BYTES
#define RC_STREAM_BYTES (8 * 1024 * 1024) /* outputs this large bypass the cache */
#endif
#ifndef RC_SERIAL_BELOW
#define RC_SERIAL_BELOW (64 * 1024)   /* elements: smaller tensors run on one thread */
#endif

static inline float rc_relu(float v) { return v <= 0.0f ? 0.0f : v; }
/* dy[i] masked by the forward's output y (y NULL: dy as is); v <= 0 is false for NaN, so NaN
 * stays */
static inline float rc_grad(const float *dy, const float *y, i64 i)
{
    return y && y[i] <= 0.0f ? 0.0f : dy[i];
}

#ifdef RC_AVX
/* the same rules on 8 channels: v <= 0 ? 0 : v with an ordered compare (NaN stays, -0 becomes +0),
 * and dy masked by y */
static inline __m256 relu256(__m256 v)
{
    return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LE_OQ), v);
}
static inline __m256 grad256(const float *dy, const float *y)
{
    __m256 g = _mm256_loadu_ps(dy);
    if (!y)
        return g;
    return _mm256_andnot_ps(_mm256_cmp_ps(_mm256_loadu_ps(y), _mm256_setzero_ps(), _CMP_LE_OQ), g);
}
/* acc[0..8) += v, in double */
static inline void add8d(double *acc, __m256 v)
{
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc),
                                        _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4),
                                            _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
static inline void st8(float *p, __m256 v, int stream)
{
    if (stream)
        _mm256_stream_ps(p, v);
    else
        _mm256_storeu_ps(p, v);
}
/* v[i] to row i of nr rows C floats apart, after all of a step's loads */
static inline __attribute__((always_inline)) void st8_rows(float *o, const __m256 *v, int nr,
                                                           i64 C, int stream)
{
    for (int i = 0; i < nr; i++)
        st8(o + i * C, v[i], stream);
}
#endif

#ifndef RC_RB
#define RC_RB 8
#endif
#ifndef RC_RB_DY
#define RC_RB_DY 4
#endif
/* RC_RB (RC_RB_DY in the backward, two arrays): rows per register block of the reductions
 * (sequential streams, within L1's ways). The backward's blocks read x and dy, 2 RC_RB_DY streams:
 * 4 rows were faster than 8 (2 threads, 512 x 2048 sums 0.23 against 0.33 ms; one thread, as
 * fast or faster within the noise of a shared machine) and 16 slower everywhere. */

static i64 rc_min(i64 a, i64 b) { return a < b ? a : b; }
static i64 rc_max(i64 a, i64 b) { return a > b ? a : b; }
static i64 rc_ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

static int rc_threads(i64 total)
{
    return total < RC_SERIAL_BELOW ? 1 : bn_get_num_threads();
}

#ifndef RC_CHANNEL_WORK
#define RC_CHANNEL_WORK 4096 /* per-channel steps, counting a part's merge 1 and the square root
                                * and divisions 4: less runs on one thread */
#endif
/* Threads for the per-channel steps between the passes (merging P parts, a square root and
 * divisions in double per channel): serial they cost tens of microseconds at C = 2048, a tenth of
 * a 512 x 2048 forward, while the other threads wait. Each channel is computed alone, so the
 * results do not depend on the split. */
static int rc_channel_threads(i64 R, i64 work)
{
    return work < RC_CHANNEL_WORK ? 1 : rc_threads(R * work);
}

#ifndef RC_MERGE_BLOCK
#define RC_MERGE_BLOCK 64
#endif
/* The per-channel merge of the row parts runs over blocks of RC_MERGE_BLOCK channels, parts
 * outside: the partials of one part are P * C doubles apart (16 KB at C = 2048), so a channel at a
 * time missed the cache on every part (512 x 2048: 5% of a training step); a block reads each
 * part's stretch in order. Each channel still adds its parts in part order, as alone. */

/* The reduction's decomposition; a function of (R, C) only. */
typedef struct {
    i64 W, nchunk;   /* channels per chunk, chunks */
    i64 P, PR;       /* row parts, rows per part */
} rc_plan;

static rc_plan rc_make_plan(i64 R, i64 C)
{
    rc_plan p;
    p.W = rc_min(C, RC_CHUNK);
    p.nchunk = rc_ceil_div(C, p.W);
    i64 parts = rc_min(R * C / RC_PART_ELEMS, R / RC_MIN_PART_ROWS);
    parts = rc_max(1, rc_min(parts, RC_MAX_PARTS));
    if (parts > 2)
        parts -= parts % 2; /* even: two or four threads get equal shares (49 parts: 25 and 24) */
    p.PR = rc_ceil_div(R, parts);
    p.P = rc_ceil_div(R, p.PR);
    return p;
}

/* One reduction task: channels [c0, c0 + w) of rows [r0, r1), writing row part `part`'s results;
 * ws is the calling thread's workspace. */
typedef void (*rc_task_fn)(void *ctx, i64 part, i64 c0, i64 w, i64 r0, i64 r1, double *ws);

/* Runs every (row part, channel chunk) task of plan p on the threads, each thread with a workspace
 * of ws_doubles * p->W doubles; returns -1 when a workspace cannot be allocated. */
static int rc_tasks(const rc_plan *p, i64 R, i64 C, i64 ws_doubles, rc_task_fn fn, void *ctx)
{
    int failed = 0;
    i64 ntask = p->P * p->nchunk;
#pragma omp parallel num_threads(rc_threads(R * C))
    {
        double *ws = malloc(sizeof(double) * (size_t)(p->W * ws_doubles));
        if (!ws) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (i64 t = 0; t < ntask; t++) {
                i64 part = t / p->nchunk, c0 = (t % p->nchunk) * p->W;
                i64 r0 = part * p->PR;
                fn(ctx, part, c0, rc_min(p->W, C - c0), r0, rc_min(R, r0 + p->PR), ws);
            }
        }
        free(ws);
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* statistics                                                                                      */

/* The reductions walk a block of rows strip by strip (channels across, rows down), an order the
 * hardware prefetcher follows late: they were bound by load latency (one thread, 50176 x 128:
 * 25.7 MB read at 10 GB/s). So each strip prefetches its lines RC_PF_BYTES of rows ahead (at least
 * one row): 2 KB measured fastest of 1 to 32 KB, 5-20% faster than no prefetch. */
#ifndef RC_PF_BYTES
#define RC_PF_BYTES 2048
#endif
static inline i64 rc_pf_rows(i64 C)
{
    return (RC_PF_BYTES + C * (i64)sizeof(float) - 1) / (C * (i64)sizeof(float));
}

#ifdef RC_AVX
/* block_sums on the nv (1, 2 or 4, a constant once inlined) vectors of channels [j, j + 8 nv): the
 * sums stay in registers while the rows go by */
static inline __attribute__((always_inline)) void strip_sums(const float *x, const float *dy,
                                                             const float *y, i64 C, i64 rb,
                                                             i64 re, i64 j, int nv, const float *c,
                                                             double *f1, double *f2, double *f3)
{
    __m256 cv[4], a[4], q[4], e[4];
    for (int v = 0; v < nv; v++) {
        cv[v] = _mm256_loadu_ps(c + j + 8 * v);
        a[v] = q[v] = e[v] = _mm256_setzero_ps();
    }
    i64 pf = rc_pf_rows(C) * C;
    for (i64 r = rb; r < re; r++) {
        i64 o = r * C + j;
        for (int v = 0; v < nv; v += 2) {
            __builtin_prefetch(x + o + pf + 8 * v, 0, 3);
            if (dy)
                __builtin_prefetch(dy + o + pf + 8 * v, 0, 3);
            if (y)
                __builtin_prefetch(y + o + pf + 8 * v, 0, 3);
        }
        for (int v = 0; v < nv; v++) {
            __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + o + 8 * v), cv[v]);
            if (dy) {
                __m256 u = grad256(dy + o + 8 * v, y ? y + o + 8 * v : NULL);
                a[v] = _mm256_add_ps(a[v], u);
                q[v] = _mm256_fmadd_ps(u, t, q[v]);
                e[v] = _mm256_add_ps(e[v], t);
            } else {
                a[v] = _mm256_add_ps(a[v], t);
                q[v] = _mm256_fmadd_ps(t, t, q[v]);
            }
        }
    }
    for (int v = 0; v < nv; v++) {
        add8d(f1 + j + 8 * v, a[v]);
        add8d(f2 + j + 8 * v, q[v]);
        if (dy)
            add8d(f3 + j + 8 * v, e[v]);
    }
}
#endif

/* Over rows [rb, re) (at most RC_RB: sequential streams, and rows a multiple of 4 KB apart share L1
 * sets, so RC_RB of them stay within its ways), with t = x - c[j] in float32:
 *   dy NULL: f1[j] += sum(t), f2[j] += sum(t * t)
 *   else:    f1[j] += sum(dy), f2[j] += sum(dy * t), f3[j] += sum(t), dy masked by y if not NULL
 * Each channel's sums run in float over the block's rows (at most RC_RB terms, deviations from a
 * nearby shift: exact enough), products accumulated with fmaf, then are added into double; the
 * vector and scalar loops do exactly this per channel, so a build without AVX gives the same bits.
 * Inlined, so each caller gets its own loop. */
static inline __attribute__((always_inline)) void block_sums(const float *x, const float *dy,
                                                             const float *y, i64 C, i64 rb, i64 re,
                                                             i64 w, const float *c, double *f1,
                                                             double *f2, double *f3)
{
    i64 j = 0;
#ifdef RC_AVX
    for (; j + 32 <= w; j += 32)
        strip_sums(x, dy, y, C, rb, re, j, 4, c, f1, f2, f3);
    for (; j + 16 <= w; j += 16)
        strip_sums(x, dy, y, C, rb, re, j, 2, c, f1, f2, f3);
    for (; j + 8 <= w; j += 8)
        strip_sums(x, dy, y, C, rb, re, j, 1, c, f1, f2, f3);
#endif
    for (; j < w; j++) {
        float a = 0.0f, q = 0.0f, e = 0.0f;
        for (i64 r = rb; r < re; r++) {
            float t = x[r * C + j] - c[j];
            float u = dy ? rc_grad(dy, y, r * C + j) : t;
            a += u;
            q = fmaf(u, t, q);
            e += t;
        }
        f1[j] += (double)a;
        f2[j] += (double)q;
        if (dy)
            f3[j] += (double)e;
    }
}

/* Mean and M2 of channels [0, w) of rows [r0, r1) (row r at x + r * C) into mean[], m2[]; ws holds
 * 3 * w doubles. One read of the rows: sums of deviations from a shift, the mean of the part's
 * first RC_RB rows (near the part's mean, so the float terms stay small and the double sums lose
 * nothing to cancellation), then the part's mean and M2 from them in double. */
static void part_stats(const float *x, i64 C, i64 r0, i64 r1, i64 w, double *restrict mean,
                       double *restrict m2, double *ws)
{
    double *restrict f1 = ws, *restrict f2 = ws + w;
    float *restrict shift = (float *)(ws + 2 * w);
    i64 n0 = rc_min(RC_RB, r1 - r0);
    memcpy(shift, x + r0 * C, sizeof(float) * (size_t)w);
    for (i64 r = r0 + 1; r < r0 + n0; r++) {
        const float *restrict row = x + r * C;
        for (i64 j = 0; j < w; j++)
            shift[j] += row[j];
    }
    float inv_n0 = (float)(1.0 / (double)n0);
    for (i64 j = 0; j < w; j++) {
        shift[j] *= inv_n0;
        /* an Inf among those rows: no shift, so the sums are the plain ones and the mean is the
         * +-Inf (or NaN) that the plain sum gives, as PyTorch's sum / m */
        if (shift[j] - shift[j] != 0.0f)
            shift[j] = 0.0f;
        f1[j] = f2[j] = 0.0;
    }
    for (i64 rb = r0; rb < r1; rb += RC_RB)
        block_sums(x, NULL, NULL, C, rb, rc_min(rb + RC_RB, r1), w, shift, f1, f2, NULL);
    double n = (double)(r1 - r0);
    for (i64 j = 0; j < w; j++) {
        double s1 = f1[j], dm = s1 / n;
        double pm2 = f2[j] - s1 * dm;
        mean[j] = (double)shift[j] + dm;
        m2[j] = pm2 < 0.0 ? 0.0 : pm2 + 0.0; /* below 0 by rounding: 0; NaN stays; -0 -> +0 */
    }
}

typedef struct {
    const float *x;
    i64 C;
    double *pmean, *pm2;
} stats_ctx;

static void stats_task(void *ctx, i64 part, i64 c0, i64 w, i64 r0, i64 r1, double *ws)
{
    const stats_ctx *k = ctx;
    i64 o = part * k->C + c0;
    part_stats(k->x + c0, k->C, r0, r1, w, k->pmean + o, k->pm2 + o, ws);
}

/* ---------------------------------------------------------------------------------------------- */
/* elementwise passes, rows split among the threads                                                */

/* Outputs of at least g_stream_bytes (not written in place) are written with non-temporal stores:
 * an output larger than the last-level cache is evicted before anyone reads it, and a normal store
 * first reads the line it writes (write-allocate), one more pass over memory. */
static i64 g_stream_bytes = RC_STREAM_BYTES;

/* Whether an output of n floats (not written in place over in) goes out with non-temporal
 * stores: the rule of every elementwise pass of the library (bn_cpu.c, per_row_cpu.c, here). */
int nt_stream(const float *out, const float *in, i64 n)
{
#ifdef RC_AVX
    return out != in && n * (i64)sizeof(float) >= g_stream_bytes;
#else
    (void)out; (void)in; (void)n;
    return 0;
#endif
}

i64 rc_set_stream_bytes(i64 n)
{
    i64 previous = g_stream_bytes;
    if (n >= 0)
        g_stream_bytes = n;
    return previous;
}

/* Streaming only where every row is whole aligned 32-byte blocks (C a multiple of 8, out 32-byte
 * aligned, as the CPU backend allocates): a line written partly by normal and partly by streaming
 * stores was measured slower than either. */
static int rc_stream(const float *out, const float *in, i64 R, i64 C)
{
    return nt_stream(out, in, R * C) && C % 8 == 0 && ((uintptr_t)out & 31) == 0;
}

/* Rows per step of the elementwise passes, a function of C: with wide rows the per-channel
 * constants (4 arrays of C floats in the backward) no longer sit in L1 beside the data, so a step
 * of RC_ER rows loads them once for all; but no more than RC_ER_SPAN bytes of each array per step
 * (512 x 2048: 4 rows of x, dy and dx are 12 streams a multiple of 4 KB apart, more than L1's
 * ways; 2 rows were faster). Narrow rows go one at a time: measured as fast or faster there (one
 * thread, 32x64x56x56 to 256x512x7x7 channels last), their constants stay in L1. */
#ifndef RC_ER
#define RC_ER 4
#endif
#ifndef RC_ER_SPAN
#define RC_ER_SPAN (16 * 1024)
#endif
#ifndef RC_ER_MIN_ROW
#define RC_ER_MIN_ROW 4096 /* bytes: narrower rows go one at a time */
#endif
static int rc_row_step(i64 C)
{
#ifdef RC_AVX
    i64 row = C * (i64)sizeof(float);
    return row < RC_ER_MIN_ROW ? 1 : row * RC_ER <= RC_ER_SPAN ? RC_ER : 2;
#else
    (void)C;
    return 1; /* the scalar loops reload nothing per row worth saving */
#endif
}

/* The scalar loop of rows_affine_k: channels [j, C) of nr rows (not inlined: gcc then warns of
 * overflows it imagines in the unrolled rows) */
static __attribute__((noinline)) void rows_affine_tail(const float *xr, float *o, const float *y,
                                                       int nr, i64 C, i64 j, const float *m,
                                                       const float *a, const float *b, int relu)
{
    for (int i = 0; i < nr; i++)
        for (i64 jj = j; jj < C; jj++) {
            i64 e = i * C + jj;
            if (m) {
                float v = fmaf(xr[e] - m[jj], a[jj], b[jj]);
                o[e] = relu ? rc_relu(v) : v;
            } else {
                o[e] = rc_grad(xr, y, e) * a[jj];
            }
        }
}

/* nr rows (a constant once inlined) from row pointer offset 0: o = (x - m) * a + b (relu'd when
 * relu), or o = x * a when m is NULL (x masked by y where y is not NULL); o may be x. */
static inline __attribute__((always_inline)) void rows_affine_k(
    const float *xr, float *o, const float *y, int nr, i64 C, const float *restrict m,
    const float *restrict a, const float *restrict b, int relu, int stream)
{
    i64 j = 0;
#ifdef RC_AVX
    /* all of a step's loads before its stores: with C * 4 a multiple of 4 KB a load from the next
     * row after a store to this one has the same address bits below 4 KB and waits for it */
    for (; j + 8 <= C; j += 8) {
        __m256 av = _mm256_loadu_ps(a + j), v[RC_ER];
        if (m) {
            __m256 mv = _mm256_loadu_ps(m + j), bv = _mm256_loadu_ps(b + j);
            for (int i = 0; i < nr; i++)
                v[i] = _mm256_loadu_ps(xr + i * C + j);
            for (int i = 0; i < nr; i++) {
                v[i] = _mm256_fmadd_ps(_mm256_sub_ps(v[i], mv), av, bv);
                v[i] = relu ? relu256(v[i]) : v[i];
            }
        } else {
            for (int i = 0; i < nr; i++)
                v[i] = _mm256_mul_ps(grad256(xr + i * C + j, y ? y + i * C + j : NULL), av);
        }
        st8_rows(o + j, v, nr, C, stream);
    }
#else
    (void)stream;
#endif
    if (j < C)
        rows_affine_tail(xr, o, y, nr, C, j, m, a, b, relu);
}

/* rows [r0, r1) of rows_affine_k, step (RC_ER or 2) at a time */
static inline __attribute__((always_inline)) void rows_affine_step(
    const float *x, float *out, const float *y, i64 r0, i64 r1, int step, i64 C, const float *m,
    const float *a, const float *b, int relu, int stream)
{
    i64 r = r0;
    for (; r + step <= r1; r += step)
        rows_affine_k(x + r * C, out + r * C, y ? y + r * C : NULL, step, C, m, a, b, relu,
                      stream);
    for (; r < r1; r++)
        rows_affine_k(x + r * C, out + r * C, y ? y + r * C : NULL, 1, C, m, a, b, relu, stream);
}

static inline __attribute__((always_inline)) void rows_affine(
    const float *x, float *out, const float *y, i64 r0, i64 r1, i64 C, const float *m,
    const float *a, const float *b, int relu, int stream)
{
    int step = rc_row_step(C);
    if (step == RC_ER)
        rows_affine_step(x, out, y, r0, r1, RC_ER, C, m, a, b, relu, stream);
    else if (step == 2)
        rows_affine_step(x, out, y, r0, r1, 2, C, m, a, b, relu, stream);
    else
        rows_affine_step(x, out, y, r0, r1, 1, C, m, a, b, relu, stream);
}

static void rows_affine_any(const float *x, float *out, const float *y, i64 r0, i64 r1, i64 C,
                            const float *m, const float *a, const float *b, int relu, int stream)
{
    if (relu)
        rows_affine(x, out, NULL, r0, r1, C, m, a, b, 1, stream);
    else if (y)
        rows_affine(x, out, y, r0, r1, C, m, a, b, 0, stream);
    else
        rows_affine(x, out, NULL, r0, r1, C, m, a, b, 0, stream);
}

/* The scalar loop of rows_dx_k: channels [j, C) of nr rows (not inlined, as rows_affine_tail) */
static __attribute__((noinline)) void rows_dx_tail(const float *xr, const float *g,
                                                   const float *y, float *o, int nr, i64 C, i64 j,
                                                   const float *m, const float *k, const float *c0,
                                                   const float *c1)
{
    for (int i = 0; i < nr; i++)
        for (i64 jj = j; jj < C; jj++) {
            i64 e = i * C + jj;
            o[e] = (rc_grad(g, y, e) * k[jj] - c0[jj]) - (xr[e] - m[jj]) * c1[jj];
        }
}

/* nr rows: dx = (dy * k - c0) - (x - m) * c1, dy masked by y where y is not NULL. */
static inline __attribute__((always_inline)) void rows_dx_k(
    const float *xr, const float *g, const float *y, float *o, int nr, i64 C,
    const float *restrict m, const float *restrict k, const float *restrict c0,
    const float *restrict c1, int stream)
{
    i64 j = 0;
#ifdef RC_AVX
    for (; j + 8 <= C; j += 8) { /* loads before stores, as in rows_affine_k */
        __m256 mv = _mm256_loadu_ps(m + j), kv = _mm256_loadu_ps(k + j);
        __m256 c0v = _mm256_loadu_ps(c0 + j), c1v = _mm256_loadu_ps(c1 + j), u[RC_ER], v[RC_ER];
        for (int i = 0; i < nr; i++) {
            i64 e = i * C + j;
            u[i] = grad256(g + e, y ? y + e : NULL);
            v[i] = _mm256_loadu_ps(xr + e);
        }
        for (int i = 0; i < nr; i++) {
            u[i] = _mm256_sub_ps(_mm256_mul_ps(u[i], kv), c0v);
            v[i] = _mm256_sub_ps(u[i], _mm256_mul_ps(_mm256_sub_ps(v[i], mv), c1v));
        }
        st8_rows(o + j, v, nr, C, stream);
    }
#else
    (void)stream;
#endif
    if (j < C)
        rows_dx_tail(xr, g, y, o, nr, C, j, m, k, c0, c1);
}

static inline __attribute__((always_inline)) void rows_dx_step(
    const float *x, const float *g, const float *y, float *o, i64 r0, i64 r1, int step, i64 C,
    const float *m, const float *k, const float *c0, const float *c1, int stream)
{
    i64 r = r0;
    for (; r + step <= r1; r += step)
        rows_dx_k(x + r * C, g + r * C, y ? y + r * C : NULL, o + r * C, step, C, m, k, c0, c1,
                  stream);
    for (; r < r1; r++)
        rows_dx_k(x + r * C, g + r * C, y ? y + r * C : NULL, o + r * C, 1, C, m, k, c0, c1,
                  stream);
}

static inline __attribute__((always_inline)) void rows_dx(
    const float *x, const float *g, const float *y, float *o, i64 r0, i64 r1, i64 C,
    const float *m, const float *k, const float *c0, const float *c1, int stream)
{
    int step = rc_row_step(C);
    if (step == RC_ER)
        rows_dx_step(x, g, y, o, r0, r1, RC_ER, C, m, k, c0, c1, stream);
    else if (step == 2)
        rows_dx_step(x, g, y, o, r0, r1, 2, C, m, k, c0, c1, stream);
    else
        rows_dx_step(x, g, y, o, r0, r1, 1, C, m, k, c0, c1, stream);
}

static void rows_dx_any(const float *x, const float *g, const float *y, float *o, i64 r0, i64 r1,
                        i64 C, const float *m, const float *k, const float *c0, const float *c1,
                        int stream)
{
    if (y)
        rows_dx(x, g, y, o, r0, r1, C, m, k, c0, c1, stream);
    else
        rows_dx(x, g, NULL, o, r0, r1, C, m, k, c0, c1, stream);
}

/* after a thread's last streaming store: the streamed lines are visible before the threads join */
void nt_fence(int stream)
{
#ifdef RC_AVX
    if (stream)
        _mm_sfence(); /* the streamed lines are visible before the threads join */
#else
    (void)stream;
#endif
}

/* The elementwise passes run after a reduction that read the same rows in ascending order, each
 * thread its static share (rc_tasks). So each thread takes its static share of the row tasks here
 * in descending order: the rows read last, still in the shared last-level cache, come first, and
 * fewer of them come from memory again (for data up to twice the cache, about half a pass).
 * [*lo, *hi) is the calling thread's share of ntask tasks. */
static void rc_share(i64 ntask, i64 *lo, i64 *hi)
{
#ifdef _OPENMP
    i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
    i64 nt = 1, id = 0;
#endif
    i64 per = ntask / nt, extra = ntask % nt;
    *lo = id * per + rc_min(id, extra);
    *hi = *lo + per + (id < extra);
}

/* out = (x - m) * a + b per channel (relu'd when relu), or out = x * a when m is NULL (x masked
 * by y where y is not NULL); out may be x */
static void rc_affine(const float *x, float *out, i64 R, i64 C, const float *m, const float *a,
                      const float *b, int relu, const float *y)
{
    i64 rows = rc_max(1, RC_ELEMWISE_CHUNK / C);
    i64 ntask = rc_ceil_div(R, rows);
    int stream = rc_stream(out, x, R, C);
#pragma omp parallel num_threads(rc_threads(R * C))
    {
        i64 lo, hi;
        rc_share(ntask, &lo, &hi);
        for (i64 t = hi - 1; t >= lo; t--) {
            i64 r1 = rc_min(R, (t + 1) * rows);
            rows_affine_any(x, out, y, t * rows, r1, C, m, a, b, relu, stream);
        }
        nt_fence(stream); /* once per thread: a fence per task stalls */
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* forward                                                                                         */

int rc_forward_train(const float *x, float *out, i64 R, i64 C, const float *scale,
                     const float *bias, float *run_mean, float *run_var, double eps,
                     double factor, float *savemean, float *saveinvvar, int relu)
{
    rc_plan p = rc_make_plan(R, C);
    double *pmean = malloc(sizeof(double) * (size_t)(p.P * C));
    double *pm2 = malloc(sizeof(double) * (size_t)(p.P * C));
    float *consts = malloc(sizeof(float) * (size_t)C * 2);
    if (!pmean || !pm2 || !consts) {
        free(pmean); free(pm2); free(consts);
        return -1;
    }
    stats_ctx ctx = {x, C, pmean, pm2};
    if (rc_tasks(&p, R, C, 3, stats_task, &ctx) != 0) {
        free(pmean); free(pm2); free(consts);
        return -1;
    }
    /* merge the parts in part order (every part but the last has PR rows), then finish each
     * channel as bn_cpu.c does */
    float *mean32 = consts, *a32 = consts + C;
    double wb[RC_MAX_PARTS], wab[RC_MAX_PARTS], nbs[RC_MAX_PARTS], na = 0.0;
    for (i64 part = 0; part < p.P; part++) {
        double nb = (double)(rc_min(R, (part + 1) * p.PR) - part * p.PR), n = na + nb;
        nbs[part] = nb;
        wb[part] = nb / n;
        wab[part] = na * (nb / n);
        na = n;
    }
    i64 nblk = rc_ceil_div(C, RC_MERGE_BLOCK);
#pragma omp parallel for schedule(static) num_threads(rc_channel_threads(R, C * (p.P + 4)))
    for (i64 blk = 0; blk < nblk; blk++) {
        i64 c0 = blk * RC_MERGE_BLOCK, n = rc_min(RC_MERGE_BLOCK, C - c0);
        double bmean[RC_MERGE_BLOCK], bm2[RC_MERGE_BLOCK];
        for (i64 i = 0; i < n; i++)
            bmean[i] = bm2[i] = 0.0;
        for (i64 part = 0; part < p.P; part++) { /* part order, each channel as alone */
            const double *qm = pmean + part * C + c0, *q2 = pm2 + part * C + c0;
            for (i64 i = 0; i < n; i++) {
                double d = qm[i] - bmean[i];
                bmean[i] += d * wb[part];
                bm2[i] += q2[i] + d * d * wab[part];
            }
        }
        for (i64 i = 0; i < n; i++) {
            /* the plain sum, needed only where the merge gave NaN: Chan's formula does wherever
             * an infinite part mean meets another part (Inf - Inf) */
            double total = 0.0;
            if (isnan(bmean[i]))
                for (i64 part = 0; part < p.P; part++)
                    total += pmean[part * C + c0 + i] * nbs[part];
            bn_finish_channel(c0 + i, bmean[i], bm2[i] / (double)R, total, (double)R, scale, eps,
                              factor, mean32, a32, savemean, saveinvvar, run_mean, run_var);
        }
    }
    free(pmean);
    free(pm2);
    rc_affine(x, out, R, C, mean32, a32, bias, relu, NULL);
    free(consts);
    return 0;
}

/* out = (x - m) * a + b (m NULL: out = x * a) with a = scale * invstd(run_var): frozen statistics;
 * relu and y as in rc_affine */
static int rc_frozen(const float *x, float *out, i64 R, i64 C, const float *scale,
                     const float *run_var, double eps, const float *m, const float *b, int relu,
                     const float *y)
{
    float *a32 = malloc(sizeof(float) * (size_t)C);
    if (!a32)
        return -1;
#pragma omp parallel for schedule(static) num_threads(rc_channel_threads(R, 4 * C))
    for (i64 c = 0; c < C; c++)
        a32[c] = bn_affine_factor(scale[c], run_var[c], eps);
    rc_affine(x, out, R, C, m, a32, b, relu, y);
    free(a32);
    return 0;
}

int rc_forward_infer(const float *x, float *out, i64 R, i64 C, const float *scale,
                     const float *bias, const float *run_mean, const float *run_var, double eps,
                     int relu)
{
    return rc_frozen(x, out, R, C, scale, run_var, eps, run_mean, bias, relu, NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* backward                                                                                        */

/* sum(dy), sum(dy * (x - m)) and sum(x - m) of channels [0, w) over rows [r0, r1) into s1[], s2[],
 * s3[] */
static void part_sums(const float *x, const float *dy, const float *y, i64 C, i64 r0, i64 r1,
                      i64 w, const float *m, double *restrict s1, double *restrict s2,
                      double *restrict s3)
{
    for (i64 j = 0; j < w; j++)
        s1[j] = s2[j] = s3[j] = 0.0;
    if (y)
        for (i64 rb = r0; rb < r1; rb += RC_RB_DY)
            block_sums(x, dy, y, C, rb, rc_min(rb + RC_RB_DY, r1), w, m, s1, s2, s3);
    else
        for (i64 rb = r0; rb < r1; rb += RC_RB_DY)
            block_sums(x, dy, NULL, C, rb, rc_min(rb + RC_RB_DY, r1), w, m, s1, s2, s3);
}

typedef struct {
    const float *x, *dy, *y, *m;
    i64 C;
    double *s1, *s2, *s3;
} sums_ctx;

static void sums_task(void *ctx, i64 part, i64 c0, i64 w, i64 r0, i64 r1, double *ws)
{
    const sums_ctx *k = ctx;
    i64 o = part * k->C + c0;
    (void)ws;
    part_sums(k->x + c0, k->dy + c0, k->y ? k->y + c0 : NULL, k->C, r0, r1, w, k->m + c0,
              k->s1 + o, k->s2 + o, k->s3 + o);
}

/* A rounding-level correction term, or 0 where it is not finite (bn_cpu.c's rule: with an Inf in
 * dy the result is PyTorch's formula without it, not Inf - Inf = NaN). */
static double rc_correction(double v)
{
    return v - v == 0.0 ? v : 0.0;
}

int rc_backward_train(const float *x, const float *dy, float *dx, i64 R, i64 C,
                      const float *scale, const float *savemean, const float *saveinvvar,
                      float *dscale, float *dbias, const float *y)
{
    rc_plan p = rc_make_plan(R, C);
    double *ps = malloc(sizeof(double) * 3 * (size_t)(p.P * C));
    float *consts = malloc(sizeof(float) * (size_t)C * 3);
    if (!ps || !consts) {
        free(ps); free(consts);
        return -1;
    }
    sums_ctx ctx = {x, dy, y, savemean, C, ps, ps + p.P * C, ps + 2 * p.P * C};
    if (rc_tasks(&p, R, C, 1, sums_task, &ctx) != 0) {
        free(ps); free(consts);
        return -1;
    }
    const double *ps1 = ctx.s1, *ps2 = ctx.s2, *ps3 = ctx.s3;
    /* bn_cpu.c's float64 steps: r = sum(x - mean) / m, the exact mean's offset from savemean;
     * gs = (sum(dy (x - mean)) - r sum(dy)) * invstd, k = scale * invstd,
     * c1 = k * invstd * gs / m, c0 = k * gb / m - r * c1 */
    float *k32 = consts, *c032 = consts + C, *c132 = consts + 2 * C;
    i64 nblk = rc_ceil_div(C, RC_MERGE_BLOCK);
#pragma omp parallel for schedule(static) num_threads(rc_channel_threads(R, C * (p.P + 4)))
    for (i64 blk = 0; blk < nblk; blk++) {
        i64 c0 = blk * RC_MERGE_BLOCK, n = rc_min(RC_MERGE_BLOCK, C - c0);
        double b1[RC_MERGE_BLOCK], b2[RC_MERGE_BLOCK], b3[RC_MERGE_BLOCK];
        for (i64 i = 0; i < n; i++)
            b1[i] = b2[i] = b3[i] = 0.0;
        for (i64 part = 0; part < p.P; part++) { /* part order, each channel as alone */
            const double *q1 = ps1 + part * C + c0, *q2 = ps2 + part * C + c0;
            const double *q3 = ps3 + part * C + c0;
            for (i64 i = 0; i < n; i++) {
                b1[i] += q1[i];
                b2[i] += q2[i];
                b3[i] += q3[i];
            }
        }
        for (i64 i = 0; i < n; i++) {
            i64 c = c0 + i;
            double sdy = b1[i], sdyx = b2[i], sxm = b3[i];
            double inv = (double)saveinvvar[c], fm = (double)R, r = sxm / fm;
            double gs = (sdyx - rc_correction(r * sdy)) * inv, k = (double)scale[c] * inv;
            double c1 = k * inv * gs / fm;
            dbias[c] = (float)sdy;
            dscale[c] = (float)gs;
            k32[c] = (float)k;
            c132[c] = (float)c1;
            c032[c] = (float)(k * sdy / fm - rc_correction(r * c1));
        }
    }
    free(ps);
    if (dx != NULL) {
        i64 rows = rc_max(1, RC_ELEMWISE_CHUNK / C);
        i64 ntask2 = rc_ceil_div(R, rows);
        int stream = rc_stream(dx, NULL, R, C);
#pragma omp parallel num_threads(rc_threads(R * C))
        {
            i64 lo, hi;
            rc_share(ntask2, &lo, &hi); /* descending, as in rc_affine */
            for (i64 t = hi - 1; t >= lo; t--) {
                i64 r1 = rc_min(R, (t + 1) * rows);
                rows_dx_any(x, dy, y, dx, t * rows, r1, C, savemean, k32, c032, c132, stream);
            }
            nt_fence(stream);
        }
    }
    free(consts);
    return 0;
}

/* dx = dy * k per channel, k = scale * invstd(run_var), dy masked by the forward's output y if not
 * NULL */
int rc_backward_infer(const float *dy, float *dx, i64 R, i64 C, const float *scale,
                      const float *run_var, double eps, const float *y)
{
    return rc_frozen(dy, dx, R, C, scale, run_var, eps, NULL, NULL, 0, y);
}
