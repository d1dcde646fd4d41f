// cudasim_math.h: CUDA's device math (single-precision intrinsics and functions, conversions,
// half/bfloat16 fused multiply-adds) for the host build. Included by cudasim_runtime.h.
//
// Three kinds, listed per function in docs/cudasim.md:
// - IEEE operations (the _rn/_rz/_ru/_rd arithmetic, __fmaf_*, __frsqrt_rn, conversions with the
//   GPU's saturation and NaN-to-0 rules, half/bfloat16 fma): the GPU's exact bits. Directed
//   rounding runs the host's IEEE operation under fesetround (the fibers save and restore the
//   rounding mode with the rest of the FP state, and every function restores it before returning).
// - the fast intrinsics (__expf, __logf, __sinf, __fdividef, rsqrtf, ...): built as the GPU builds
//   them (nvcc 13's PTX: the same float multiplications by the same constants around ex2/lg2/sin/
//   cos/rcp approximations), with the approximation itself computed in double and rounded, so the
//   result lies within CUDA's documented bound and keeps the documented special cases (0 from
//   __fdividef for 2^126 < |y| < 2^128, ...).
// - CUDA's library functions with an ulp bound (expf, tanhf, erfinvf, ...): computed in double or
//   by the host's libm, within the bound but not necessarily the GPU's bits.
#ifndef CUDASIM_MATH_H
#define CUDASIM_MATH_H

#include <cfenv>
#include <climits>

namespace cudasim {
namespace math {

enum Mode { RN = FE_TONEAREST, RZ = FE_TOWARDZERO, RU = FE_UPWARD, RD = FE_DOWNWARD };

// One IEEE operation in rounding mode `mode`. The operands go through volatiles, so the compiler
// can neither fold the operation at compile time nor move it outside the fesetround pair.
#define CUDASIM_DIRECTED(NAME, T, PARAMS, EXPR)                                   \
    static __attribute__((noinline)) T NAME PARAMS {                              \
        const int saved = fegetround();                                           \
        fesetround(mode);                                                         \
        volatile T r = (EXPR);                                                    \
        fesetround(saved);                                                        \
        return r;                                                                 \
    }
static inline float vf(float x) { volatile float v = x; return v; }
static inline double vd(double x) { volatile double v = x; return v; }
CUDASIM_DIRECTED(add, float, (float a, float b, int mode), vf(a) + vf(b))
CUDASIM_DIRECTED(sub, float, (float a, float b, int mode), vf(a) - vf(b))
CUDASIM_DIRECTED(mul, float, (float a, float b, int mode), vf(a) * vf(b))
CUDASIM_DIRECTED(div, float, (float a, float b, int mode), vf(a) / vf(b))
CUDASIM_DIRECTED(sqrt_, float, (float a, int mode), sqrtf(vf(a)))
CUDASIM_DIRECTED(fma_, float, (float a, float b, float c, int mode), fmaf(vf(a), vf(b), vf(c)))
CUDASIM_DIRECTED(dadd, double, (double a, double b, int mode), vd(a) + vd(b))
CUDASIM_DIRECTED(dsub, double, (double a, double b, int mode), vd(a) - vd(b))
CUDASIM_DIRECTED(dmul, double, (double a, double b, int mode), vd(a) * vd(b))
CUDASIM_DIRECTED(ddiv, double, (double a, double b, int mode), vd(a) / vd(b))
CUDASIM_DIRECTED(dsqrt, double, (double a, int mode), sqrt(vd(a)))
CUDASIM_DIRECTED(dfma, double, (double a, double b, double c, int mode), fma(vd(a), vd(b), vd(c)))
CUDASIM_DIRECTED(i2f, float, (long long a, int mode), (float)(*(volatile long long*)&a))
CUDASIM_DIRECTED(u2f, float, (unsigned long long a, int mode),
                 (float)(*(volatile unsigned long long*)&a))
CUDASIM_DIRECTED(i2d, double, (long long a, int mode), (double)(*(volatile long long*)&a))
CUDASIM_DIRECTED(u2d, double, (unsigned long long a, int mode),
                 (double)(*(volatile unsigned long long*)&a))
#undef CUDASIM_DIRECTED

// float -> integer as the GPU's cvt.{rni,rzi,rpi,rmi}: round in the mode, then clamp to the
// destination range; NaN gives 0 (x86's cvttss2si would give INT_MIN for all three).
template <class I>
static inline I to_int(double x, int mode) {
    if (x != x) return 0;
    const double r = mode == RN ? nearbyint(x) : mode == RZ ? trunc(x) : mode == RU ? ceil(x)
                                                                                     : floor(x);
    const double lo = (double)std::numeric_limits<I>::min();
    const double hi_excl = ldexp(1.0, std::numeric_limits<I>::digits);
    if (r <= lo) return std::numeric_limits<I>::min();
    if (r >= hi_excl) return std::numeric_limits<I>::max();
    return (I)r;
}

// 1/sqrt(x) correctly rounded: the double estimate is within 2^-52 of the true value, so at most
// one neighbour can be nearer; compare y with the midpoints exactly (m^2 x against 1, in 128-bit
// integers).
static inline int cmp_sq_mul_one(double m, float x) {  // sign of m*m*x - 1, m and x positive
    int em, ex;
    const double fm = frexp(m, &em), fx = frexp((double)x, &ex);
    const unsigned long long M = (unsigned long long)ldexp(fm, 53), X = (unsigned long long)ldexp(fx, 53);
    // m = M 2^(em-53), x = X 2^(ex-53); M, X have at most 26 and 24 significant bits: shift them
    int tm = __builtin_ctzll(M), tx = __builtin_ctzll(X);
    const unsigned long long Ms = M >> tm, Xs = X >> tx;
    const int e = 2 * (em - 53 + tm) + (ex - 53 + tx);
    const unsigned __int128 P = (unsigned __int128)Ms * Ms * Xs;  // < 2^128
    if (e >= 0) return (P == 1 && e == 0) ? 0 : 1;
    if (-e >= 127) return -1;
    const unsigned __int128 one = (unsigned __int128)1 << (-e);
    return P < one ? -1 : P > one ? 1 : 0;
}

static inline float rsqrt_rn(float x) {
    if (x != x || x < 0.0f) return std::numeric_limits<float>::quiet_NaN();
    if (x == 0.0f) return copysignf(std::numeric_limits<float>::infinity(), x);
    if (x == std::numeric_limits<float>::infinity()) return 0.0f;
    float r = (float)(1.0 / sqrt((double)x));
    for (int i = 0; i < 2; ++i) {
        const float up = nextafterf(r, INFINITY), down = nextafterf(r, 0.0f);
        // m^2 x < 1 means m < 1/sqrt(x): the true value lies above midpoint m
        if (cmp_sq_mul_one(0.5 * ((double)r + (double)up), x) < 0) r = up;
        else if (cmp_sq_mul_one(0.5 * ((double)r + (double)down), x) > 0) r = down;
        else break;
    }
    return r;
}

// The GPU's approximate units, as accurate as a double computation rounded once; their special
// cases are IEEE's (ex2(-inf) = 0, lg2(0) = -inf, lg2(x < 0) = NaN, sin(inf) = NaN).
static inline float ex2_approx(float t) { return (float)exp2((double)t); }
static inline float lg2_approx(float x) { return (float)log2((double)x); }
static inline float sin_approx(float x) { return (float)sin((double)x); }
static inline float cos_approx(float x) { return (float)cos((double)x); }
// div.approx.f32 is x * (1/y): for 2^126 < |y| < 2^128 the reciprocal is below the normal range
// and flushed, so finite x gives 0 and infinite x NaN (CUDA's documented __fdividef behaviour).
static inline float div_approx(float x, float y) {
    const float ay = fabsf(y);
    if (ay > 0x1p126f && ay <= 0x1.fffffep127f) return x * copysignf(0.0f, y);
    return (float)((double)x / (double)y);
}

// -- half and bfloat16 fused multiply-add: round the exact a * b + c once -----------------------
// fma in double rounded to odd, then to float rounded to odd: both keep at least two bits more
// than the 11 (half) or 8 (bfloat16) of the target, so the final round-to-nearest is correct.
static inline float fma_to_odd_float(double a, double b, double c) {
    fenv_t env;
    feholdexcept(&env);
    fesetround(FE_TOWARDZERO);
    volatile double r = fma(vd(a), vd(b), vd(c));
    double rd = r;
    if (fetestexcept(FE_INEXACT)) {
        uint64_t bits;
        memcpy(&bits, &rd, 8);
        bits |= 1;
        memcpy(&rd, &bits, 8);
    }
    feclearexcept(FE_ALL_EXCEPT);
    volatile float f = (float)vd(rd);
    float fr = f;
    if (fetestexcept(FE_INEXACT)) {
        uint32_t bits;
        memcpy(&bits, &fr, 4);
        bits |= 1;
        memcpy(&fr, &bits, 4);
    }
    fesetenv(&env);
    return fr;
}

}  // namespace math
}  // namespace cudasim

// -- IEEE arithmetic with explicit rounding -----------------------------------------------------
#define CUDASIM_R4(NAME, T, IMPL, PARAMS, ...)                                                     \
    static inline T NAME##_rn PARAMS { return cudasim::math::IMPL(__VA_ARGS__, cudasim::math::RN); } \
    static inline T NAME##_rz PARAMS { return cudasim::math::IMPL(__VA_ARGS__, cudasim::math::RZ); } \
    static inline T NAME##_ru PARAMS { return cudasim::math::IMPL(__VA_ARGS__, cudasim::math::RU); } \
    static inline T NAME##_rd PARAMS { return cudasim::math::IMPL(__VA_ARGS__, cudasim::math::RD); }
CUDASIM_R4(__fadd, float, add, (float a, float b), a, b)
CUDASIM_R4(__fsub, float, sub, (float a, float b), a, b)
CUDASIM_R4(__fmul, float, mul, (float a, float b), a, b)
CUDASIM_R4(__fdiv, float, div, (float a, float b), a, b)
CUDASIM_R4(__frcp, float, div, (float a), 1.0f, a)
CUDASIM_R4(__fsqrt, float, sqrt_, (float a), a)
CUDASIM_R4(__fmaf, float, fma_, (float a, float b, float c), a, b, c)
CUDASIM_R4(__fmaf_ieee, float, fma_, (float a, float b, float c), a, b, c)
CUDASIM_R4(__dadd, double, dadd, (double a, double b), a, b)
CUDASIM_R4(__dsub, double, dsub, (double a, double b), a, b)
CUDASIM_R4(__dmul, double, dmul, (double a, double b), a, b)
CUDASIM_R4(__ddiv, double, ddiv, (double a, double b), a, b)
CUDASIM_R4(__drcp, double, ddiv, (double a), 1.0, a)
CUDASIM_R4(__dsqrt, double, dsqrt, (double a), a)
CUDASIM_R4(__fma, double, dfma, (double a, double b, double c), a, b, c)
CUDASIM_R4(__int2float, float, i2f, (int a), (long long)a)
CUDASIM_R4(__uint2float, float, u2f, (unsigned a), (unsigned long long)a)
CUDASIM_R4(__ll2float, float, i2f, (long long a), a)
CUDASIM_R4(__ull2float, float, u2f, (unsigned long long a), a)
CUDASIM_R4(__ll2double, double, i2d, (long long a), a)
CUDASIM_R4(__ull2double, double, u2d, (unsigned long long a), a)
CUDASIM_R4(__float2int, int, to_int<int>, (float a), (double)a)
CUDASIM_R4(__float2uint, unsigned, to_int<unsigned>, (float a), (double)a)
CUDASIM_R4(__float2ll, long long, to_int<long long>, (float a), (double)a)
CUDASIM_R4(__float2ull, unsigned long long, to_int<unsigned long long>, (float a), (double)a)
CUDASIM_R4(__double2int, int, to_int<int>, (double a), a)
CUDASIM_R4(__double2uint, unsigned, to_int<unsigned>, (double a), a)
CUDASIM_R4(__double2ll, long long, to_int<long long>, (double a), a)
CUDASIM_R4(__double2ull, unsigned long long, to_int<unsigned long long>, (double a), a)
#undef CUDASIM_R4
static inline float __frsqrt_rn(float x) { return cudasim::math::rsqrt_rn(x); }
static inline double __int2double_rn(int a) { return (double)a; }
static inline double __uint2double_rn(unsigned a) { return (double)a; }
static inline float __double2float_rn(double a) { return (float)a; }
static inline float __double2float_rz(double a) {
    const int saved = fegetround(); fesetround(FE_TOWARDZERO);
    volatile float r = (float)cudasim::math::vd(a); fesetround(saved); return r;
}
static inline float __double2float_ru(double a) {
    const int saved = fegetround(); fesetround(FE_UPWARD);
    volatile float r = (float)cudasim::math::vd(a); fesetround(saved); return r;
}
static inline float __double2float_rd(double a) {
    const int saved = fegetround(); fesetround(FE_DOWNWARD);
    volatile float r = (float)cudasim::math::vd(a); fesetround(saved); return r;
}
// cvt.sat.f32.f32: clamp to [0, 1], NaN to 0
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : (x != x ? 0.0f : x); }

// -- bit casts ---------------------------------------------------------------------------------
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
static inline double __longlong_as_double(long long v) { double d; memcpy(&d, &v, 8); return d; }
static inline long long __double_as_longlong(double d) { long long v; memcpy(&v, &d, 8); return v; }
static inline int __double2hiint(double d) { return (int)(__double_as_longlong(d) >> 32); }
static inline int __double2loint(double d) { return (int)__double_as_longlong(d); }
static inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}

// -- fast intrinsics, built as nvcc 13 builds them -------------------------------------------------
// glibc declares some of these names itself (without a definition the module could link to), so
// calls are routed to cudasim's versions by function-like macros.
static inline float __cudasim_expf(float x) { return cudasim::math::ex2_approx(__fmul_rn(x, 0x1.715476p0f)); }
static inline float __cudasim_exp10f(float x) { return cudasim::math::ex2_approx(__fmul_rn(x, 0x1.a934f0p1f)); }
static inline float __cudasim_logf(float x) { return __fmul_rn(cudasim::math::lg2_approx(x), 0x1.62e430p-1f); }
static inline float __cudasim_log2f(float x) { return cudasim::math::lg2_approx(x); }
static inline float __cudasim_log10f(float x) { return __fmul_rn(cudasim::math::lg2_approx(x), 0x1.344136p-2f); }
static inline float __cudasim_powf(float x, float y) {
    return cudasim::math::ex2_approx(__fmul_rn(y, cudasim::math::lg2_approx(x)));
}
static inline float __cudasim_sinf(float x) { return cudasim::math::sin_approx(x); }
static inline float __cudasim_cosf(float x) { return cudasim::math::cos_approx(x); }
static inline float __cudasim_tanf(float x) {
    return cudasim::math::div_approx(cudasim::math::sin_approx(x), cudasim::math::cos_approx(x));
}
static inline void __cudasim_sincosf(float x, float* s, float* c) {
    *s = cudasim::math::sin_approx(x);
    *c = cudasim::math::cos_approx(x);
}
static inline float __cudasim_tanhf(float x) { return (float)tanh((double)x); }
#define __expf(x) __cudasim_expf(x)
#define __exp10f(x) __cudasim_exp10f(x)
#define __logf(x) __cudasim_logf(x)
#define __log2f(x) __cudasim_log2f(x)
#define __log10f(x) __cudasim_log10f(x)
#define __powf(x, y) __cudasim_powf(x, y)
#define __sinf(x) __cudasim_sinf(x)
#define __cosf(x) __cudasim_cosf(x)
#define __tanf(x) __cudasim_tanf(x)
#define __sincosf(x, s, c) __cudasim_sincosf(x, s, c)
#define __tanhf(x) __cudasim_tanhf(x)
static inline float __fdividef(float a, float b) { return cudasim::math::div_approx(a, b); }
static inline float fdividef(float a, float b) { return a / b; }
// rsqrt.approx.f32 (bound: 2 ulp); correctly rounded here
static inline float rsqrtf(float x) { return cudasim::math::rsqrt_rn(x); }
static inline float rsqrt(float x) { return cudasim::math::rsqrt_rn(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }

// -- CUDA's library functions the host's libm lacks, in double and rounded once ----------------
namespace cudasim {
namespace math {
static const double kPi = 3.14159265358979323846;
static inline double sinpi_d(double x) {
    if (!std::isfinite(x)) return x - x;
    double r = fmod(x, 2.0);  // exact
    if (r == floor(r) && fmod(r, 1.0) == 0.0) return copysign(0.0, x);  // sinpi(n) = +-0
    if (fabs(r) == 0.5 || fabs(r) == 1.5) return (fabs(r) == 0.5) == (r > 0) ? 1.0 : -1.0;
    return sin(kPi * r);
}
static inline double cospi_d(double x) {
    if (!std::isfinite(x)) return x - x;
    double r = fabs(fmod(x, 2.0));
    if (r == 0.5 || r == 1.5) return 0.0;
    if (r == 0.0) return 1.0;
    if (r == 1.0) return -1.0;
    return cos(kPi * r);
}
static inline double erfinv_d(double y) {
    if (y != y || y < -1.0 || y > 1.0) return std::numeric_limits<double>::quiet_NaN();
    if (y == 1.0) return INFINITY;
    if (y == -1.0) return -INFINITY;
    if (y == 0.0) return y;
    // Giles' single-precision approximation as the start, then Newton on erf (or erfc in the tails)
    double w = -log((1.0 - y) * (1.0 + y)), x;
    if (w < 5.0) {
        w -= 2.5;
        double p = 2.81022636e-08;
        p = 3.43273939e-07 + p * w; p = -3.5233877e-06 + p * w; p = -4.39150654e-06 + p * w;
        p = 0.00021858087 + p * w; p = -0.00125372503 + p * w; p = -0.00417768164 + p * w;
        p = 0.246640727 + p * w; p = 1.50140941 + p * w;
        x = p * y;
    } else {
        w = sqrt(w) - 3.0;
        double p = -0.000200214257;
        p = 0.000100950558 + p * w; p = 0.00134934322 + p * w; p = -0.00367342844 + p * w;
        p = 0.00573950773 + p * w; p = -0.0076224613 + p * w; p = 0.00943887047 + p * w;
        p = 1.00167406 + p * w; p = 2.83297682 + p * w;
        x = p * y;
    }
    const double c = 2.0 / sqrt(kPi);
    if (fabs(y) <= 0.9) {
        for (int i = 0; i < 4; ++i) x -= (erf(x) - y) / (c * exp(-x * x));
    } else {  // in the tails Newton works on erfc(|x|) = 1 - |y|, which is exact here
        const double t = 1.0 - fabs(y);
        double ax = fabs(x);
        for (int i = 0; i < 6; ++i) ax += (erfc(ax) - t) / (c * exp(-ax * ax));
        x = copysign(ax, y);
    }
    return x;
}
static inline double erfcinv_d(double y) {
    if (y != y || y < 0.0 || y > 2.0) return std::numeric_limits<double>::quiet_NaN();
    if (y == 0.0) return INFINITY;
    if (y == 2.0) return -INFINITY;
    if (y > 0.0625 && y < 1.9375) return erfinv_d(1.0 - y);
    const bool upper = y < 1.0;
    const double t = upper ? y : 2.0 - y;  // erfc(x) = t, x > 0
    double x = sqrt(-log(t * 0.5 * sqrt(kPi)));  // asymptotic start
    for (int i = 0; i < 60; ++i) {  // Newton on log(erfc(x)) - log(t): well scaled in the tail
        const double e = erfc(x);
        const double step = (log(e) - log(t)) * e / (-2.0 / sqrt(kPi) * exp(-x * x));
        x -= step;
        if (fabs(step) < 1e-17 * x) break;
    }
    return upper ? x : -x;
}
static inline long double erfcx_l(long double x) {
    if (x != x) return x;
    if (x < 100.0L) return expl(x * x) * erfcl(x);
    const long double r = 1.0L / (x * x);  // asymptotic series: 1 - 1/(2x^2) + 3/(4x^4) - ...
    return (1.0L - 0.5L * r + 0.75L * r * r - 1.875L * r * r * r) / (x * sqrtl((long double)kPi));
}
static inline long double bessel_i_l(int order, long double x) {  // power series, |x| < ~100
    const long double q = x * x / 4.0L;
    long double term = order == 0 ? 1.0L : x / 2.0L, sum = term;
    for (int k = 1; k < 2000; ++k) {
        term *= q / ((long double)k * (k + order));
        sum += term;
        if (term < sum * 1e-21L) break;
    }
    return sum;
}
}  // namespace math
}  // namespace cudasim

static inline float sinpif(float x) { return (float)cudasim::math::sinpi_d(x); }
static inline float cospif(float x) { return (float)cudasim::math::cospi_d(x); }
static inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }
static inline double sinpi(double x) { return cudasim::math::sinpi_d(x); }
static inline double cospi(double x) { return cudasim::math::cospi_d(x); }
static inline float sinpi(float x) { return sinpif(x); }
static inline float cospi(float x) { return cospif(x); }
static inline float rcbrtf(float x) { return (float)(1.0 / cbrt((double)x)); }
static inline double rcbrt(double x) { return 1.0 / cbrt(x); }
static inline float rcbrt(float x) { return rcbrtf(x); }
static inline float rhypotf(float x, float y) { return (float)(1.0 / hypot((double)x, (double)y)); }
static inline float norm3df(float a, float b, float c) {
    return (float)sqrtl((long double)a * a + (long double)b * b + (long double)c * c);
}
static inline float norm4df(float a, float b, float c, float d) {
    return (float)sqrtl((long double)a * a + (long double)b * b + (long double)c * c + (long double)d * d);
}
static inline float rnorm3df(float a, float b, float c) {
    return (float)(1.0L / sqrtl((long double)a * a + (long double)b * b + (long double)c * c));
}
static inline float rnorm4df(float a, float b, float c, float d) {
    return (float)(1.0L / sqrtl((long double)a * a + (long double)b * b + (long double)c * c + (long double)d * d));
}
static inline float normf(int dim, const float* p) {
    long double s = 0;
    for (int i = 0; i < dim; ++i) s += (long double)p[i] * p[i];
    return (float)sqrtl(s);
}
static inline float rnormf(int dim, const float* p) { return (float)(1.0L / (long double)normf(dim, p)); }
static inline float erfinvf(float y) { return (float)cudasim::math::erfinv_d(y); }
static inline float erfcinvf(float y) { return (float)cudasim::math::erfcinv_d(y); }
static inline float erfcxf(float x) { return (float)cudasim::math::erfcx_l(x); }
static inline float normcdff(float x) { return (float)(0.5 * erfc(-(double)x / sqrt(2.0))); }
static inline float normcdfinvf(float p) { return (float)(-sqrt(2.0) * cudasim::math::erfcinv_d(2.0 * (double)p)); }
static inline float cyl_bessel_i0f(float x) { return (float)cudasim::math::bessel_i_l(0, fabsl(x)); }
static inline float cyl_bessel_i1f(float x) {
    return (float)copysignl(cudasim::math::bessel_i_l(1, fabsl(x)), (long double)x);
}
static inline double erfinv(double y) { return cudasim::math::erfinv_d(y); }
static inline double erfcinv(double y) { return cudasim::math::erfcinv_d(y); }
static inline double erfcx(double x) { return (double)cudasim::math::erfcx_l(x); }
static inline double normcdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
static inline double normcdfinv(double p) { return -sqrt(2.0) * cudasim::math::erfcinv_d(2.0 * p); }
static inline float erfinv(float y) { return erfinvf(y); }
static inline float erfcinv(float y) { return erfcinvf(y); }
static inline float erfcx(float x) { return erfcxf(x); }
static inline float normcdf(float x) { return normcdff(x); }
static inline float normcdfinv(float p) { return normcdfinvf(p); }
static inline float cyl_bessel_i0(float x) { return cyl_bessel_i0f(x); }
static inline float cyl_bessel_i1(float x) { return cyl_bessel_i1f(x); }
static inline float exp10(float x) { return exp10f(x); }

// CUDA overloads the C math functions for float in the global namespace (sqrt(float) is sqrtf);
// <cmath> puts those overloads in std only.
using std::acos; using std::acosh; using std::asin; using std::asinh; using std::atan;
using std::atan2; using std::atanh; using std::cbrt; using std::ceil; using std::copysign;
using std::cos; using std::cosh; using std::erf; using std::erfc; using std::exp; using std::exp2;
using std::expm1; using std::fabs; using std::fdim; using std::floor; using std::fma;
using std::fmax; using std::fmin; using std::fmod; using std::frexp; using std::hypot;
using std::ilogb; using std::isfinite; using std::isinf; using std::isnan; using std::ldexp;
using std::lgamma; using std::llrint; using std::llround; using std::log; using std::log10;
using std::log1p; using std::log2; using std::logb; using std::lrint; using std::lround;
using std::modf; using std::nearbyint; using std::nextafter; using std::pow; using std::remainder;
using std::remquo; using std::rint; using std::round; using std::scalbln; using std::scalbn;
using std::signbit; using std::sin; using std::sinh; using std::sqrt; using std::tan;
using std::tanh; using std::tgamma; using std::trunc;
static inline int __cudasim_signbitf(float x) { return std::signbit(x); }
#define __signbitf(x) __cudasim_signbitf(x)

// -- integer intrinsics ------------------------------------------------------------------------
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
static inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
static inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll((unsigned long long)v); }
static inline int __ffs(int v) { return __builtin_ffs(v); }
static inline int __ffsll(long long v) { return __builtin_ffsll(v); }
static inline unsigned __brev(unsigned v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
    v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
    return (v >> 16) | (v << 16);
}
static inline unsigned long long __brevll(unsigned long long v) {
    return ((unsigned long long)__brev((unsigned)v) << 32) | __brev((unsigned)(v >> 32));
}
static inline int __mul24(int a, int b) { return (int)((long long)(a << 8 >> 8) * (b << 8 >> 8)); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
static inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
static inline unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b) >> 1); }
static inline unsigned __urhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b + 1) >> 1); }
static inline unsigned __sad(int a, int b, unsigned c) { return (a > b ? (unsigned)a - (unsigned)b : (unsigned)b - (unsigned)a) + c; }
static inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return (a > b ? a - b : b - a) + c; }
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)(((((unsigned long long)hi << 32) | lo) << (s & 31u)) >> 32);
}
static inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)(((((unsigned long long)hi << 32) | lo) << (s > 32u ? 32u : s)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (s & 31u));
}
static inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (s > 32u ? 32u : s));
}

// -- half and bfloat16: the device-only functions of cuda_fp16.h / cuda_bf16.h ------------------
#define CUDASIM_HFMA(T, TO, FROM)                                                                 \
    static inline T __hfma(const T a, const T b, const T c) {                                     \
        return TO(cudasim::math::fma_to_odd_float(FROM(a), FROM(b), FROM(c)));                    \
    }                                                                                              \
    static inline T __hfma_sat(const T a, const T b, const T c) {                                 \
        const float r = FROM(__hfma(a, b, c));                                                     \
        return TO(r > 0.0f ? (r < 1.0f ? r : 1.0f) : 0.0f);                                        \
    }                                                                                              \
    static inline T __hfma_relu(const T a, const T b, const T c) {                                \
        const float r = FROM(__hfma(a, b, c));                                                     \
        return r != r ? TO(std::numeric_limits<float>::quiet_NaN()) : TO(r > 0.0f ? r : 0.0f);     \
    }
CUDASIM_HFMA(__half, __float2half_rn, __half2float)
CUDASIM_HFMA(__nv_bfloat16, __float2bfloat16_rn, __bfloat162float)
#undef CUDASIM_HFMA
#define CUDASIM_HFMA2(T2, T)                                                                      \
    static inline T2 __hfma2(const T2 a, const T2 b, const T2 c) {                                \
        T2 r; r.x = __hfma((T)a.x, (T)b.x, (T)c.x); r.y = __hfma((T)a.y, (T)b.y, (T)c.y); return r; \
    }                                                                                              \
    static inline T2 __hfma2_sat(const T2 a, const T2 b, const T2 c) {                            \
        T2 r; r.x = __hfma_sat((T)a.x, (T)b.x, (T)c.x); r.y = __hfma_sat((T)a.y, (T)b.y, (T)c.y); return r; \
    }                                                                                              \
    static inline T2 __hfma2_relu(const T2 a, const T2 b, const T2 c) {                           \
        T2 r; r.x = __hfma_relu((T)a.x, (T)b.x, (T)c.x); r.y = __hfma_relu((T)a.y, (T)b.y, (T)c.y); return r; \
    }
CUDASIM_HFMA2(__half2, __half)
CUDASIM_HFMA2(__nv_bfloat162, __nv_bfloat16)
#undef CUDASIM_HFMA2
// half/bfloat16 -> integer with the float rules (exact: every half and bfloat16 is a float)
#define CUDASIM_H2I(P, T, FROM)                                                                   \
    static inline int P##2int_rn(const T h) { return __float2int_rn(FROM(h)); }                  \
    static inline int P##2int_rd(const T h) { return __float2int_rd(FROM(h)); }                  \
    static inline int P##2int_ru(const T h) { return __float2int_ru(FROM(h)); }                  \
    static inline unsigned P##2uint_rn(const T h) { return __float2uint_rn(FROM(h)); }           \
    static inline unsigned P##2uint_rd(const T h) { return __float2uint_rd(FROM(h)); }           \
    static inline unsigned P##2uint_ru(const T h) { return __float2uint_ru(FROM(h)); }           \
    static inline long long P##2ll_rn(const T h) { return __float2ll_rn(FROM(h)); }              \
    static inline long long P##2ll_rd(const T h) { return __float2ll_rd(FROM(h)); }              \
    static inline long long P##2ll_ru(const T h) { return __float2ll_ru(FROM(h)); }              \
    static inline unsigned long long P##2ull_rn(const T h) { return __float2ull_rn(FROM(h)); }   \
    static inline unsigned long long P##2ull_rd(const T h) { return __float2ull_rd(FROM(h)); }   \
    static inline unsigned long long P##2ull_ru(const T h) { return __float2ull_ru(FROM(h)); }
CUDASIM_H2I(__half, __half, __half2float)
CUDASIM_H2I(__bfloat16, __nv_bfloat16, __bfloat162float)
#undef CUDASIM_H2I
// half/bfloat16 math: computed in float, rounded once to the 16-bit type (within the bounds CUDA
// documents for these approximate functions)
#define CUDASIM_HMATH(T, T2, TO, FROM)                                                            \
    static inline T hsqrt(const T a) { return TO(sqrtf(FROM(a))); }                              \
    static inline T hrsqrt(const T a) { return TO(cudasim::math::rsqrt_rn(FROM(a))); }           \
    static inline T hrcp(const T a) { return TO(1.0f / FROM(a)); }                               \
    static inline T hexp(const T a) { return TO(expf(FROM(a))); }                                \
    static inline T hexp2(const T a) { return TO(exp2f(FROM(a))); }                              \
    static inline T hexp10(const T a) { return TO(exp10f(FROM(a))); }                            \
    static inline T hlog(const T a) { return TO(logf(FROM(a))); }                                \
    static inline T hlog2(const T a) { return TO(log2f(FROM(a))); }                              \
    static inline T hlog10(const T a) { return TO(log10f(FROM(a))); }                            \
    static inline T hsin(const T a) { return TO(sinf(FROM(a))); }                                \
    static inline T hcos(const T a) { return TO(cosf(FROM(a))); }                                \
    static inline T htanh(const T a) { return TO(tanhf(FROM(a))); }                              \
    static inline T htanh_approx(const T a) { return TO(tanhf(FROM(a))); }                       \
    static inline T hceil(const T a) { return TO(ceilf(FROM(a))); }                              \
    static inline T hfloor(const T a) { return TO(floorf(FROM(a))); }                            \
    static inline T htrunc(const T a) { return TO(truncf(FROM(a))); }                            \
    static inline T hrint(const T a) { return TO(rintf(FROM(a))); }
CUDASIM_HMATH(__half, __half2, __float2half_rn, __half2float)
CUDASIM_HMATH(__nv_bfloat16, __nv_bfloat162, __float2bfloat16_rn, __bfloat162float)
#undef CUDASIM_HMATH
#define CUDASIM_H2MATH(T2, NAME, F)                                                               \
    static inline T2 NAME(const T2 a) { T2 r; r.x = F(a.x); r.y = F(a.y); return r; }
#define CUDASIM_H2MATH_ALL(T2)                                                                    \
    CUDASIM_H2MATH(T2, h2sqrt, hsqrt) CUDASIM_H2MATH(T2, h2rsqrt, hrsqrt)                         \
    CUDASIM_H2MATH(T2, h2rcp, hrcp) CUDASIM_H2MATH(T2, h2exp, hexp)                               \
    CUDASIM_H2MATH(T2, h2exp2, hexp2) CUDASIM_H2MATH(T2, h2exp10, hexp10)                         \
    CUDASIM_H2MATH(T2, h2log, hlog) CUDASIM_H2MATH(T2, h2log2, hlog2)                             \
    CUDASIM_H2MATH(T2, h2log10, hlog10) CUDASIM_H2MATH(T2, h2sin, hsin)                           \
    CUDASIM_H2MATH(T2, h2cos, hcos) CUDASIM_H2MATH(T2, h2tanh, htanh)                             \
    CUDASIM_H2MATH(T2, h2tanh_approx, htanh_approx) CUDASIM_H2MATH(T2, h2ceil, hceil)             \
    CUDASIM_H2MATH(T2, h2floor, hfloor) CUDASIM_H2MATH(T2, h2trunc, htrunc)                       \
    CUDASIM_H2MATH(T2, h2rint, hrint)
CUDASIM_H2MATH_ALL(__half2)
CUDASIM_H2MATH_ALL(__nv_bfloat162)
#undef CUDASIM_H2MATH_ALL
#undef CUDASIM_H2MATH

#endif  // CUDASIM_MATH_H
