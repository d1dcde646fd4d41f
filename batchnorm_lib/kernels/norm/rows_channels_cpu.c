/* Batch normalization of rows x channels data on the CPU: float32 (R, C), C-contiguous rows.
 *
 * BatchNorm on (N, C) and every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C))
 * are one problem: statistics per channel down R rows of C contiguous channels. Built into the
 * same shared library as bn_cpu.c by cpu_native.py (same flags: -O3 -ffp-contract=off, and
 * -march=native / -fopenmp where they work) and called through ctypes.
 *
 * Work split. The rows are cut into row parts by the shape alone (at most RC_MAX_PARTS, each of
 * at least RC_PART_ELEMS elements); a reduction task is one row part times one chunk of at most
 * RC_CHUNK channels, and the OpenMP threads share the tasks. Inside a task the rows go by in tiles
 * of B rows (B x chunk floats stay in L2): the first pass over a tile streams it from memory row by
 * row, the second re-reads it from cache. The parts are merged per channel in part order, so the
 * results depend on the shape only: bitwise the same for every thread count.
 *
 * SIMD across channels: every inner loop runs along the channels with unit stride over
 * restrict-qualified arrays, the form gcc and clang vectorize at -O3 (with -march=native, at the
 * widest vector width the CPU has); per-channel constants are expanded once per call into arrays.
 *
 * Numerics, as in bn_cpu.c: a tile's statistics are a corrected two-pass around the tile's rough
 * mean, the deviations summed in float registers over blocks of RC_RB rows and then in double, so
 * no float rounding grows with the rows; tiles and parts merge with Chan's formula in double. The
 * per-channel constants are computed in float64 and rounded once; the backward also sums
 * x - savemean, the float32 mean's offset from the exact one, and corrects the gradients for it.
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
#define RC_STREAM 1 /* 32-byte non-temporal stores */
#endif

typedef int64_t i64;

int bn_get_num_threads(void); /* bn_cpu.c, same library */

#ifndef RC_FBLOCK
#define RC_FBLOCK 64                  /* rows per tile, at most (its rough mean is a float sum) */
#endif
#ifndef RC_CHUNK
#define RC_CHUNK 1024                 /* channels per reduction task */
#endif
#ifndef RC_TILE_BYTES
#define RC_TILE_BYTES (128 * 1024)    /* a tile of rows x chunk, re-read from cache */
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

/* 8 floats as one vector (GCC/clang vector extension: one AVX register, two SSE ones); the
 * unaligned type loads and stores rows at any offset */
typedef float rc_vf __attribute__((vector_size(32)));
typedef float rc_vfu __attribute__((vector_size(32), aligned(4), may_alias));
static inline rc_vf vld(const float *p) { return *(const rc_vfu *)p; }
static inline void vst(float *p, rc_vf v) { *(rc_vfu *)p = v; }

/* 4 doubles: the double lanes the register sums are added into */
typedef double rc_vd __attribute__((vector_size(32)));
typedef double rc_vdu __attribute__((vector_size(32), aligned(8), may_alias));
static inline rc_vd vldd(const double *p) { return *(const rc_vdu *)p; }
static inline rc_vd lo_d(rc_vf v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), rc_vd); }
static inline rc_vd hi_d(rc_vf v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), rc_vd); }
static inline void vstd(double *p, rc_vd v) { *(rc_vdu *)p = v; }

/* The fused relu and its gradient mask, on the bits: v <= 0 is false for NaN, so NaN stays, and
 * -0 becomes +0. */
typedef int32_t rc_vi __attribute__((vector_size(32)));
static inline rc_vf zero_where_le0(rc_vf v, rc_vf test)
{
    const rc_vf zero = {0};
    return (rc_vf)((rc_vi)v & ~(rc_vi)(test <= zero));
}
static inline float rc_relu(float v) { return v <= 0.0f ? 0.0f : v; }
/* dy[i] masked by the forward's output y (y NULL: dy as is) */
static inline float rc_grad(const float *dy, const float *y, i64 i)
{
    return y && y[i] <= 0.0f ? 0.0f : dy[i];
}
static inline rc_vf rc_vgrad(const float *dy, const float *y, i64 i)
{
    return y ? zero_where_le0(vld(dy + i), vld(y + i)) : vld(dy + i);
}

/* acc[0..16) += the 16 floats of (a, b), in double */
static inline void flush16(double *acc, rc_vf a, rc_vf b)
{
    vstd(acc, vldd(acc) + lo_d(a));
    vstd(acc + 4, vldd(acc + 4) + hi_d(a));
    vstd(acc + 8, vldd(acc + 8) + lo_d(b));
    vstd(acc + 12, vldd(acc + 12) + hi_d(b));
}

#define RC_RB 8 /* rows per register block of the reductions (sequential streams, within L1's ways) */

static i64 rc_min(i64 a, i64 b) { return a < b ? a : b; }
static i64 rc_max(i64 a, i64 b) { return a > b ? a : b; }
static i64 rc_ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

static int rc_threads(i64 total)
{
    return total < RC_SERIAL_BELOW ? 1 : bn_get_num_threads();
}

/* The reduction's decomposition; a function of (R, C) only. */
typedef struct {
    i64 W, nchunk;   /* channels per chunk, chunks */
    i64 B;           /* rows per tile */
    i64 P, PR;       /* row parts, rows per part */
} rc_plan;

static rc_plan rc_make_plan(i64 R, i64 C)
{
    rc_plan p;
    p.W = rc_min(C, RC_CHUNK);
    p.nchunk = rc_ceil_div(C, p.W);
    p.B = rc_max(1, rc_min(RC_FBLOCK, RC_TILE_BYTES / ((i64)sizeof(float) * p.W)));
    i64 parts = rc_min(R * C / RC_PART_ELEMS, R / RC_MIN_PART_ROWS);
    parts = rc_max(1, rc_min(parts, RC_MAX_PARTS));
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

/* Over rows [rb, re) (at most RC_RB: sequential streams, and rows a multiple of 4 KB apart share L1
 * sets, so RC_RB of them stay within its ways), with t = x - c[j] in float32:
 *   dy NULL: f1[j] += sum(t), f2[j] += sum(t * t)
 *   else:    f1[j] += sum(dy), f2[j] += sum(dy * t), f3[j] += sum(t), dy masked by y if not NULL
 16 channels held in float registers while the rows go by (at most RC_RB terms: exact enough,
 * the terms are deviations from a nearby shift), then added into double. Inlined, so each caller
 * gets its own loop. */
static inline __attribute__((always_inline)) void block_sums(const float *x, const float *dy,
                                                             const float *y, i64 C, i64 rb, i64 re,
                                                             i64 w, const float *c, double *f1,
                                                             double *f2, double *f3)
{
    i64 j = 0;
    for (; j + 16 <= w; j += 16) {
        rc_vf c0 = vld(c + j), c1 = vld(c + j + 8);
        rc_vf a0 = {0}, a1 = {0}, q0 = {0}, q1 = {0}, e0 = {0}, e1 = {0};
        for (i64 r = rb; r < re; r++) {
            const float *xr = x + r * C + j;
            rc_vf t0 = vld(xr) - c0, t1 = vld(xr + 8) - c1;
            rc_vf u0 = dy ? rc_vgrad(dy, y, r * C + j) : t0;
            rc_vf u1 = dy ? rc_vgrad(dy, y, r * C + j + 8) : t1;
            a0 += u0;
            q0 += u0 * t0;
            a1 += u1;
            q1 += u1 * t1;
            if (dy) {
                e0 += t0;
                e1 += t1;
            }
        }
        flush16(f1 + j, a0, a1);
        flush16(f2 + j, q0, q1);
        if (dy)
            flush16(f3 + j, e0, e1);
    }
    for (; j < w; j++) {
        for (i64 r = rb; r < re; r++) {
            double t = (double)(x[r * C + j] - c[j]);
            double u = dy ? (double)rc_grad(dy, y, r * C + j) : t;
            f1[j] += u;
            f2[j] += u * t;
            if (dy)
                f3[j] += t;
        }
    }
}

/* Mean and M2 of channels [0, w) of rows [r0, r1) (row r at x + r * C) into mean[], m2[]; ws holds
 * 3 * w doubles. Chan-merges tile after tile in row order. */
static void part_stats(const float *x, i64 C, i64 r0, i64 r1, i64 w, i64 B, double *restrict mean,
                       double *restrict m2, double *ws)
{
    double *restrict f1 = ws, *restrict f2 = ws + w;
    float *restrict sum = (float *)(ws + 2 * w);
    double na = 0.0;
    for (i64 j = 0; j < w; j++)
        mean[j] = m2[j] = 0.0;
    for (i64 t0 = r0; t0 < r1; t0 += B) {
        i64 t1 = rc_min(t0 + B, r1);
        double nb = (double)(t1 - t0);
        /* pass 1, from memory row by row: the tile's rough mean, the shift of pass 2 */
        memcpy(sum, x + t0 * C, sizeof(float) * (size_t)w);
        for (i64 r = t0 + 1; r < t1; r++) {
            const float *restrict row = x + r * C;
            for (i64 j = 0; j < w; j++)
                sum[j] += row[j];
        }
        float inv_nb = (float)(1.0 / nb);
        for (i64 j = 0; j < w; j++)
            sum[j] *= inv_nb; /* now the shift */
        /* pass 2, from cache: sums of deviations from the shift */
        for (i64 j = 0; j < w; j++)
            f1[j] = f2[j] = 0.0;
        for (i64 rb = t0; rb < t1; rb += RC_RB)
            block_sums(x, NULL, NULL, C, rb, rc_min(rb + RC_RB, t1), w, sum, f1, f2, NULL);
        /* the tile's (mean, M2), merged into the part's (Chan; the weights are per tile) */
        double n = na + nb, wb = nb / n, wab = na * wb;
        for (i64 j = 0; j < w; j++) {
            double s1 = f1[j], dm = s1 / nb;
            double tm = (double)sum[j] + dm;
            double tm2 = f2[j] - s1 * dm;
            tm2 = tm2 > 0.0 ? tm2 : 0.0;
            double d = tm - mean[j];
            mean[j] += d * wb;
            m2[j] += tm2 + d * d * wab;
        }
        na = n;
    }
}

typedef struct {
    const float *x;
    i64 C, B;
    double *pmean, *pm2;
} stats_ctx;

static void stats_task(void *ctx, i64 part, i64 c0, i64 w, i64 r0, i64 r1, double *ws)
{
    const stats_ctx *k = ctx;
    i64 o = part * k->C + c0;
    part_stats(k->x + c0, k->C, r0, r1, w, k->B, k->pmean + o, k->pm2 + o, ws);
}

/* scale / sqrt(var + eps) in float64, rounded once */
static float affine_f32(float scale, double var, double eps)
{
    return (float)((double)scale / sqrt(var + eps));
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
#ifdef RC_STREAM
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

/* First index of a row from which o + j is 32-byte aligned (when streaming; else the row's end,
 * the vector loop below then does nothing). */
static i64 rc_peel(const float *o, i64 C, int stream)
{
    if (!stream)
        return C;
    i64 mis = (i64)(((uintptr_t)o & 31) / sizeof(float));
    return rc_min(C, mis ? 8 - mis : 0);
}

#ifdef RC_STREAM
/* v <= 0 ? 0 : v, ordered compare: NaN stays */
static inline __m256 relu256(__m256 v)
{
    return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LE_OQ), v);
}
#endif

/* One row: o = (x - m) * a + b (relu'd when relu), or o = x * a when m is NULL (x masked by y
 * where y is not NULL); o may be x. Inlined with constant flags: each variant is its own loop. */
static inline __attribute__((always_inline)) void row_affine_k(
    const float *xr, float *o, i64 C, const float *restrict m, const float *restrict a,
    const float *restrict b, int relu, const float *y, int stream)
{
    i64 j = 0, head = rc_peel(o, C, stream);
    if (m) {
        for (; j < head; j++) {
            float v = fmaf(xr[j] - m[j], a[j], b[j]);
            o[j] = relu ? rc_relu(v) : v;
        }
#ifdef RC_STREAM
        for (; stream && j + 8 <= C; j += 8) {
            __m256 v = _mm256_sub_ps(_mm256_loadu_ps(xr + j), _mm256_loadu_ps(m + j));
            v = _mm256_fmadd_ps(v, _mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
            _mm256_stream_ps(o + j, relu ? relu256(v) : v);
        }
#endif
        for (; j < C; j++) {
            float v = fmaf(xr[j] - m[j], a[j], b[j]);
            o[j] = relu ? rc_relu(v) : v;
        }
    } else {
        for (; j < head; j++)
            o[j] = rc_grad(xr, y, j) * a[j];
#ifdef RC_STREAM
        for (; stream && j + 8 <= C; j += 8) {
            __m256 g = _mm256_loadu_ps(xr + j);
            if (y)
                g = _mm256_andnot_ps(_mm256_cmp_ps(_mm256_loadu_ps(y + j), _mm256_setzero_ps(),
                                                   _CMP_LE_OQ), g);
            _mm256_stream_ps(o + j, _mm256_mul_ps(g, _mm256_loadu_ps(a + j)));
        }
#endif
        for (; j < C; j++)
            o[j] = rc_grad(xr, y, j) * a[j];
    }
}

static void row_affine(const float *xr, float *o, i64 C, const float *m, const float *a,
                       const float *b, int relu, const float *y, int stream)
{
    if (relu)
        row_affine_k(xr, o, C, m, a, b, 1, NULL, stream);
    else if (y)
        row_affine_k(xr, o, C, m, a, b, 0, y, stream);
    else
        row_affine_k(xr, o, C, m, a, b, 0, NULL, stream);
}

/* One row: dx = (dy * k - c0) - (x - m) * c1, dy masked by y where y is not NULL. */
static inline __attribute__((always_inline)) void row_dx_k(
    const float *restrict xr, const float *restrict g, const float *restrict y, float *restrict o,
    i64 C, const float *restrict m, const float *restrict k, const float *restrict c0,
    const float *restrict c1, int stream)
{
    i64 j = 0, head = rc_peel(o, C, stream);
    for (; j < head; j++)
        o[j] = (rc_grad(g, y, j) * k[j] - c0[j]) - (xr[j] - m[j]) * c1[j];
#ifdef RC_STREAM
    for (; stream && j + 8 <= C; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        if (y)
            gv = _mm256_andnot_ps(_mm256_cmp_ps(_mm256_loadu_ps(y + j), _mm256_setzero_ps(),
                                                _CMP_LE_OQ), gv);
        __m256 u = _mm256_sub_ps(_mm256_mul_ps(gv, _mm256_loadu_ps(k + j)),
                                 _mm256_loadu_ps(c0 + j));
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), _mm256_loadu_ps(m + j)),
                                 _mm256_loadu_ps(c1 + j));
        _mm256_stream_ps(o + j, _mm256_sub_ps(u, v));
    }
#endif
    for (; j < C; j++)
        o[j] = (rc_grad(g, y, j) * k[j] - c0[j]) - (xr[j] - m[j]) * c1[j];
}

static void row_dx(const float *xr, const float *g, const float *y, float *o, i64 C,
                   const float *m, const float *k, const float *c0, const float *c1, int stream)
{
    if (y)
        row_dx_k(xr, g, y, o, C, m, k, c0, c1, stream);
    else
        row_dx_k(xr, g, NULL, o, C, m, k, c0, c1, stream);
}

/* after a thread's last streaming store: the streamed lines are visible before the threads join */
void nt_fence(int stream)
{
#ifdef RC_STREAM
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
            for (i64 r = t * rows; r < r1; r++)
                row_affine(x + r * C, out + r * C, C, m, a, b, relu, y ? y + r * C : NULL,
                           stream);
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
    stats_ctx ctx = {x, C, p.B, pmean, pm2};
    if (rc_tasks(&p, R, C, 3, stats_task, &ctx) != 0) {
        free(pmean); free(pm2); free(consts);
        return -1;
    }
    /* merge the parts in part order (every part but the last has PR rows), then the per-channel
     * constants in bn_cpu.c's steps */
    float *mean32 = consts, *a32 = consts + C;
    double wb[RC_MAX_PARTS], wab[RC_MAX_PARTS], na = 0.0;
    for (i64 part = 0; part < p.P; part++) {
        double nb = (double)(rc_min(R, (part + 1) * p.PR) - part * p.PR), n = na + nb;
        wb[part] = nb / n;
        wab[part] = na * (nb / n);
        na = n;
    }
    double keep = 1.0 - factor;
    double unbias = (double)R / (double)(R - 1);
    for (i64 c = 0; c < C; c++) {
        double mean = 0.0, m2 = 0.0;
        for (i64 part = 0; part < p.P; part++) {
            double d = pmean[part * C + c] - mean;
            mean += d * wb[part];
            m2 += pm2[part * C + c] + d * d * wab[part];
        }
        double var = m2 / (double)R;
        mean32[c] = (float)mean;
        a32[c] = affine_f32(scale[c], var, eps);
        savemean[c] = (float)mean;
        saveinvvar[c] = (float)(1.0 / sqrt(var + eps));
        run_mean[c] = (float)(keep * run_mean[c] + factor * mean);
        run_var[c] = (float)(keep * run_var[c] + factor * (var * unbias));
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
    for (i64 c = 0; c < C; c++)
        a32[c] = affine_f32(scale[c], run_var[c], eps);
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
        for (i64 rb = r0; rb < r1; rb += RC_RB)
            block_sums(x, dy, y, C, rb, rc_min(rb + RC_RB, r1), w, m, s1, s2, s3);
    else
        for (i64 rb = r0; rb < r1; rb += RC_RB)
            block_sums(x, dy, NULL, C, rb, rc_min(rb + RC_RB, r1), w, m, s1, s2, s3);
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
    for (i64 c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0, sxm = 0.0;
        for (i64 part = 0; part < p.P; part++) {
            sdy += ps1[part * C + c];
            sdyx += ps2[part * C + c];
            sxm += ps3[part * C + c];
        }
        double inv = (double)saveinvvar[c], fm = (double)R, r = sxm / fm;
        double gs = (sdyx - rc_correction(r * sdy)) * inv, k = (double)scale[c] * inv;
        double c1 = k * inv * gs / fm;
        dbias[c] = (float)sdy;
        dscale[c] = (float)gs;
        k32[c] = (float)k;
        c132[c] = (float)c1;
        c032[c] = (float)(k * sdy / fm - rc_correction(r * c1));
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
                for (i64 r = t * rows; r < r1; r++)
                    row_dx(x + r * C, dy + r * C, y ? y + r * C : NULL, dx + r * C, C, savemean,
                           k32, c032, c132, stream);
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
