/* Normalization per contiguous row on the CPU (pattern (a): LayerNorm, InstanceNorm2D,
 * GroupNorm): float32 data of R rows x L values, C-contiguous.
 *
 * Built into the same library as bn_cpu.c (kernels/norm/cpu_native.py) and called through ctypes;
 * the thread count is bn_cpu.c's.
 *
 * A row is split into L / S channels of S values; row r uses the per-channel scale and bias
 * entries (r % G) * (L / S) + j / S (LayerNorm: G = S = 1, so entry j; InstanceNorm2D: G = C,
 * one channel per row; GroupNorm: G groups of C / G channels of S positions).
 *
 * Rows are what one thread works on: a row is read from memory once and re-read from cache
 * (rows here are at most a few tens of KB), so training forward moves 8 bytes per element and
 * backward 12. Statistics are a two-pass per row: the mean, then the sums of (x - c) and
 * (x - c)^2 around its float32 rounding c (mean = c + s1 / L, M2 = s2 - s1^2 / L). Sums run in
 * float over at most BLOCK_FLOATS values per lane and go into double from there, lanes folded in
 * a fixed order, so a row's results do not depend on the thread count or the machine's vector
 * width. Outputs larger than the caches go out with non-temporal stores (bn_cpu.c's rule), which
 * saves the read of each written line: the forward moves 8 bytes per element, not 12. Parameter
 * gradients are merged in double in a fixed order (per row when a row holds
 * whole channels of S > 1 values, per fixed block of rows for S = 1), so backward is bitwise
 * repeatable too. Elementwise formulas are evaluated in float32 in the order cpu_numpy.py uses:
 *   forward:  out = (x - mean) * a + bias,            a = scale * invstd
 *   backward: dx  = (dy * k - c0) - (x - mean) * c1,  k = scale * invstd
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX__)
#include <immintrin.h>
#define PR_STREAM 1 /* non-temporal stores of large outputs */
#endif

typedef int64_t i64;

#define RLANES 16
#ifndef BLOCK_FLOATS
#define BLOCK_FLOATS 1024                /* float terms per lane block before they go into double */
#endif
#ifndef ROW_TASKS
#define ROW_TASKS 16                     /* row blocks (at most) of the S = 1 gradient partials */
#endif
#ifndef TASK_ROWS
#define TASK_ROWS 32                     /* rows (at least) per such block, unless fewer in all */
#endif
#ifndef ROWS_SERIAL_BELOW
#define ROWS_SERIAL_BELOW (64 * 1024)    /* elements: smaller tensors run on one thread */
#endif

/* 8-float vectors, two per step: wider generic vectors go through the stack on AVX2 machines */
typedef float rvf __attribute__((vector_size(8 * sizeof(float))));
typedef float rvfu __attribute__((vector_size(8 * sizeof(float)), aligned(4), may_alias));

static inline rvf rld(const float *p) { return *(const rvfu *)p; }
static inline void rst(float *p, rvf v) { *(rvfu *)p = v; }
static inline rvf rsplat(float v) { rvf r = {v, v, v, v, v, v, v, v}; return r; }

int bn_get_num_threads(void);

static int rows_threads(i64 total)
{
    return total < ROWS_SERIAL_BELOW ? 1 : bn_get_num_threads();
}

/* Outputs of at least the library's streaming threshold (nt_stream(), rows_channels_cpu.c) not
 * written in place go out with non-temporal stores, as in bn_cpu.c: such an output leaves the caches before
 * anyone reads it, and a normal store first reads the line it writes. Whole 64-byte lines only:
 * a run's head up to the first line boundary and its tail are stored normally. */
int nt_stream(const float *out, const float *in, i64 n); /* rows_channels_cpu.c */
void nt_fence(int stream);

static inline void pr_put(float *o, rvf v, int stream)
{
#ifdef PR_STREAM
    if (stream) {
        _mm256_stream_ps(o, (__m256)v);
        return;
    }
#endif
    (void)stream;
    rst(o, v);
}

/* first index of o + j on a 64-byte line boundary when streaming (at most n), else 0 */
static inline i64 pr_head(const float *o, i64 n, int stream)
{
    i64 h = stream ? (i64)(((64 - ((uintptr_t)o & 63)) & 63) / sizeof(float)) : 0;
    return h < n ? h : n;
}

/* o = (x - m) * a_j + b_j over n values, in float32 without fused multiply-adds; per value
 * (lanes: a_j = sc[j] * inv, b_j = bi[j]) or one a, b for the run. Inlined with constant flags. */
static inline __attribute__((always_inline)) void pr_affine(const float *x, float *o, i64 n,
                                                           float m, const float *sc,
                                                           const float *bi, float inv, float a,
                                                           float b, int lanes, int stream)
{
    i64 j = 0, h = pr_head(o, n, stream);
    for (; j < h; j++)
        o[j] = (x[j] - m) * (lanes ? sc[j] * inv : a) + (lanes ? bi[j] : b);
    for (; j + 8 <= n; j += 8) {
        rvf v = (rld(x + j) - m) * (lanes ? rld(sc + j) * inv : rsplat(a)) +
                (lanes ? rld(bi + j) : rsplat(b));
        pr_put(o + j, v, stream);
    }
    for (; j < n; j++)
        o[j] = (x[j] - m) * (lanes ? sc[j] * inv : a) + (lanes ? bi[j] : b);
}

/* dx = (dy * k_j - c0) - (x - m) * c1 over n values, k_j = sc[j] * inv (lanes) or k */
static inline __attribute__((always_inline)) void pr_dx(const float *x, const float *dy,
                                                       float *o, i64 n, float m, const float *sc,
                                                       float inv, float k, float c0, float c1,
                                                       int lanes, int stream)
{
    i64 j = 0, h = pr_head(o, n, stream);
    for (; j < h; j++)
        o[j] = (dy[j] * (lanes ? sc[j] * inv : k) - c0) - (x[j] - m) * c1;
    for (; j + 8 <= n; j += 8) {
        rvf v = (rld(dy + j) * (lanes ? rld(sc + j) * inv : rsplat(k)) - c0) - (rld(x + j) - m) * c1;
        pr_put(o + j, v, stream);
    }
    for (; j < n; j++)
        o[j] = (dy[j] * (lanes ? sc[j] * inv : k) - c0) - (x[j] - m) * c1;
}

static void affine_run(const float *x, float *o, i64 n, float m, const float *sc,
                       const float *bi, float inv, float a, float b, int lanes, int stream)
{
    if (lanes)
        stream ? pr_affine(x, o, n, m, sc, bi, inv, a, b, 1, 1)
               : pr_affine(x, o, n, m, sc, bi, inv, a, b, 1, 0);
    else
        stream ? pr_affine(x, o, n, m, sc, bi, inv, a, b, 0, 1)
               : pr_affine(x, o, n, m, sc, bi, inv, a, b, 0, 0);
}

static void dx_run(const float *x, const float *dy, float *o, i64 n, float m, const float *sc,
                   float inv, float k, float c0, float c1, int lanes, int stream)
{
    if (lanes)
        stream ? pr_dx(x, dy, o, n, m, sc, inv, k, c0, c1, 1, 1)
               : pr_dx(x, dy, o, n, m, sc, inv, k, c0, c1, 1, 0);
    else
        stream ? pr_dx(x, dy, o, n, m, sc, inv, k, c0, c1, 0, 1)
               : pr_dx(x, dy, o, n, m, sc, inv, k, c0, c1, 0, 0);
}

static inline double fold(rvf v0, rvf v1)
{
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += (double)v0[k];
    for (int k = 0; k < 8; k++)
        s += (double)v1[k];
    return s;
}

/* sum(x[0..n)) */
static double sum1(const float *x, i64 n)
{
    double tot = 0.0;
    i64 j = 0;
    while (j + RLANES <= n) {
        i64 lim = j + BLOCK_FLOATS < n ? j + BLOCK_FLOATS : n;
        rvf a0 = {0}, a1 = {0};
        for (; j + RLANES <= lim; j += RLANES) {
            a0 += rld(x + j);
            a1 += rld(x + j + 8);
        }
        tot += fold(a0, a1);
    }
    for (; j < n; j++)
        tot += (double)x[j];
    return tot;
}

/* s1 = sum(x - c), s2 = sum((x - c)^2) */
static void centered(const float *x, i64 n, float c, double *s1, double *s2)
{
    double t1 = 0.0, t2 = 0.0;
    i64 j = 0;
    while (j + RLANES <= n) {
        i64 lim = j + BLOCK_FLOATS < n ? j + BLOCK_FLOATS : n;
        rvf a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};
        for (; j + RLANES <= lim; j += RLANES) {
            rvf d = rld(x + j) - c, e = rld(x + j + 8) - c;
            a1 += d;
            a2 += d * d;
            b1 += e;
            b2 += e * e;
        }
        t1 += fold(a1, b1);
        t2 += fold(a2, b2);
    }
    for (; j < n; j++) {
        float d = x[j] - c;
        t1 += (double)d;
        t2 += (double)(d * d);
    }
    *s1 = t1;
    *s2 = t2;
}

/* sdy = sum(dy), sdx = sum(dy * (x - m)) over n values */
static void grad_sums(const float *x, const float *dy, i64 n, float m, double *sdy, double *sdx)
{
    double t1 = 0.0, t2 = 0.0;
    i64 j = 0;
    while (j + RLANES <= n) {
        i64 lim = j + BLOCK_FLOATS < n ? j + BLOCK_FLOATS : n;
        rvf a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};
        for (; j + RLANES <= lim; j += RLANES) {
            rvf g = rld(dy + j), h = rld(dy + j + 8);
            a1 += g;
            a2 += g * (rld(x + j) - m);
            b1 += h;
            b2 += h * (rld(x + j + 8) - m);
        }
        t1 += fold(a1, b1);
        t2 += fold(a2, b2);
    }
    for (; j < n; j++) {
        t1 += (double)dy[j];
        t2 += (double)(dy[j] * (x[j] - m));
    }
    *sdy = t1;
    *sdx = t2;
}

static void row_stats(const float *x, i64 n, double eps, float *mean, float *invstd)
{
    float c = (float)(sum1(x, n) / (double)n);
    double s1, s2;
    centered(x, n, c, &s1, &s2);
    double mu = (double)c + s1 / (double)n;
    double var = (s2 - s1 * s1 / (double)n) / (double)n;
    if (var < 0.0)
        var = 0.0;
    *mean = (float)mu;
    *invstd = 1.0f / sqrtf((float)var + (float)eps);
}

int per_row_forward(const float *x, float *out, i64 R, i64 L, i64 G, i64 S, const float *scale,
                 const float *bias, double eps, float *savemean, float *saveinvstd)
{
    const i64 cg = L / S;
    const int stream = nt_stream(out, x, R * L);
#pragma omp parallel num_threads(rows_threads(R * L))
    {
#pragma omp for schedule(static) nowait
        for (i64 r = 0; r < R; r++) {
            const float *xr = x + r * L;
            float *orow = out + r * L;
            float m, inv;
            row_stats(xr, L, eps, &m, &inv);
            savemean[r] = m;
            saveinvstd[r] = inv;
            const float *sc = scale + (r % G) * cg, *bi = bias + (r % G) * cg;
            if (S == 1) {
                affine_run(xr, orow, L, m, sc, bi, inv, 0.0f, 0.0f, 1, stream);
            } else {
                for (i64 k = 0; k < cg; k++)
                    affine_run(xr + k * S, orow + k * S, S, m, NULL, NULL, inv, sc[k] * inv,
                               bi[k], 0, stream);
            }
        }
        nt_fence(stream); /* once per thread */
    }
    return 0;
}

/* Rows holding whole channels of S > 1 values: per (row, channel) sums, merged over rows after. */
static int backward_channels(const float *x, const float *dy, float *dx, i64 R, i64 L, i64 G,
                             i64 S, const float *scale, const float *savemean,
                             const float *saveinvstd, float *dscale, float *dbias)
{
    const i64 cg = L / S;
    double *w = (double *)malloc(sizeof(double) * 2 * (size_t)(R * cg));
    if (w == NULL)
        return 1;
    const int stream = dx != NULL && nt_stream(dx, dy, R * L);
#pragma omp parallel num_threads(rows_threads(R * L))
    {
#pragma omp for schedule(static) nowait
    for (i64 r = 0; r < R; r++) {
        const float *xr = x + r * L, *gr = dy + r * L;
        const float m = savemean[r], inv = saveinvstd[r];
        const float *sc = scale + (r % G) * cg;
        double *wr = w + 2 * r * cg;
        double a = 0.0, b = 0.0;
        for (i64 k = 0; k < cg; k++) {
            double sdy, sdx;
            grad_sums(xr + k * S, gr + k * S, S, m, &sdy, &sdx);
            wr[2 * k] = sdy;
            wr[2 * k + 1] = sdx * (double)inv;
            a += (double)sc[k] * sdy;
            b += (double)sc[k] * sdx;
        }
        if (dx != NULL) {
            const double id = (double)inv;
            const float c0 = (float)(id * a / (double)L);
            const float c1 = (float)(id * id * id * b / (double)L);
            for (i64 k = 0; k < cg; k++)
                dx_run(xr + k * S, gr + k * S, dx + r * L + k * S, S, m, NULL, inv, sc[k] * inv,
                       c0, c1, 0, stream);
        }
    }
    nt_fence(stream);
    }
    const i64 n = R / G, c = G * cg;
    for (i64 ch = 0; ch < c; ch++) {
        const i64 g = ch / cg, k = ch % cg;
        double sb = 0.0, ss = 0.0;
        for (i64 i = 0; i < n; i++) {
            const double *wr = w + 2 * ((i * G + g) * cg + k);
            sb += wr[0];
            ss += wr[1];
        }
        dbias[ch] = (float)sb;
        dscale[ch] = (float)ss;
    }
    free(w);
    return 0;
}

/* S = 1 (LayerNorm): every position of a row is its own channel; parameter gradients are column
 * sums over rows, accumulated per fixed block of rows and merged in block order. */
static int backward_columns(const float *x, const float *dy, float *dx, i64 R, i64 L, i64 G,
                            const float *scale, const float *savemean, const float *saveinvstd,
                            float *dscale, float *dbias)
{
    /* from the shape alone, so the merge order never depends on the thread count; few blocks,
     * so merging their partials costs little next to the rows */
    i64 tasks = (R + TASK_ROWS - 1) / TASK_ROWS;
    if (tasks > ROW_TASKS)
        tasks = ROW_TASKS;
    const i64 per = (R + tasks - 1) / tasks;
    const i64 c = G * L;  /* channels; row r holds (r % G) * L ... */
    float *part = (float *)calloc((size_t)(2 * tasks * c), sizeof(float));
    if (part == NULL)
        return 1;
    const int stream = dx != NULL && nt_stream(dx, dy, R * L);
#pragma omp parallel num_threads(rows_threads(R * L))
    {
#pragma omp for schedule(static) nowait
    for (i64 t = 0; t < tasks; t++) {
        const i64 r1 = (t + 1) * per < R ? (t + 1) * per : R;
        for (i64 r = t * per; r < r1; r++) {
            const float *xr = x + r * L, *gr = dy + r * L;
            const float m = savemean[r], inv = saveinvstd[r];
            const float *sc = scale + (r % G) * L;
            float *pb = part + 2 * t * c + (r % G) * L, *ps = pb + c;
            double a = 0.0, b = 0.0;
            i64 j = 0;
            while (j + RLANES <= L) {
                i64 lim = j + BLOCK_FLOATS < L ? j + BLOCK_FLOATS : L;
                rvf aa[2] = {{0}, {0}}, ab[2] = {{0}, {0}};
                for (; j + RLANES <= lim; j += RLANES) {
                    for (int h = 0; h < 2; h++) {
                        const i64 q = j + 8 * h;
                        rvf d = rld(gr + q), xm = rld(xr + q) - m;
                        rvf g = d * rld(sc + q);
                        aa[h] += g;
                        ab[h] += g * xm;
                        rst(pb + q, rld(pb + q) + d);
                        rst(ps + q, rld(ps + q) + (d * xm) * inv);
                    }
                }
                a += fold(aa[0], aa[1]);
                b += fold(ab[0], ab[1]);
            }
            for (; j < L; j++) {
                float d = gr[j], xm = xr[j] - m;
                float g = d * sc[j];
                a += (double)g;
                b += (double)(g * xm);
                pb[j] += d;
                ps[j] += (d * xm) * inv;
            }
            if (dx != NULL) {
                const double id = (double)inv;
                const float c0 = (float)(id * a / (double)L);
                const float c1 = (float)(id * id * id * b / (double)L);
                dx_run(xr, gr, dx + r * L, L, m, sc, inv, 0.0f, c0, c1, 1, stream);
            }
        }
    }
    nt_fence(stream);
    }
#pragma omp parallel for schedule(static) num_threads(rows_threads(tasks * c))
    for (i64 j = 0; j < c; j++) {
        double sb = 0.0, ss = 0.0;
        for (i64 t = 0; t < tasks; t++) {
            sb += (double)part[2 * t * c + j];
            ss += (double)part[(2 * t + 1) * c + j];
        }
        dbias[j] = (float)sb;
        dscale[j] = (float)ss;
    }
    free(part);
    return 0;
}

int per_row_backward(const float *x, const float *dy, float *dx, i64 R, i64 L, i64 G, i64 S,
                  const float *scale, const float *savemean, const float *saveinvstd,
                  float *dscale, float *dbias)
{
    if (S == 1)
        return backward_columns(x, dy, dx, R, L, G, scale, savemean, saveinvstd, dscale, dbias);
    return backward_channels(x, dy, dx, R, L, G, S, scale, savemean, saveinvstd, dscale, dbias);
}
