/* Batch normalization on the CPU: float32 data (N, C, S), C-contiguous.
 *
 * Built at first use by batchnorm_lib/kernels/norm/cpu_native.py with the system C compiler
 * (-O3 -ffp-contract=off, OpenMP when it links) and called through ctypes.
 *
 * Memory traffic is what limits these kernels, so the work is split into tiles sized to stay in
 * the L2 cache: a tile is a group of whole channels over a block of rows, at most TILE_BYTES of x.
 * When a channel's whole slice fits in one tile, training forward reads x from memory once
 * (statistics from the cached tile, then the normalize pass from it again) and backward reads x
 * and dy once. Larger channels fall back to a reduction pass plus an elementwise pass, with the
 * per-tile partial results merged in a fixed order.
 *
 * Rows of S >= SHORT_S floats are reduced one (n, c) row at a time with register lanes; shorter
 * rows are handled as groups of whole channels, one contiguous run of G*S floats per row, with
 * one accumulator per position. The first pass over a tile reads memory row by row (sequential
 * streams for the prefetcher); re-reads of a cached tile may go column by column. Passes that are
 * purely elementwise take short rows of at least LANES floats as one stream (ew_flat).
 *
 * Outputs larger than the caches (nt_stream(): 8 MB by default) go out with
 * non-temporal stores: a normal store first reads the line it writes, so streaming takes the
 * normalize pass from 12 to 8 bytes per element and dx from 16 to 12.
 *
 * Numerics. Statistics of a tile are a corrected two-pass: the tile's rough mean c first, then
 * s1 = sum(x - c) and s2 = sum((x - c)^2), mean = c + s1/n, M2 = s2 - s1^2/n. The sums run in
 * float over at most FBLOCK terms per lane (deviations from c are small, so this is exact enough)
 * and go into double from there; tiles are merged with Chan's formula in row-block order. Every
 * reduction uses fixed lanes folded in a fixed order and a tiling that depends on the shape only,
 * so results do not depend on the thread count or the vector width of the machine.
 * The per-channel constants are computed in float64 and rounded once to float32, as in the numpy
 * path (cpu_numpy.py) and the CUDA finalize kernels, and the elementwise formulas are evaluated in
 * float32 with explicit fused multiply-adds, in the order the CUDA kernels use:
 *   forward:  out = fmaf(x - mean, a, bias),                 a = scale / sqrt(var + eps)
 *   backward: dx  = fmaf(dy, k, -fmaf(x - mean, c1, c0)),    k = scale * invstd
 * -ffp-contract=off keeps the compiler from fusing anything else, so the CPU's bits are the CUDA
 * kernels' wherever the per-channel constants are equal (inference, frozen-statistics backward).
 *
 * Non-finite values propagate as in PyTorch: nothing here clamps or compares a value that may be
 * NaN except the test var < 0 (false for NaN), and a channel holding +-Inf gets the +-Inf mean of
 * its plain sum.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX__)
#include <immintrin.h>
#define BN_STREAM 1 /* non-temporal stores of large outputs */
#endif

#define LANES 16
#ifndef FBLOCK
#define FBLOCK 64                        /* float terms per lane before they go into double */
#endif
#ifndef SHORT_S
#define SHORT_S 256                      /* rows shorter than this use per-lane accumulators */
#endif
#ifndef LANE_TARGET
#define LANE_TARGET 1024                 /* lanes (floats) per channel group on the short path */
#endif
#ifndef TILE_BYTES
#define TILE_BYTES (768 * 1024)          /* forward tile of x */
#endif
#ifndef BWD_TILE_BYTES
#define BWD_TILE_BYTES (512 * 1024)      /* backward tile, per array (x and dy) */
#endif
#ifndef ROW_LANES
#define ROW_LANES (32 * 1024)            /* lanes: whole rows as one group up to this length */
#endif
#ifndef ELEMWISE_CHUNK
#define ELEMWISE_CHUNK (16 * 1024)       /* floats per task in purely elementwise passes */
#endif
#ifndef FLAT_MIN_S
#define FLAT_MIN_S LANES                 /* shorter rows: elementwise passes by lane groups */
#endif
#ifndef SERIAL_BELOW
#define SERIAL_BELOW (64 * 1024)         /* elements: smaller tensors run on one thread */
#endif

typedef int64_t i64;

/* LANES floats as two 8-float halves of the GCC/clang vector extension (vhu loads and stores
 * unaligned data). One 16-float vector type would say the same, but gcc without AVX-512 keeps it in
 * memory, spilling every accumulator on each add (measured: the statistics loops 2-3x slower on
 * AVX2); a 32-byte half is one AVX register and a struct of two is split into registers. */
typedef float vh __attribute__((vector_size(8 * sizeof(float))));
typedef float vhu __attribute__((vector_size(8 * sizeof(float)), aligned(4), may_alias));
typedef struct {
    vh lo, hi;
} vf;

static inline vf ld(const float *p)
{
    vf v = {*(const vhu *)p, *(const vhu *)(p + 8)};
    return v;
}
static inline void st(float *p, vf v)
{
    *(vhu *)p = v.lo;
    *(vhu *)(p + 8) = v.hi;
}
static inline vf vadd(vf a, vf b) { return (vf){a.lo + b.lo, a.hi + b.hi}; }
static inline vf vsub(vf a, vf b) { return (vf){a.lo - b.lo, a.hi - b.hi}; }
static inline vf vmul(vf a, vf b) { return (vf){a.lo * b.lo, a.hi * b.hi}; }
static inline vf vneg(vf a) { return (vf){-a.lo, -a.hi}; }

/* a * b + c per lane, rounded once (vfmadd where the target has FMA) */
static inline vh vhfma(vh a, vh b, vh c)
{
#ifdef __FMA__
    return (vh)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    vh r;
    for (int k = 0; k < 8; k++)
        r[k] = __builtin_fmaf(a[k], b[k], c[k]);
    return r;
#endif
}
static inline vf vfma(vf a, vf b, vf c) { return (vf){vhfma(a.lo, b.lo, c.lo), vhfma(a.hi, b.hi, c.hi)}; }

static inline vf splat(float s)
{
    vh h = {s, s, s, s, s, s, s, s};
    return (vf){h, h};
}

/* The fused relu and its gradient mask, on the bits: v <= 0 is false for NaN, so NaN stays, and
 * -0 (all bits but the sign clear) becomes +0. */
#ifdef __AVX__
static inline vh zero_where_le0_8(vh v, vh test)
{
    return (vh)_mm256_andnot_ps(_mm256_cmp_ps((__m256)test, _mm256_setzero_ps(), _CMP_LE_OQ),
                                 (__m256)v);
}
#else
typedef int32_t vi8 __attribute__((vector_size(8 * sizeof(float))));
static inline vh zero_where_le0_8(vh v, vh test)
{
    vh z = {0};
    return (vh)((vi8)v & ~(vi8)(test <= z));
}
#endif
static inline vf vzero_where_le0(vf v, vf test)
{
    return (vf){zero_where_le0_8(v.lo, test.lo), zero_where_le0_8(v.hi, test.hi)};
}
static inline vf vrelu(vf v) { return vzero_where_le0(v, v); }
static inline float srelu(float v) { return v <= 0.0f ? 0.0f : v; }
/* dy masked by the forward's output y (y NULL: dy as is) */
static inline vf vgrad(const float *dy, const float *y, i64 i)
{
    return y ? vzero_where_le0(ld(dy + i), ld(y + i)) : ld(dy + i);
}
static inline float sgrad(const float *dy, const float *y, i64 i)
{
    return y && y[i] <= 0.0f ? 0.0f : dy[i];
}

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 2)
#else
#define PREFETCH(p) ((void)0)
#endif

static int g_threads = 0;

static i64 ceil_div_(i64 a, i64 b) { return (a + b - 1) / b; }
int bn_get_num_threads(void);

static int threads_for(i64 total)
{
    return total < SERIAL_BELOW ? 1 : bn_get_num_threads();
}

static int elementwise(const float *x, float *out, i64 N, i64 C, i64 S,
                       const float *m, const float *a, const float *b, int relu, const float *y);

int bn_set_num_threads(int n)
{
    g_threads = n > 0 ? n : 0;
#ifdef _OPENMP
    return g_threads ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

int bn_get_num_threads(void)
{
#ifdef _OPENMP
    return g_threads ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

/* dst = src with the kernels' threads: the copy bandwidth the benchmark compares against */
void bn_copy(const float *src, float *dst, i64 n)
{
    i64 nchunk = ceil_div_(n, ELEMWISE_CHUNK * 4);
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
    for (i64 t = 0; t < nchunk; t++) {
        i64 a = t * ELEMWISE_CHUNK * 4, b = a + ELEMWISE_CHUNK * 4 < n ? a + ELEMWISE_CHUNK * 4 : n;
        memcpy(dst + a, src + a, sizeof(float) * (size_t)(b - a));
    }
}

int bn_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}


typedef struct {
    double n, mean, m2;
    double total;  /* plain sum of the values: decides the mean of a channel holding +-Inf */
} stat_t;

/* Chan's parallel merge of b into a. */
static void chan_merge(stat_t *a, const stat_t *b)
{
    if (b->n == 0.0)
        return;
    if (a->n == 0.0) {
        *a = *b;
        return;
    }
    double n = a->n + b->n;
    double d = b->mean - a->mean;
    a->mean += d * (b->n / n);
    a->m2 += b->m2 + d * d * (a->n * (b->n / n));
    a->n = n;
    a->total += b->total;
}

/* cnt values with plain sum `total`, shifted by c: s1 = sum(x - c), s2 = sum((x - c)^2). A slightly
 * negative M2 from rounding clamps to 0; NaN does not (the comparison is false). */
static stat_t stat_from_sums(double cnt, double total, double c, double s1, double s2)
{
    stat_t st;
    double dm = s1 / cnt;
    st.n = cnt;
    st.mean = c + dm;
    st.m2 = s2 - s1 * dm;
    if (st.m2 < 0.0)
        st.m2 = 0.0;
    st.total = total;
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* long rows: one (n, c) row of S >= SHORT_S contiguous floats is reduced with register lanes      */

/* Sums run in float over blocks of at most FBLOCK terms per lane (exact enough: the terms are
 * deviations from a nearby shift), and the blocks are added into double lanes. The lanes are an
 * explicit vector type, so the compiler keeps them in registers on any vector width. */

static inline void flush(vf f, double *acc)
{
    for (int k = 0; k < 8; k++) {
        acc[k] += f.lo[k];
        acc[k + 8] += f.hi[k];
    }
}

static void lanes_sum(const float *x, i64 S, double *acc)
{
    i64 i = 0, nv = S / LANES;
    while (nv > 0) {
        i64 nb = nv < FBLOCK ? nv : FBLOCK;
        vf f0 = {0}, f1 = {0};
        i64 v = 0;
        for (; v + 2 <= nb; v += 2, i += 2 * LANES) {
            f0 = vadd(f0, ld(x + i));
            f1 = vadd(f1, ld(x + i + LANES));
        }
        if (v < nb) {
            f0 = vadd(f0, ld(x + i));
            i += LANES;
        }
        flush(vadd(f0, f1), acc);
        nv -= nb;
    }
    for (int k = 0; i < S; i++, k++)
        acc[k] += x[i];
}

static void lanes_dev(const float *x, i64 S, float c, double *a1, double *a2)
{
    i64 i = 0, nv = S / LANES;
    vf cv = splat(c);
    while (nv > 0) {
        i64 nb = nv < FBLOCK ? nv : FBLOCK;
        vf f1 = {0}, f2 = {0}, g1 = {0}, g2 = {0};
        i64 v = 0;
        for (; v + 2 <= nb; v += 2, i += 2 * LANES) {
            vf d = vsub(ld(x + i), cv), e = vsub(ld(x + i + LANES), cv);
            f1 = vadd(f1, d);
            f2 = vadd(f2, vmul(d, d));
            g1 = vadd(g1, e);
            g2 = vadd(g2, vmul(e, e));
        }
        if (v < nb) {
            vf d = vsub(ld(x + i), cv);
            f1 = vadd(f1, d);
            f2 = vadd(f2, vmul(d, d));
            i += LANES;
        }
        flush(vadd(f1, g1), a1);
        flush(vadd(f2, g2), a2);
        nv -= nb;
    }
    for (int k = 0; i < S; i++, k++) {
        float d = x[i] - c;
        a1[k] += d;
        a2[k] += d * d;
    }
}

static double fold(const double *acc)
{
    double s = 0.0;
    for (int k = 0; k < LANES; k++)
        s += acc[k];
    return s;
}

/* statistics of channel rows n0..n1 (xc points at x[0, c, 0], rows rs floats apart) */
static stat_t tile_stats_long(const float *xc, i64 rs, i64 n0, i64 n1, i64 S)
{
    double acc[LANES] = {0};
    for (i64 n = n0; n < n1; n++)
        lanes_sum(xc + n * rs, S, acc);
    double cnt = (double)(n1 - n0) * (double)S;
    double total = fold(acc);
    float c = (float)(total / cnt);
    double a1[LANES] = {0}, a2[LANES] = {0};
    for (i64 n = n0; n < n1; n++)
        lanes_dev(xc + n * rs, S, c, a1, a2);
    return stat_from_sums(cnt, total, c, fold(a1), fold(a2));
}

/* a1 += sum(dy), a2 += sum(dy * (x - m)), a3 += sum(x - m) (see backward_const); dy masked by
 * y where y is not NULL */
static inline __attribute__((always_inline)) void lanes_bwd_k(const float *x, const float *dy,
                                                              const float *y, i64 S, float m,
                                                              double *a1, double *a2, double *a3)
{
    i64 i = 0, nv = S / LANES;
    vf mv = splat(m);
    while (nv > 0) {
        i64 nb = nv < FBLOCK ? nv : FBLOCK;
        /* one accumulator for sum(x - m): a sixth would not fit the registers */
        vf f1 = {0}, f2 = {0}, f3 = {0}, g1 = {0}, g2 = {0};
        i64 v = 0;
        for (; v + 2 <= nb; v += 2, i += 2 * LANES) {
            vf g = vgrad(dy, y, i), h = vgrad(dy, y, i + LANES);
            vf d = vsub(ld(x + i), mv), e = vsub(ld(x + i + LANES), mv);
            f1 = vadd(f1, g);
            f2 = vadd(f2, vmul(g, d));
            g1 = vadd(g1, h);
            g2 = vadd(g2, vmul(h, e));
            f3 = vadd(f3, vadd(d, e));
        }
        if (v < nb) {
            vf g = vgrad(dy, y, i), d = vsub(ld(x + i), mv);
            f1 = vadd(f1, g);
            f2 = vadd(f2, vmul(g, d));
            f3 = vadd(f3, d);
            i += LANES;
        }
        flush(vadd(f1, g1), a1);
        flush(vadd(f2, g2), a2);
        flush(f3, a3);
        nv -= nb;
    }
    for (int k = 0; i < S; i++, k++) {
        float g = sgrad(dy, y, i), d = x[i] - m;
        a1[k] += g;
        a2[k] += g * d;
        a3[k] += d;
    }
}

static void lanes_bwd(const float *x, const float *dy, const float *y, i64 S, float m, double *a1,
                      double *a2, double *a3)
{
    if (y)
        lanes_bwd_k(x, dy, y, S, m, a1, a2, a3);
    else
        lanes_bwd_k(x, dy, NULL, S, m, a1, a2, a3);
}

/* ---------------------------------------------------------------------------------------------- */
/* short rows: a group of G channels is one contiguous run of L = G*S floats per row; per-lane     */
/* accumulators run down the rows and each channel folds its S lanes at the end                    */

typedef struct {
    i64 G, L;      /* channels per group, lanes per group row */
    i64 B, nrb;    /* rows per block, row blocks */
    i64 ngroups;
} plan_t;

static i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

/* Depends on the shape only (never on the thread count), so results are reproducible. */
static plan_t make_plan(i64 N, i64 C, i64 S, i64 tile_bytes)
{
    plan_t p;
    if (S >= SHORT_S) {
        p.G = 1;
    } else {
        /* Narrowing the group so that whole channels fit one tile (a single read of x) was
         * measured slower than reading twice: runs shorter than ~4 KB lose the hardware
         * prefetcher. So short rows are fused only when the natural group fits anyway. */
        i64 g = LANE_TARGET / S;
        if (g < 1)
            g = 1;
        if (g > C)
            g = C;
        p.G = g;
    }
    p.L = p.G * S;
    p.B = tile_bytes / ((i64)sizeof(float) * p.L);
    if (p.B < 1)
        p.B = 1;
    if (p.B > N)
        p.B = N;
    p.nrb = ceil_div(N, p.B);
    p.ngroups = ceil_div(C, p.G);
    return p;
}

/* Column passes over a tile of rows n0..n1, lanes 0..L (row n at x + n*rs): a chunk of CW lanes
 * is held in registers while the rows go by, so each element costs a load and an add or two. */
#define CW (4 * LANES)

/* facc[j] = sum of column j, in float (it only picks the shift). This pass reads the tile from
 * memory, so it goes row by row: sequential streams the hardware prefetcher follows. */
static void cols_sum(const float *x, i64 rs, i64 n0, i64 n1, i64 L, float *facc)
{
    memset(facc, 0, sizeof(float) * (size_t)L);
    for (i64 n = n0; n < n1; n++) {
        const float *r = x + n * rs;
        for (i64 j = 0; j < L; j++)
            facc[j] += r[j];
    }
}

/* a1[j] += sum(d), a2[j] += sum(d^2), d = x - shift[j]: float over FBLOCK rows, then double */
static void cols_dev(const float *x, i64 rs, i64 n0, i64 n1, i64 L, const float *shift,
                     double *a1, double *a2)
{
    i64 j = 0;
    for (; j + 2 * LANES <= L; j += 2 * LANES) {
        vf c0 = ld(shift + j), c1 = ld(shift + j + LANES);
        for (i64 nb = n0; nb < n1; nb += FBLOCK) {
            i64 ne = nb + FBLOCK < n1 ? nb + FBLOCK : n1;
            vf s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0};
            for (i64 n = nb; n < ne; n++) {
                const float *r = x + n * rs + j;
                vf d0 = vsub(ld(r), c0), d1 = vsub(ld(r + LANES), c1);
                s0 = vadd(s0, d0);
                q0 = vadd(q0, vmul(d0, d0));
                s1 = vadd(s1, d1);
                q1 = vadd(q1, vmul(d1, d1));
            }
            flush(s0, a1 + j);
            flush(s1, a1 + j + LANES);
            flush(q0, a2 + j);
            flush(q1, a2 + j + LANES);
        }
    }
    for (; j + LANES <= L; j += LANES) {
        vf c0 = ld(shift + j);
        for (i64 nb = n0; nb < n1; nb += FBLOCK) {
            i64 ne = nb + FBLOCK < n1 ? nb + FBLOCK : n1;
            vf s0 = {0}, q0 = {0};
            for (i64 n = nb; n < ne; n++) {
                vf d0 = vsub(ld(x + n * rs + j), c0);
                s0 = vadd(s0, d0);
                q0 = vadd(q0, vmul(d0, d0));
            }
            flush(s0, a1 + j);
            flush(q0, a2 + j);
        }
    }
    for (; j < L; j++) {
        for (i64 nb = n0; nb < n1; nb += FBLOCK) {
            i64 ne = nb + FBLOCK < n1 ? nb + FBLOCK : n1;
            float s0 = 0.0f, q0 = 0.0f;
            for (i64 n = nb; n < ne; n++) {
                float d0 = x[n * rs + j] - shift[j];
                s0 += d0;
                q0 += d0 * d0;
            }
            a1[j] += s0;
            a2[j] += q0;
        }
    }
}

/* a1[j] += sum(dy), a2[j] += sum(dy * (x - m[j])), a3[j] += sum(x - m[j]). This pass reads x and dy from memory: rows
 * go by in blocks of RB (RB sequential streams per array, which the prefetcher follows) and
 * each block adds into float partials f1, f2, f3 (L floats each), which go into double every FBLOCK
 * rows. */
#define RB 8
static inline __attribute__((always_inline)) void cols_bwd_k(const float *x, const float *dy,
                                                             const float *y, i64 rs, i64 n0,
                                                             i64 n1, i64 L, const float *m,
                                                             double *a1, double *a2, double *a3,
                                                             float *f1, float *f2, float *f3)
{
    for (i64 nb = n0; nb < n1; nb += FBLOCK) {
        i64 ne = nb + FBLOCK < n1 ? nb + FBLOCK : n1;
        memset(f1, 0, sizeof(float) * (size_t)L);
        memset(f2, 0, sizeof(float) * (size_t)L);
        memset(f3, 0, sizeof(float) * (size_t)L);
        for (i64 rb = nb; rb < ne; rb += RB) {
            i64 re = rb + RB < ne ? rb + RB : ne;
            i64 j = 0;
#ifdef __AVX__
            /* with the mask, 8 lanes at a time: its loads and compares next to the accumulators
             * of 16-lane vectors spill on AVX2 (same sums per lane either way) */
            for (; y && j + 8 <= L; j += 8) {
                vh m0, s0, q0, u0;
                memcpy(&m0, m + j, sizeof m0);
                memcpy(&s0, f1 + j, sizeof s0);
                memcpy(&q0, f2 + j, sizeof q0);
                memcpy(&u0, f3 + j, sizeof u0);
                for (i64 n = rb; n < re; n++) {
                    i64 o = n * rs + j;
                    vh g0 = zero_where_le0_8((vh)_mm256_loadu_ps(dy + o),
                                              (vh)_mm256_loadu_ps(y + o));
                    vh d0 = (vh)_mm256_loadu_ps(x + o) - m0;
                    s0 += g0;
                    q0 += g0 * d0;
                    u0 += d0;
                }
                memcpy(f1 + j, &s0, sizeof s0);
                memcpy(f2 + j, &q0, sizeof q0);
                memcpy(f3 + j, &u0, sizeof u0);
            }
#endif
            for (; !y && j + 2 * LANES <= L; j += 2 * LANES) {
                vf m0 = ld(m + j), m1 = ld(m + j + LANES);
                vf s0 = ld(f1 + j), s1 = ld(f1 + j + LANES);
                vf q0 = ld(f2 + j), q1 = ld(f2 + j + LANES);
                vf u0 = ld(f3 + j), u1 = ld(f3 + j + LANES);
                for (i64 n = rb; n < re; n++) {
                    const float *r = x + n * rs + j, *g = dy + n * rs + j;
                    const float *yr = y ? y + n * rs + j : NULL;
                    vf g0 = vgrad(g, yr, 0), g1 = vgrad(g, yr, LANES);
                    vf d0 = vsub(ld(r), m0), d1 = vsub(ld(r + LANES), m1);
                    s0 = vadd(s0, g0);
                    q0 = vadd(q0, vmul(g0, d0));
                    u0 = vadd(u0, d0);
                    s1 = vadd(s1, g1);
                    q1 = vadd(q1, vmul(g1, d1));
                    u1 = vadd(u1, d1);
                }
                st(f1 + j, s0);
                st(f1 + j + LANES, s1);
                st(f2 + j, q0);
                st(f2 + j + LANES, q1);
                st(f3 + j, u0);
                st(f3 + j + LANES, u1);
            }
            for (; j + LANES <= L; j += LANES) {
                vf m0 = ld(m + j), s0 = ld(f1 + j), q0 = ld(f2 + j), u0 = ld(f3 + j);
                for (i64 n = rb; n < re; n++) {
                    const float *yr = y ? y + n * rs + j : NULL;
                    vf g0 = vgrad(dy + n * rs + j, yr, 0), d0 = vsub(ld(x + n * rs + j), m0);
                    s0 = vadd(s0, g0);
                    q0 = vadd(q0, vmul(g0, d0));
                    u0 = vadd(u0, d0);
                }
                st(f1 + j, s0);
                st(f2 + j, q0);
                st(f3 + j, u0);
            }
            for (; j < L; j++) {
                float s0 = f1[j], q0 = f2[j], u0 = f3[j];
                for (i64 n = rb; n < re; n++) {
                    float g0 = sgrad(dy, y, n * rs + j), d0 = x[n * rs + j] - m[j];
                    s0 += g0;
                    q0 += g0 * d0;
                    u0 += d0;
                }
                f1[j] = s0;
                f2[j] = q0;
                f3[j] = u0;
            }
        }
        for (i64 j = 0; j < L; j++) {
            a1[j] += f1[j];
            a2[j] += f2[j];
            a3[j] += f3[j];
        }
    }
}

static void cols_bwd(const float *x, const float *dy, const float *y, i64 rs, i64 n0, i64 n1,
                     i64 L, const float *m, double *a1, double *a2, double *a3, float *f1,
                     float *f2, float *f3)
{
    if (y)
        cols_bwd_k(x, dy, y, rs, n0, n1, L, m, a1, a2, a3, f1, f2, f3);
    else
        cols_bwd_k(x, dy, NULL, rs, n0, n1, L, m, a1, a2, a3, f1, f2, f3);
}

/* statistics of a group of channels c0..c0+g over rows n0..n1; st gets g entries.
 * fws: 2*L floats, dws: 2*L + g doubles of workspace. */
static void tile_stats_short(const float *x, i64 C, i64 S, i64 c0, i64 g, i64 n0, i64 n1,
                             float *fws, double *dws, stat_t *st)
{
    i64 L = g * S, rs = C * S;
    const float *xg = x + c0 * S;
    float *facc = fws, *shift = fws + L;
    double *a1 = dws, *a2 = dws + L;
    cols_sum(xg, rs, n0, n1, L, facc);
    double cnt = (double)(n1 - n0) * (double)S;
    for (i64 q = 0; q < g; q++) {
        double sum = 0.0;
        for (i64 t = 0; t < S; t++)
            sum += facc[q * S + t];
        float c = (float)(sum / cnt);
        for (i64 t = 0; t < S; t++)
            shift[q * S + t] = c;
        dws[2 * L + q] = sum;  /* the plain total, for stat_from_sums */
    }
    memset(a1, 0, sizeof(double) * L);
    memset(a2, 0, sizeof(double) * L);
    cols_dev(xg, rs, n0, n1, L, shift, a1, a2);
    for (i64 q = 0; q < g; q++) {
        double s1 = 0.0, s2 = 0.0;
        for (i64 t = 0; t < S; t++) {
            s1 += a1[q * S + t];
            s2 += a2[q * S + t];
        }
        st[q] = stat_from_sums(cnt, dws[2 * L + q], shift[q * S], s1, s2);
    }
}

/* expand per-channel constants of channels c0..c0+g into lane arrays */
static void expand(const float *v, i64 c0, i64 g, i64 S, float *lanes)
{
    for (i64 q = 0; q < g; q++)
        for (i64 t = 0; t < S; t++)
            lanes[q * S + t] = v[c0 + q];
}

/* ---------------------------------------------------------------------------------------------- */
/* elementwise output passes                                                                       */

/* Outputs of at least the library's streaming threshold (nt_stream(), rows_channels_cpu.c) that are not written in place go out with non-temporal stores: such an output is
 * evicted from the caches before anyone reads it, and a normal store first reads the line it
 * writes (write-allocate), one more pass over memory. Only whole 64-byte lines are streamed (a
 * row's head up to the first line boundary and its tail are stored normally), so no line is
 * written partly each way. */
int nt_stream(const float *out, const float *in, i64 n); /* rows_channels_cpu.c */
void nt_fence(int stream);

static inline void st_nt(float *p, vf v)
{
#ifdef BN_STREAM
    _mm256_stream_ps(p, (__m256)v.lo);
    _mm256_stream_ps(p + 8, (__m256)v.hi);
#else
    st(p, v);
#endif
}

/* The three elementwise formulas, in float32 with explicit fused multiply-adds:
 *   EW_AFFINE: o = fmaf(x - m, a, b), relu'd when flag (the forwards)
 *   EW_SCALE:  o = g * a, g = dy masked by y when flag (the frozen-statistics backward; x is dy)
 *   EW_DX:     o = fmaf(g, a, -fmaf(x - m, c1, b)), a = k, b = c0 (the training backward)
 * Constants are per row (m, a, b, c1 scalars) or per lane (arrays indexed like the row: the
 * short-row groups). Every variant is its own loop: ew_span is inlined with constant flags. */
enum { EW_AFFINE, EW_SCALE, EW_DX };

typedef struct {
    const float *x, *dy, *y;        /* row starts; y the relu mask (flag) */
    const float *pf, *pf2;          /* prefetched into L2 alongside the row, or NULL */
    const float *ml, *al, *bl, *cl; /* lane arrays (lane mode) */
    float m, a, b, c1;              /* row constants (row mode) */
} ew_t;

/* the formula on the vector at j, with the constants given as vectors (c1: EW_DX only) */
static inline __attribute__((always_inline)) vf ew_math(int kind, int flag, const ew_t *p, i64 j,
                                                       vf m, vf a, vf b, vf c1)
{
    if (kind == EW_SCALE)
        return vmul(flag ? vgrad(p->x, p->y, j) : ld(p->x + j), a);
    if (kind == EW_AFFINE) {
        vf v = vfma(vsub(ld(p->x + j), m), a, b);
        return flag ? vrelu(v) : v;
    }
    return vfma(flag ? vgrad(p->dy, p->y, j) : ld(p->dy + j), a,
                vneg(vfma(vsub(ld(p->x + j), m), c1, b)));
}

static inline __attribute__((always_inline)) vf ew_vec(int kind, int flag, int lanes,
                                                      const ew_t *p, i64 j)
{
    vf a = lanes ? ld(p->al + j) : splat(p->a);
    if (kind == EW_SCALE)
        return ew_math(kind, flag, p, j, a, a, a, a);
    vf m = lanes ? ld(p->ml + j) : splat(p->m), b = lanes ? ld(p->bl + j) : splat(p->b);
    vf c1 = kind == EW_DX ? (lanes ? ld(p->cl + j) : splat(p->c1)) : a;
    return ew_math(kind, flag, p, j, m, a, b, c1);
}

static inline __attribute__((always_inline)) float ew_one(int kind, int flag, int lanes,
                                                         const ew_t *p, i64 j)
{
    float a = lanes ? p->al[j] : p->a;
    if (kind == EW_SCALE)
        return (flag ? sgrad(p->x, p->y, j) : p->x[j]) * a;
    float m = lanes ? p->ml[j] : p->m, b = lanes ? p->bl[j] : p->b;
    if (kind == EW_AFFINE) {
        float v = fmaf(p->x[j] - m, a, b);
        return flag ? srelu(v) : v;
    }
    float c1 = lanes ? p->cl[j] : p->c1;
    return fmaf(flag ? sgrad(p->dy, p->y, j) : p->dy[j], a, -fmaf(p->x[j] - m, c1, b));
}

static inline __attribute__((always_inline)) void ew_span(int kind, int flag, int lanes,
                                                         int stream, const ew_t *p, float *o,
                                                         i64 n)
{
    i64 j = 0;
    if (stream) {
        i64 head = (i64)(((64 - ((uintptr_t)o & 63)) & 63) / sizeof(float));
        for (; j < head && j < n; j++)
            o[j] = ew_one(kind, flag, lanes, p, j);
    }
    for (; j + LANES <= n; j += LANES) {
        if (p->pf)
            PREFETCH(p->pf + j);
        if (p->pf2)
            PREFETCH(p->pf2 + j);
        vf v = ew_vec(kind, flag, lanes, p, j);
        if (stream)
            st_nt(o + j, v);
        else
            st(o + j, v);
    }
    for (; j < n; j++)
        o[j] = ew_one(kind, flag, lanes, p, j);
}

#define EW_CASE(k, f, l, s) \
    case ((k) * 8 + (f) * 4 + (l) * 2 + (s)): ew_span(k, f, l, s, p, o, n); break;
#define EW_CASES(k, f) EW_CASE(k, f, 0, 0) EW_CASE(k, f, 0, 1) EW_CASE(k, f, 1, 0) EW_CASE(k, f, 1, 1)

/* one row of n values into o: formula kind, flag (relu or mask), lane or row constants, streamed */
static void ew_row(int kind, int flag, int lanes, int stream, const ew_t *p, float *o, i64 n)
{
    switch (kind * 8 + !!flag * 4 + !!lanes * 2 + !!stream) {
        EW_CASES(EW_AFFINE, 0) EW_CASES(EW_AFFINE, 1)
        EW_CASES(EW_SCALE, 0) EW_CASES(EW_SCALE, 1)
        EW_CASES(EW_DX, 0) EW_CASES(EW_DX, 1)
    }
}

/* o = fmaf(x - m, a, b) over one row of S, relu'd when relu, prefetching pf[0..S) (the next tile)
 * into L2 as it goes when pf is not NULL */
static void row_affine(const float *x, float *o, i64 S, float m, float a, float b,
                       const float *pf, int relu, int stream)
{
    ew_t p = {.x = x, .pf = pf, .m = m, .a = a, .b = b};
    ew_row(EW_AFFINE, relu, 0, stream, &p, o, S);
}

/* o = x * a, x masked by y where y is not NULL */
static void row_scale(const float *x, const float *y, float *o, i64 S, float a, int stream)
{
    ew_t p = {.x = x, .y = y, .a = a};
    ew_row(EW_SCALE, y != NULL, 0, stream, &p, o, S);
}

/* dx = fmaf(dy, k, -fmaf(x - m, c1, c0)) over one row of S, dy masked by y where y is not NULL,
 * prefetching pf[0..S) and pf2[0..S) (the next tile's x and dy) where they are not NULL */
static void row_dx(const float *x, const float *dy, const float *y, float *dx, i64 S, float m,
                   float k, float c0, float c1, const float *pf, const float *pf2, int stream)
{
    ew_t p = {.x = x, .dy = dy, .y = y, .pf = pf, .pf2 = pf2, .m = m, .a = k, .b = c0, .c1 = c1};
    ew_row(EW_DX, y != NULL, 0, stream, &p, dx, S);
}

/* the same with per-lane constants, over rows n0..n1 of L lanes (row n at offset n * rs) */
static void ew_lanes(int kind, int flag, int stream, ew_t p, float *o, i64 rs, i64 n0, i64 n1,
                     i64 L)
{
    const float *x = p.x, *dy = p.dy, *y = p.y, *pf = p.pf, *pf2 = p.pf2;
    for (i64 n = n0; n < n1; n++) {
        i64 off = n * rs;
        p.x = x + off;
        p.dy = dy ? dy + off : NULL;
        p.y = y ? y + off : NULL;
        p.pf = pf ? pf + off : NULL;
        p.pf2 = pf2 ? pf2 + off : NULL;
        ew_row(kind, flag, 1, stream, &p, o + off, L);
    }
}

/* o = fmaf(x - m, a, b) per lane over rows n0..n1 (relu'd when relu), prefetching the same lanes
 * of pf (the next tile) where pf is not NULL */
static void rows_affine_lanes(const float *x, float *o, i64 rs, i64 n0, i64 n1, i64 L,
                              const float *ml, const float *al, const float *bl, int relu,
                              int stream, const float *pf)
{
    ew_t p = {.x = x, .pf = pf, .ml = ml, .al = al, .bl = bl};
    ew_lanes(EW_AFFINE, relu, stream, p, o, rs, n0, n1, L);
}

/* o = x * a per lane, x masked by y where y is not NULL */
static void rows_scale_lanes(const float *x, const float *y, float *o, i64 rs, i64 n0, i64 n1,
                             i64 L, const float *al, int stream)
{
    ew_t p = {.x = x, .y = y, .al = al};
    ew_lanes(EW_SCALE, y != NULL, stream, p, o, rs, n0, n1, L);
}

/* dx = fmaf(dy, k, -fmaf(x - m, c1, c0)) per lane over rows n0..n1, dy masked by y where y is not
 * NULL, prefetching the same lanes of pf and pf2 (the next tile's x and dy) where not NULL */
static void rows_dx_lanes(const float *x, const float *dy, const float *y, float *dx, i64 rs,
                          i64 n0, i64 n1, i64 L, const float *ml, const float *kl,
                          const float *c0l, const float *c1l, int stream, const float *pf,
                          const float *pf2)
{
    ew_t p = {.x = x, .dy = dy, .y = y, .pf = pf, .pf2 = pf2, .ml = ml, .al = kl, .bl = c0l,
              .cl = c1l};
    ew_lanes(EW_DX, y != NULL, stream, p, dx, rs, n0, n1, L);
}

/* Short rows (LANES <= S < SHORT_S) in the purely elementwise passes with per-channel constants:
 * consecutive (n, c) rows are contiguous, so a run of them is walked as one stream, LANES floats at
 * a time across the row boundaries (a vector straddling two rows takes the lanes before the
 * boundary from the first). Per-lane constant arrays (the lane groups) cost three more loads per
 * vector and cut the output into runs whose unaligned heads and tails are not streamed: one
 * thread, 128x256x14x14 inference 3.0 ms that way, against 2.4 ms for the same bytes as rows of
 * 256. Same formula per element, so the same bits. */
typedef int32_t vhi __attribute__((vector_size(8 * sizeof(float))));
static inline vh hsplit(float s0, float s1, vhi first)
{
    vh v0 = {s0, s0, s0, s0, s0, s0, s0, s0}, v1 = {s1, s1, s1, s1, s1, s1, s1, s1};
    return (vh)(((vhi)v0 & first) | ((vhi)v1 & ~first));
}
/* lanes [0, k) s0, the rest s1 */
static inline vf vsplit(float s0, float s1, i64 k)
{
    const vhi lo = {0, 1, 2, 3, 4, 5, 6, 7}, hi = {8, 9, 10, 11, 12, 13, 14, 15};
    vhi kk = {0};
    kk += (int32_t)k;
    return (vf){hsplit(s0, s1, lo < kk), hsplit(s0, s1, hi < kk)};
}

/* rows [r0, r1) of the (n, c) rows of S floats (row r has channel r % C): out = fmaf(x - m, a, b)
 * relu'd when flag (EW_AFFINE), or out = x * a, x masked by y when flag (EW_SCALE) */
static inline __attribute__((always_inline)) void ew_flat_k(int kind, int flag, int stream,
                                                           const float *x, const float *y,
                                                           float *o, i64 r0, i64 r1, i64 S, i64 C,
                                                           const float *m, const float *a,
                                                           const float *b)
{
    ew_t p = {.x = x, .y = y};
    i64 i = r0 * S, end = r1 * S, bnd = (r0 + 1) * S, c = r0 % C;
    i64 head = stream ? (i64)(((64 - ((uintptr_t)(o + i) & 63)) & 63) / sizeof(float)) : 0;
#define EW_FLAT_ROW()                                                                              \
    do {                                                                                           \
        p.a = a[c];                                                                                \
        p.m = kind == EW_AFFINE ? m[c] : 0.0f;                                                     \
        p.b = kind == EW_AFFINE ? b[c] : 0.0f;                                                     \
    } while (0)
#define EW_FLAT_NEXT()                                                                             \
    do {                                                                                           \
        bnd += S;                                                                                  \
        c = c + 1 == C ? 0 : c + 1;                                                                \
        EW_FLAT_ROW();                                                                             \
    } while (0)
    EW_FLAT_ROW();
    for (; i < end && head > 0; i++, head--) {
        if (i >= bnd) /* at most one row ahead: S >= LANES */
            EW_FLAT_NEXT();
        o[i] = ew_one(kind, flag, 0, &p, i);
    }
    for (; i + LANES <= end; i += LANES) {
        if (i >= bnd)
            EW_FLAT_NEXT();
        vf v;
        if (i + LANES <= bnd) {
            v = ew_math(kind, flag, &p, i, splat(p.m), splat(p.a), splat(p.b), splat(0.0f));
        } else {
            /* S >= LANES: this vector ends in the next row */
            i64 k = bnd - i, cn = c + 1 == C ? 0 : c + 1;
            vf av = vsplit(p.a, a[cn], k);
            vf mv = kind == EW_AFFINE ? vsplit(p.m, m[cn], k) : av;
            vf bv = kind == EW_AFFINE ? vsplit(p.b, b[cn], k) : av;
            v = ew_math(kind, flag, &p, i, mv, av, bv, av);
        }
        if (stream)
            st_nt(o + i, v);
        else
            st(o + i, v);
    }
    for (; i < end; i++) {
        if (i >= bnd) /* at most one row ahead: S >= LANES */
            EW_FLAT_NEXT();
        o[i] = ew_one(kind, flag, 0, &p, i);
    }
#undef EW_FLAT_NEXT
#undef EW_FLAT_ROW
}

static void ew_flat(const float *x, const float *y, float *o, i64 r0, i64 r1, i64 S, i64 C,
                    const float *m, const float *a, const float *b, int relu, int stream)
{
    if (m) {
        if (relu)
            stream ? ew_flat_k(EW_AFFINE, 1, 1, x, NULL, o, r0, r1, S, C, m, a, b)
                   : ew_flat_k(EW_AFFINE, 1, 0, x, NULL, o, r0, r1, S, C, m, a, b);
        else
            stream ? ew_flat_k(EW_AFFINE, 0, 1, x, NULL, o, r0, r1, S, C, m, a, b)
                   : ew_flat_k(EW_AFFINE, 0, 0, x, NULL, o, r0, r1, S, C, m, a, b);
    } else if (y) {
        stream ? ew_flat_k(EW_SCALE, 1, 1, x, y, o, r0, r1, S, C, NULL, a, NULL)
               : ew_flat_k(EW_SCALE, 1, 0, x, y, o, r0, r1, S, C, NULL, a, NULL);
    } else {
        stream ? ew_flat_k(EW_SCALE, 0, 1, x, NULL, o, r0, r1, S, C, NULL, a, NULL)
               : ew_flat_k(EW_SCALE, 0, 0, x, NULL, o, r0, r1, S, C, NULL, a, NULL);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* per-channel constants, in the float32 / float64 steps of the numpy path                         */

/* scale / sqrt(var + eps) in float64, rounded once: the factor of the normalize pass (of
 * rows_channels_cpu.c's too) */
float bn_affine_factor(float scale, double var, double eps)
{
    return (float)((double)scale / sqrt(var + eps));
}

/* Channel c after a training forward's statistics, the mean and biased variance of its m values:
 * the normalize pass's mean32[c] and a32[c], the saved statistics and the running ones. total, the
 * channel's plain sum, decides the mean where the shifted sums gave NaN: +-Inf in the channel gives
 * PyTorch's sum / m. Shared with rows_channels_cpu.c, so both layouts finish alike. */
void bn_finish_channel(i64 c, double mean, double var, double total, double m, const float *scale,
                       double eps, double factor, float *mean32, float *a32, float *savemean,
                       float *saveinvvar, float *run_mean, float *run_var)
{
    if (isnan(mean) && isinf(total))
        mean = total;
    double keep = 1.0 - factor;
    double unbias = m / (m - 1.0);
    mean32[c] = (float)mean;
    a32[c] = bn_affine_factor(scale[c], var, eps);
    savemean[c] = (float)mean;
    saveinvvar[c] = (float)(1.0 / sqrt(var + eps));
    run_mean[c] = (float)(keep * run_mean[c] + factor * mean);
    run_var[c] = (float)(keep * run_var[c] + factor * (var * unbias));
}

static void finish_forward(i64 C, i64 m, const stat_t *st, const float *scale,
                           float *run_mean, float *run_var, double eps, double factor,
                           float *savemean, float *saveinvvar, float *mean32, float *a32)
{
    for (i64 c = 0; c < C; c++)
        bn_finish_channel(c, st[c].mean, st[c].m2 / st[c].n, st[c].total, (double)m, scale, eps,
                          factor, mean32, a32, savemean, saveinvvar, run_mean, run_var);
}

/* ---------------------------------------------------------------------------------------------- */
/* forward, training                                                                               */

int bn_forward_train(const float *x, float *out, i64 N, i64 C, i64 S, const float *scale,
                     const float *bias, float *run_mean, float *run_var, double eps, double factor,
                     float *savemean, float *saveinvvar, int relu)
{
    plan_t p = make_plan(N, C, S, TILE_BYTES);
    i64 rs = C * S, m = N * S;
    int nt = threads_for(N * rs);
    stat_t *part = malloc(sizeof(stat_t) * (size_t)(C * p.nrb));
    stat_t *st = malloc(sizeof(stat_t) * (size_t)C);
    float *mean32 = malloc(sizeof(float) * (size_t)C);
    float *a32 = malloc(sizeof(float) * (size_t)C);
    if (!part || !st || !mean32 || !a32) {
        free(part); free(st); free(mean32); free(a32);
        return -1;
    }
    int fused = p.nrb == 1;
    int failed = 0;
    int stream = fused && nt_stream(out, x, N * rs);

    if (S >= SHORT_S) {
        i64 ntask = C * p.nrb;
#pragma omp parallel for schedule(static, 1) num_threads(nt)
        for (i64 t = 0; t < ntask; t++) {
            i64 c = t / p.nrb, rb = t % p.nrb;
            i64 n0 = rb * p.B, n1 = n0 + p.B < N ? n0 + p.B : N;
            stat_t s = tile_stats_long(x + c * S, rs, n0, n1, S);
            part[c * p.nrb + rb] = s;
            if (fused) {
                /* whole channel in this tile: finish it here and normalize from cache, while
                 * prefetching this thread's next channel (static schedule: c + nt) */
                float mc = (float)s.mean, a = bn_affine_factor(scale[c], s.m2 / s.n, eps);
                float b = bias[c];
                i64 cn = c + nt < C ? c + nt : -1;
                for (i64 n = 0; n < N; n++)
                    row_affine(x + n * rs + c * S, out + n * rs + c * S, S, mc, a, b,
                               cn >= 0 ? x + n * rs + cn * S : NULL, relu, stream);
                nt_fence(stream);
            }
        }
    } else {
        i64 ntask = p.ngroups * p.nrb;
#pragma omp parallel num_threads(nt)
        {
            i64 L = p.L;
            float *facc = malloc(sizeof(float) * (size_t)L * 4);
            double *dbuf = malloc(sizeof(double) * (size_t)(L * 2 + p.G));
            stat_t *ls = malloc(sizeof(stat_t) * (size_t)p.G);
            if (!facc || !dbuf || !ls) {
#pragma omp atomic write
                failed = 1;
            } else {
#pragma omp for schedule(dynamic, 1)
                for (i64 t = 0; t < ntask; t++) {
                    i64 gi = t / p.nrb, rb = t % p.nrb;
                    i64 c0 = gi * p.G, g = c0 + p.G <= C ? p.G : C - c0;
                    i64 n0 = rb * p.B, n1 = n0 + p.B < N ? n0 + p.B : N;
                    tile_stats_short(x, C, S, c0, g, n0, n1, facc, dbuf, ls);
                    for (i64 q = 0; q < g; q++)
                        part[(c0 + q) * p.nrb + rb] = ls[q];
                    if (fused) {
                        float *ml = facc + L, *al = facc + 2 * L, *bl = facc + 3 * L;
                        for (i64 q = 0; q < g; q++) {
                            float mc = (float)ls[q].mean;
                            float a = bn_affine_factor(scale[c0 + q], ls[q].m2 / ls[q].n, eps);
                            for (i64 tt = 0; tt < S; tt++) {
                                ml[q * S + tt] = mc;
                                al[q * S + tt] = a;
                                bl[q * S + tt] = bias[c0 + q];
                            }
                        }
                        /* prefetch the group this thread likely takes next (dynamic schedule:
                         * the threads take turns; a static one was measured slower where the
                         * channels span several row blocks) */
                        i64 gn = gi + nt < p.ngroups ? (gi + nt) * p.G : -1;
                        rows_affine_lanes(x + c0 * S, out + c0 * S, rs, 0, N, g * S, ml, al, bl,
                                          relu, stream, gn >= 0 ? x + gn * S : NULL);
                        nt_fence(stream);
                    }
                }
            }
            free(facc);
            free(dbuf);
            free(ls);
        }
    }
    if (failed) {
        free(part); free(st); free(mean32); free(a32);
        return -1;
    }

    for (i64 c = 0; c < C; c++) {
        st[c] = part[c * p.nrb];
        for (i64 rb = 1; rb < p.nrb; rb++)
            chan_merge(&st[c], &part[c * p.nrb + rb]);
    }
    finish_forward(C, m, st, scale, run_mean, run_var, eps, factor, savemean, saveinvvar,
                   mean32, a32);

    int rc = 0;
    if (!fused) {
        rc = elementwise(x, out, N, C, S, mean32, a32, bias, relu, NULL);
    }
    free(part); free(st); free(mean32); free(a32);
    return rc;
}

/* Channels per lane group of the short-row elementwise passes: whole rows where their lane arrays
 * stay small, so every task is one contiguous block of memory; else about LANE_TARGET lanes. */
static i64 elementwise_group(i64 C, i64 S)
{
    if (C * S <= ROW_LANES)
        return C;
    i64 G = LANE_TARGET / S;
    if (G < 1)
        G = 1;
    return G > C ? C : G;
}

/* Tasks of the short-row elementwise passes: lane groups of G whole channels (L = G * S floats)
   times row blocks of B rows, about ELEMWISE_CHUNK floats each. */
typedef struct {
    i64 G, L, B, nrb, ntask;
} lane_plan;

static lane_plan plan_lanes(i64 N, i64 C, i64 S)
{
    lane_plan p;
    p.G = elementwise_group(C, S);
    p.L = p.G * S;
    p.B = ELEMWISE_CHUNK / p.L;
    if (p.B < 1)
        p.B = 1;
    p.nrb = ceil_div(N, p.B);
    p.ntask = ceil_div(C, p.G) * p.nrb;
    return p;
}

/* Channels [*c0, *c0 + *g) and rows [*n0, *n1) of task t; returns its lane group's index. */
static i64 lane_task(const lane_plan *p, i64 t, i64 N, i64 C, i64 *c0, i64 *g, i64 *n0, i64 *n1)
{
    i64 gi = t / p->nrb, rb = t % p->nrb;
    *c0 = gi * p->G;
    *g = *c0 + p->G <= C ? p->G : C - *c0;
    *n0 = rb * p->B;
    *n1 = *n0 + p->B < N ? *n0 + p->B : N;
    return gi;
}

/* out = fmaf(x - m[c], a[c], b[c]) (relu'd when relu), or out = x * a[c] when m is NULL (x masked
 * by y where y is not NULL); out may be x */
static int elementwise(const float *x, float *out, i64 N, i64 C, i64 S, const float *m,
                       const float *a, const float *b, int relu, const float *y)
{
    i64 rs = C * S;
    int nt = threads_for(N * rs);
    int stream = nt_stream(out, x, N * rs);
    if (S >= SHORT_S) {
        i64 ntask = N * C;
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(static) nowait
            for (i64 t = 0; t < ntask; t++) {
                i64 c = t % C;
                if (m)
                    row_affine(x + t * S, out + t * S, S, m[c], a[c], b[c], NULL, relu, stream);
                else
                    row_scale(x + t * S, y ? y + t * S : NULL, out + t * S, S, a[c], stream);
            }
            nt_fence(stream); /* once per thread: a fence per row stalls on short rows */
        }
        return 0;
    }
    if (S >= LANES && S >= FLAT_MIN_S) {
        i64 rows = ELEMWISE_CHUNK / S, ntask = ceil_div(N * C, rows);
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(static) nowait
            for (i64 t = 0; t < ntask; t++) {
                i64 r1 = (t + 1) * rows < N * C ? (t + 1) * rows : N * C;
                ew_flat(x, y, out, t * rows, r1, S, C, m, a, b, relu, stream);
            }
            nt_fence(stream);
        }
        return 0;
    }
    /* lane groups of whole channels, row blocks of about ELEMWISE_CHUNK floats */
    lane_plan plan = plan_lanes(N, C, S);
    i64 L = plan.L;
    int failed = 0;
#pragma omp parallel num_threads(nt)
    {
        float *lanes = malloc(sizeof(float) * (size_t)L * 3);
        i64 cur = -1;
        if (!lanes) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (i64 t = 0; t < plan.ntask; t++) {
                i64 c0, g, n0, n1;
                i64 gi = lane_task(&plan, t, N, C, &c0, &g, &n0, &n1);
                if (gi != cur) {
                    expand(a, c0, g, S, lanes + L);
                    if (m) {
                        expand(m, c0, g, S, lanes);
                        expand(b, c0, g, S, lanes + 2 * L);
                    }
                    cur = gi;
                }
                if (m)
                    rows_affine_lanes(x + c0 * S, out + c0 * S, rs, n0, n1, g * S, lanes,
                                      lanes + L, lanes + 2 * L, relu, stream, NULL);
                else
                    rows_scale_lanes(x + c0 * S, y ? y + c0 * S : NULL, out + c0 * S, rs, n0, n1,
                                     g * S, lanes + L, stream);
            }
        }
        nt_fence(stream);
        free(lanes);
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* forward, inference                                                                              */

int bn_forward_infer(const float *x, float *out, i64 N, i64 C, i64 S, const float *scale,
                     const float *bias, const float *run_mean, const float *run_var, double eps,
                     int relu)
{
    float *a32 = malloc(sizeof(float) * (size_t)C);
    if (!a32)
        return -1;
    for (i64 c = 0; c < C; c++)
        a32[c] = bn_affine_factor(scale[c], run_var[c], eps);
    int rc = elementwise(x, out, N, C, S, run_mean, a32, bias, relu, NULL);
    free(a32);
    return rc;
}

/* dx = dy * k[c], k = scale * invstd(run_var), dy masked by the forward's output y if not NULL */
int bn_backward_infer(const float *dy, float *dx, i64 N, i64 C, i64 S, const float *scale,
                      const float *run_var, double eps, const float *y)
{
    float *k = malloc(sizeof(float) * (size_t)C);
    if (!k)
        return -1;
    for (i64 c = 0; c < C; c++)
        k[c] = bn_affine_factor(scale[c], run_var[c], eps);
    int rc = elementwise(dy, dx, N, C, S, NULL, k, NULL, 0, y);
    free(k);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* backward, training                                                                              */

typedef struct {
    float k, c0, c1, m;
    double gs;  /* dscale */
} bconst_t;

#define NSUMS 3  /* per channel: sum(dy), sum(dy * (x - mean)), sum(x - mean), mean = savemean */

/* The numpy path's and the CUDA finalize's float64 steps. r = sum(x - mean) / m is the exact batch
 * mean's offset from the float32 savemean, so the gradients are those of the exact mean:
 * gs = (sum(dy (x - mean)) - r sum(dy)) * invstd, k = scale * invstd, c1 = k * invstd * gs / m,
 * c0 = k * gb / m - r * c1. */
/* A rounding-level correction term, or 0 where it is not finite: with an Inf in dy, the result is
 * PyTorch's formula without it (a correction must not turn its +-Inf into Inf - Inf = NaN). */
static double correction(double v)
{
    return v - v == 0.0 ? v : 0.0;
}

static bconst_t backward_const(i64 m, float scale, float mean, float invstd, const double *sums)
{
    double inv = (double)invstd, fm = (double)m;
    double r = sums[2] / fm;
    double gs = (sums[1] - correction(r * sums[0])) * inv;
    double k = (double)scale * inv;
    double c1 = k * inv * gs / fm;
    bconst_t b;
    b.k = (float)k;
    b.c1 = (float)c1;
    b.c0 = (float)(k * sums[0] / fm - correction(r * c1));
    b.m = mean;
    b.gs = gs;
    return b;
}

int bn_backward_train(const float *x, const float *dy, float *dx, i64 N, i64 C, i64 S,
                      const float *scale, const float *savemean, const float *saveinvvar,
                      float *dscale, float *dbias, const float *y)
{
    plan_t p = make_plan(N, C, S, BWD_TILE_BYTES);
    i64 rs = C * S, m = N * S;
    int nt = threads_for(N * rs);
    double *part = malloc(sizeof(double) * NSUMS * (size_t)(C * p.nrb));
    if (!part)
        return -1;
    int fused = p.nrb == 1 && dx != NULL;
    int failed = 0;
    int stream = dx != NULL && nt_stream(dx, dy, N * rs);

    if (S >= SHORT_S) {
        i64 ntask = C * p.nrb;
#pragma omp parallel for schedule(static, 1) num_threads(nt)
        for (i64 t = 0; t < ntask; t++) {
            i64 c = t / p.nrb, rb = t % p.nrb;
            i64 n0 = rb * p.B, n1 = n0 + p.B < N ? n0 + p.B : N;
            double a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
            float mc = savemean[c];
            for (i64 n = n0; n < n1; n++)
                lanes_bwd(x + n * rs + c * S, dy + n * rs + c * S, y ? y + n * rs + c * S : NULL, S,
                          mc, a1, a2, a3);
            double *sums = part + NSUMS * (c * p.nrb + rb);
            sums[0] = fold(a1);
            sums[1] = fold(a2);
            sums[2] = fold(a3);
            if (fused) {
                bconst_t q = backward_const(m, scale[c], mc, saveinvvar[c], sums);
                /* as in the forward: prefetch this thread's next channel (static schedule) */
                i64 on = c + nt < C ? nt * S : -1; /* offset of the next channel */
                for (i64 n = 0; n < N; n++) {
                    i64 o = n * rs + c * S;
                    row_dx(x + o, dy + o, y ? y + o : NULL, dx + o, S, q.m, q.k, q.c0, q.c1,
                           on >= 0 ? x + o + on : NULL, on >= 0 ? dy + o + on : NULL, stream);
                }
                nt_fence(stream);
            }
        }
    } else {
        i64 ntask = p.ngroups * p.nrb;
#pragma omp parallel num_threads(nt)
        {
            i64 L = p.L;
            double *acc = malloc(sizeof(double) * (size_t)L * NSUMS);
            float *lanes = malloc(sizeof(float) * (size_t)L * 4);
            if (!acc || !lanes) {
#pragma omp atomic write
                failed = 1;
            } else {
#pragma omp for schedule(dynamic, 1)
                for (i64 t = 0; t < ntask; t++) {
                    i64 gi = t / p.nrb, rb = t % p.nrb;
                    i64 c0 = gi * p.G, g = c0 + p.G <= C ? p.G : C - c0;
                    i64 n0 = rb * p.B, n1 = n0 + p.B < N ? n0 + p.B : N;
                    i64 Lg = g * S;
                    float *ml = lanes;
                    expand(savemean, c0, g, S, ml);
                    memset(acc, 0, sizeof(double) * (size_t)L * NSUMS);
                    cols_bwd(x + c0 * S, dy + c0 * S, y ? y + c0 * S : NULL, rs, n0, n1, Lg, ml,
                             acc, acc + L,
                             acc + 2 * L, lanes + L, lanes + 2 * L, lanes + 3 * L);
                    for (i64 q = 0; q < g; q++) {
                        double *sums = part + NSUMS * ((c0 + q) * p.nrb + rb);
                        for (int u = 0; u < NSUMS; u++) {
                            double su = 0.0;
                            for (i64 tt = 0; tt < S; tt++)
                                su += acc[u * L + q * S + tt];
                            sums[u] = su;
                        }
                    }
                    if (fused) {
                        float *kl = lanes + L, *c0l = lanes + 2 * L, *c1l = lanes + 3 * L;
                        for (i64 q = 0; q < g; q++) {
                            i64 c = c0 + q;
                            bconst_t b = backward_const(m, scale[c], savemean[c], saveinvvar[c],
                                                        part + NSUMS * c);
                            for (i64 tt = 0; tt < S; tt++) {
                                kl[q * S + tt] = b.k;
                                c0l[q * S + tt] = b.c0;
                                c1l[q * S + tt] = b.c1;
                            }
                        }
                        i64 gn = gi + nt < p.ngroups ? (gi + nt) * p.G : -1; /* as forwards */
                        rows_dx_lanes(x + c0 * S, dy + c0 * S, y ? y + c0 * S : NULL, dx + c0 * S,
                                      rs, 0, N, Lg, ml, kl, c0l, c1l, stream,
                                      gn >= 0 ? x + gn * S : NULL, gn >= 0 ? dy + gn * S : NULL);
                        nt_fence(stream);
                    }
                }
            }
            free(acc);
            free(lanes);
        }
    }
    if (failed) {
        free(part);
        return -1;
    }

    bconst_t *q = malloc(sizeof(bconst_t) * (size_t)C);
    if (!q) {
        free(part);
        return -1;
    }
    for (i64 c = 0; c < C; c++) {
        double sums[NSUMS] = {0.0, 0.0, 0.0};
        for (i64 rb = 0; rb < p.nrb; rb++)
            for (int u = 0; u < NSUMS; u++)
                sums[u] += part[NSUMS * (c * p.nrb + rb) + u];
        q[c] = backward_const(m, scale[c], savemean[c], saveinvvar[c], sums);
        dbias[c] = (float)sums[0];
        dscale[c] = (float)q[c].gs;
    }
    free(part);

    if (dx != NULL && !fused) {
        if (S >= SHORT_S) {
            i64 ntask = N * C;
#pragma omp parallel num_threads(nt)
            {
#pragma omp for schedule(static) nowait
                for (i64 t = 0; t < ntask; t++) {
                    bconst_t b = q[t % C];
                    row_dx(x + t * S, dy + t * S, y ? y + t * S : NULL, dx + t * S, S, b.m, b.k,
                           b.c0, b.c1, NULL, NULL, stream);
                }
                nt_fence(stream); /* once per thread, as in elementwise() */
            }
        } else {
            lane_plan plan = plan_lanes(N, C, S);
            i64 L = plan.L;
#pragma omp parallel num_threads(nt)
            {
                float *lanes = malloc(sizeof(float) * (size_t)L * 4);
                i64 cur = -1;
                if (!lanes) {
#pragma omp atomic write
                    failed = 1;
                } else {
#pragma omp for schedule(static)
                    for (i64 t = 0; t < plan.ntask; t++) {
                        i64 c0, g, n0, n1;
                        i64 gi = lane_task(&plan, t, N, C, &c0, &g, &n0, &n1);
                        i64 Lg = g * S;
                        float *ml = lanes, *kl = lanes + L, *c0l = lanes + 2 * L, *c1l = lanes + 3 * L;
                        if (gi != cur) {
                            for (i64 qq = 0; qq < g; qq++)
                                for (i64 tt = 0; tt < S; tt++) {
                                    bconst_t b = q[c0 + qq];
                                    ml[qq * S + tt] = b.m;
                                    kl[qq * S + tt] = b.k;
                                    c0l[qq * S + tt] = b.c0;
                                    c1l[qq * S + tt] = b.c1;
                                }
                            cur = gi;
                        }
                        rows_dx_lanes(x + c0 * S, dy + c0 * S, y ? y + c0 * S : NULL, dx + c0 * S,
                                      rs, n0, n1, Lg, ml, kl, c0l, c1l, stream, NULL, NULL);
                    }
                }
                nt_fence(stream);
                free(lanes);
            }
        }
    }
    free(q);
    return failed ? -1 : 0;
}
