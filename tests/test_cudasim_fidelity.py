"""The simulator computes what the GPU computes: one floating-point policy for the GPU build and
cudasim, CUDA's single-precision intrinsics with the GPU's bits (or within CUDA's documented
bounds), warp and launch rules as on sm_80/sm_90. Each case runs a small kernel written here and
compares with a reference computed independently (numpy, float64, exact integer arithmetic)."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from batchnorm_lib import config
from batchnorm_lib.backend.cuda import core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc")


# -- floating-point policy ------------------------------------------------------------------------
CONTRACT_SRC = r"""
extern "C" __global__ void contract(const float* a, const float* b, const float* c, float* plain,
                                    float* fused)
{
    const int i = threadIdx.x;
    plain[i] = a[i] * b[i] + c[i];
    fused[i] = fmaf(a[i], b[i], c[i]);
}
"""


def test_project_options_turn_contraction_off():
    assert "-fmad=false" in core.NVCC_OPTIONS
    with open(os.path.join(ROOT, "scripts", "check_kernels.sh")) as f:
        script = f.read()
    assert re.search(r'"\$nvcc" -cubin [^\n]*-fmad=false', script), \
        "check_kernels.sh must compile with the backend's -fmad=false"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_keeps_multiply_add_unfused(tmp_path, arch):
    """With the project's options a * b + c stays mul.rn + add.rn in the PTX (two roundings, as
    on the host) and only fmaf becomes fma.rn."""
    src = tmp_path / "contract.cu"
    src.write_text('extern "C" {\n%s\n}\n' % CONTRACT_SRC.replace('extern "C" ', ""))
    ptx = tmp_path / "contract.ptx"
    subprocess.run([NVCC, "-ptx", "-arch=" + arch] + list(core.NVCC_OPTIONS)
                   + [str(src), "-o", str(ptx)], check=True, capture_output=True, timeout=300)
    text = ptx.read_text()
    floats = [line.split()[0] for line in text.splitlines()
              if re.match(r"\s*(fma|mul|add|sub)\.\S*f32", line)]
    assert floats.count("fma.rn.f32") == 1, floats
    assert "mul.rn.f32" in floats and "add.rn.f32" in floats, floats
    # and without the option nvcc would have fused both: the test can tell the difference
    subprocess.run([NVCC, "-ptx", "-arch=" + arch, "-std=c++17", str(src), "-o", str(ptx)],
                   check=True, capture_output=True, timeout=300)
    assert ptx.read_text().count("fma.rn.f32") == 2


ok, why = config.probe("cudasim")
needs_cudasim = pytest.mark.skipif(not ok, reason="cudasim unavailable: %s" % why)

if ok:
    from batchnorm_lib.backend.cudasim import compiler, driver, gpuarray

    driver.init()


def module(src, **kw):
    kw.setdefault("no_extern_c", True)
    return compiler.SourceModule(src, **kw)


def arr(host):
    return gpuarray.to_gpu(np.ascontiguousarray(host))


@needs_cudasim
def test_simulator_rounds_twice_and_fmaf_once():
    rng = np.random.default_rng(20)
    n = 1000
    a, b, c = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    f = module(CONTRACT_SRC).get_function("contract")
    plain, fused = gpuarray.empty(n, np.float32), gpuarray.empty(n, np.float32)
    f(arr(a).gpudata, arr(b).gpudata, arr(c).gpudata, plain.gpudata, fused.gpudata,
      block=(n, 1, 1), grid=(1, 1))
    np.testing.assert_array_equal(plain.get(), (a * b) + c)
    # the exact product of two floats fits a double; one rounding of the exact sum to float32
    exact = _fma_reference(a, b, c)
    np.testing.assert_array_equal(fused.get(), exact)
    assert np.count_nonzero(plain.get() != fused.get()) > 0


def _fma_reference(a, b, c):
    """Correctly rounded float32 fma, from exact rational arithmetic."""
    from fractions import Fraction

    out = np.empty(len(a), np.float32)
    for i, (x, y, z) in enumerate(zip(a.tolist(), b.tolist(), c.tolist())):
        out[i] = _round_f32(Fraction(x) * Fraction(y) + Fraction(z))
    return out


def _round_f32(q):
    """The float32 nearest the rational q (ties to even), overflow to infinity."""
    from fractions import Fraction

    if q == 0:
        return np.float32(0.0)
    sign = -1 if q < 0 else 1
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    e = max(e, -126)  # subnormals: fixed quantum 2^-149
    quantum = Fraction(2) ** (e - 23)
    m = q / quantum
    n = m.numerator // m.denominator
    rem = m - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    value = n * quantum
    if value >= Fraction(2) ** 128:
        return np.float32(sign * np.inf)
    return np.float32(sign * float(value))


# -- intrinsics and math functions ----------------------------------------------------------------
# Every kernel reads a, b, c (float32 arrays) and writes the raw bits of one expression per element.
EXACT_FLOAT = {  # name -> (expression, exact reference as a Fraction, or None for "not finite")
    "__fadd": ("__fadd_{m}(a, b)", lambda a, b, c: a + b),
    "__fsub": ("__fsub_{m}(a, b)", lambda a, b, c: a - b),
    "__fmul": ("__fmul_{m}(a, b)", lambda a, b, c: a * b),
    "__fdiv": ("__fdiv_{m}(a, b)", lambda a, b, c: a / b),
    "__frcp": ("__frcp_{m}(a)", lambda a, b, c: 1 / a),
    "__fmaf": ("__fmaf_{m}(a, b, c)", lambda a, b, c: a * b + c),
    "__fmaf_ieee": ("__fmaf_ieee_{m}(a, b, c)", lambda a, b, c: a * b + c),
}
MODES = ("rn", "rz", "ru", "rd")
INT_TYPES = {"int": (32, True), "uint": (32, False), "ll": (64, True), "ull": (64, False)}

KERNEL = r"""
extern "C" __global__ void t_{name}(const float* A, const float* B, const float* C,
                                    unsigned long long* out, int n)
{{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {{
        const float a = A[i], b = B[i], c = C[i];
        (void)a; (void)b; (void)c;
        out[i] = bits({expr});
    }}
}}
"""
PRELUDE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
__device__ unsigned long long bits(float v) { return __float_as_uint(v); }
__device__ unsigned long long bits(int v) { return (unsigned long long)(long long)v; }
__device__ unsigned long long bits(unsigned v) { return v; }
__device__ unsigned long long bits(long long v) { return (unsigned long long)v; }
__device__ unsigned long long bits(unsigned long long v) { return v; }
__device__ unsigned long long bits(__half v) { return __half_as_ushort(v); }
__device__ unsigned long long bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ float sincos_sum(float a) { float s, c; __sincosf(a, &s, &c); return s + 2.0f * c; }
"""


def _expressions():
    exprs = {}
    for name, (expr, _) in EXACT_FLOAT.items():
        for m in MODES:
            exprs["%s_%s" % (name, m)] = expr.format(m=m)
    for m in MODES:
        exprs["__fsqrt_%s" % m] = "__fsqrt_%s(a)" % m
        for t in INT_TYPES:
            exprs["__float2%s_%s" % (t, m)] = "__float2%s_%s(a)" % (t, m)
        exprs["__int2float_%s" % m] = "__int2float_%s(__float_as_int(a))" % m
        exprs["__uint2float_%s" % m] = "__uint2float_%s(__float_as_uint(a))" % m
        exprs["__ll2float_%s" % m] = ("__ll2float_%s((long long)__float_as_uint(a) << 32 | "
                                      "__float_as_uint(b))" % m)
        exprs["__ull2float_%s" % m] = ("__ull2float_%s((unsigned long long)__float_as_uint(a) "
                                       "<< 32 | __float_as_uint(b))" % m)
    exprs.update({
        "__frsqrt_rn": "__frsqrt_rn(a)", "__saturatef": "__saturatef(a)",
        "float2half_rn": "__float2half_rn(a)", "float2bfloat16_rn": "__float2bfloat16_rn(a)",
        "hfma": "__hfma(__float2half_rn(a), __float2half_rn(b), __float2half_rn(c))",
        "hfma_bf16": ("__hfma(__float2bfloat16_rn(a), __float2bfloat16_rn(b), "
                      "__float2bfloat16_rn(c))"),
        "hfma_sat": "__hfma_sat(__float2half_rn(a), __float2half_rn(b), __float2half_rn(c))",
        "hfma_relu": "__hfma_relu(__float2half_rn(a), __float2half_rn(b), __float2half_rn(c))",
        "half2int_rd": "__half2int_rd(__float2half_rn(a))",
        # approximate intrinsics
        "__expf": "__expf(a)", "__exp10f": "__exp10f(a)", "__logf": "__logf(a)",
        "__log2f": "__log2f(a)", "__log10f": "__log10f(a)", "__sinf": "__sinf(a)",
        "__cosf": "__cosf(a)", "__tanf": "__tanf(a)", "__powf": "__powf(a, b)",
        "__fdividef": "__fdividef(a, b)", "rsqrtf": "rsqrtf(a)", "__tanhf": "__tanhf(a)",
        "__sincosf": "sincos_sum(a)",
    })
    for name in LIBRARY:
        exprs["lib_" + name] = LIBRARY[name][0]
    return exprs


# CUDA Programming Guide, "Mathematical Functions": maximum ulp error of the single-precision
# library functions (full range unless noted); reference computed in double (mpmath where numpy
# has no such function).
LIBRARY = {
    "expf": ("expf(a)", 2, "exp"), "exp2f": ("exp2f(a)", 2, "exp2"),
    "exp10f": ("exp10f(a)", 2, "exp10"), "expm1f": ("expm1f(a)", 1, "expm1"),
    "logf": ("logf(a)", 1, "log"), "log2f": ("log2f(a)", 1, "log2"),
    "log10f": ("log10f(a)", 2, "log10"), "log1pf": ("log1pf(a)", 1, "log1p"),
    "sinf": ("sinf(a)", 2, "sin"), "cosf": ("cosf(a)", 2, "cos"), "tanf": ("tanf(a)", 4, "tan"),
    "sinpif": ("sinpif(a)", 1, "sinpi"), "cospif": ("cospif(a)", 1, "cospi"),
    "asinf": ("asinf(a)", 2, "arcsin"), "acosf": ("acosf(a)", 2, "arccos"),
    "atanf": ("atanf(a)", 2, "arctan"), "atan2f": ("atan2f(a, b)", 3, "arctan2"),
    "sinhf": ("sinhf(a)", 3, "sinh"), "coshf": ("coshf(a)", 2, "cosh"),
    "tanhf": ("tanhf(a)", 2, "tanh"), "asinhf": ("asinhf(a)", 3, "arcsinh"),
    "acoshf": ("acoshf(a)", 4, "arccosh"), "atanhf": ("atanhf(a)", 3, "arctanh"),
    "powf": ("powf(a, b)", 4, "power"), "cbrtf": ("cbrtf(a)", 1, "cbrt"),
    "rcbrtf": ("rcbrtf(a)", 1, "rcbrt"), "hypotf": ("hypotf(a, b)", 3, "hypot"),
    "rhypotf": ("rhypotf(a, b)", 2, "rhypot"), "norm3df": ("norm3df(a, b, c)", 3, "norm3"),
    "rnorm3df": ("rnorm3df(a, b, c)", 2, "rnorm3"), "norm4df": ("norm4df(a, b, c, a)", 3, "norm4"),
    "rnorm4df": ("rnorm4df(a, b, c, a)", 2, "rnorm4"), "erff": ("erff(a)", 2, "erf"),
    "erfcf": ("erfcf(a)", 4, "erfc"), "erfinvf": ("erfinvf(a)", 2, "erfinv"),
    "erfcinvf": ("erfcinvf(a)", 4, "erfcinv"), "erfcxf": ("erfcxf(a)", 4, "erfcx"),
    "normcdff": ("normcdff(a)", 5, "normcdf"), "normcdfinvf": ("normcdfinvf(a)", 5, "normcdfinv"),
    "tgammaf": ("tgammaf(a)", 5, "gamma"), "cyl_bessel_i0f": ("cyl_bessel_i0f(a)", 6, "i0"),
    "cyl_bessel_i1f": ("cyl_bessel_i1f(a)", 6, "i1"), "sqrtf": ("sqrtf(a)", 0, "sqrt"),
    "fdividef": ("fdividef(a, b)", 2, "divide"),
}

_math_module = {}


def _math_functions():
    if not _math_module:
        exprs = _expressions()
        src = PRELUDE + "".join(KERNEL.format(name=n, expr=e) for n, e in exprs.items())
        mod = module(src)
        _math_module.update({n: mod.get_function("t_" + n) for n in exprs})
    return _math_module


def run_math(name, a, b=None, c=None):
    n = len(a)
    b = np.zeros(n, np.float32) if b is None else b
    c = np.zeros(n, np.float32) if c is None else c
    out = gpuarray.empty(n, np.uint64)
    _math_functions()[name](arr(a.astype(np.float32)).gpudata, arr(b.astype(np.float32)).gpudata,
                            arr(c.astype(np.float32)).gpudata, out.gpudata, np.int32(n),
                            block=(128, 1, 1), grid=(max(1, min(8, n // 128)), 1))
    return out.get()


def as_f32(bits):
    return (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def random_floats(rng, n, lo_exp=-30, hi_exp=30, specials=False):
    """Random float32 of random sign, mantissa and exponent in [2^lo_exp, 2^hi_exp)."""
    mant = rng.integers(0, 1 << 23, n, dtype=np.uint32)
    exp = rng.integers(lo_exp + 127, hi_exp + 127, n).astype(np.uint32)
    sign = rng.integers(0, 2, n, dtype=np.uint32) << 31
    x = (sign | (exp << 23) | mant).view(np.float32)
    if specials:
        x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45]
    return x


def _round_mode(q, mode):
    """The float32 of exact rational q rounded in mode rn/rz/ru/rd (IEEE, with overflow)."""
    from fractions import Fraction

    if q == 0:
        return np.float32(0.0)
    nearest = _round_f32(q)
    if mode == "rn":
        return nearest
    f = Fraction(float(nearest)) if np.isfinite(nearest) else None
    up = mode == "ru" or (mode == "rz" and q < 0)
    if f is not None and f == q:
        return nearest
    if up:
        if f is not None and f > q:
            return nearest
        return np.nextafter(nearest, np.float32(np.inf)) if f is not None else \
            (nearest if q > 0 else np.float32(-np.finfo(np.float32).max))
    if f is not None and f < q:
        return nearest
    return np.nextafter(nearest, np.float32(-np.inf)) if f is not None else \
        (nearest if q < 0 else np.float32(np.finfo(np.float32).max))


@needs_cudasim
@pytest.mark.parametrize("name", sorted(EXACT_FLOAT))
def test_rounded_arithmetic_is_exact(name):
    from fractions import Fraction

    rng = np.random.default_rng(sum(map(ord, name)))
    n = 700
    a, b = random_floats(rng, n, -20, 20), random_floats(rng, n, -20, 20)
    c = random_floats(rng, n, -40, 40)
    # results near the bottom of the range (subnormals) and past the top (overflow) too
    a[:20] *= np.float32(2.0 ** -100)
    a[20:40] *= np.float32(2.0 ** 100)
    b[20:40] *= np.float32(2.0 ** 20)
    ref_fn = EXACT_FLOAT[name][1]
    for m in MODES:
        got = as_f32(run_math("%s_%s" % (name, m), a, b, c))
        want = np.array([_round_mode(ref_fn(Fraction(float(x)), Fraction(float(y)),
                                            Fraction(float(z))), m)
                         for x, y, z in zip(a, b, c)], np.float32)
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert bad.size == 0, "%s_%s: %d of %d differ, e.g. %r -> %r, want %r" % (
            name, m, bad.size, n, (a[bad[0]], b[bad[0]], c[bad[0]]), got[bad[0]], want[bad[0]])


def _sqrt_rounded(x, mode, reciprocal=False):
    """sqrt(x) or 1/sqrt(x) of a positive float32, correctly rounded, by exact comparisons."""
    from fractions import Fraction

    X = Fraction(float(x))
    est = np.float32(1 / np.sqrt(np.float64(x)) if reciprocal else np.sqrt(np.float64(x)))

    def below(y):  # the true value is below float y
        Y = Fraction(float(y))
        return (Y * Y * X > 1) if reciprocal else (Y * Y > X)

    def lower_bound(y):  # the largest float <= the true value
        while below(y):
            y = np.nextafter(y, np.float32(0))
        while not below(np.nextafter(y, np.float32(np.inf))):
            y = np.nextafter(y, np.float32(np.inf))
        return y

    lo = lower_bound(est)
    Y = Fraction(float(lo))
    exact = (Y * Y * X == 1) if reciprocal else (Y * Y == X)
    if exact or mode in ("rd", "rz"):
        return lo
    hi = np.nextafter(lo, np.float32(np.inf))
    if mode == "ru":
        return hi
    mid = (Y + Fraction(float(hi))) / 2
    return hi if ((mid * mid * X < 1) if reciprocal else (mid * mid < X)) else lo


@needs_cudasim
def test_sqrt_and_rsqrt_are_correctly_rounded():
    rng = np.random.default_rng(7)
    x = np.abs(random_floats(rng, 1500, -149 + 24, 127))
    x[:100] = np.abs(random_floats(rng, 100, -126, -100))  # subnormal inputs
    x[100:200] = (rng.integers(1, 1 << 23, 100).astype(np.uint32)).view(np.float32)
    for m in MODES:
        got = as_f32(run_math("__fsqrt_" + m, x))
        want = np.array([_sqrt_rounded(v, m) for v in x], np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), "__fsqrt_" + m)
    got = as_f32(run_math("__frsqrt_rn", x))
    want = np.array([_sqrt_rounded(v, "rn", reciprocal=True) for v in x], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # the GPU's rsqrtf is the approximate unit (2 ulp): the simulator's is within that
    got = as_f32(run_math("rsqrtf", x))
    assert np.max(np.abs(got.view(np.int32) - want.view(np.int32))) <= 2
    special = np.array([0.0, -0.0, np.inf, -1.0, np.nan], np.float32)
    for name in ("__frsqrt_rn", "rsqrtf"):
        np.testing.assert_array_equal(as_f32(run_math(name, special)),
                                      np.array([np.inf, -np.inf, 0, np.nan, np.nan], np.float32))


def _float_to_int_reference(x, mode, bits, signed):
    import math
    from fractions import Fraction

    if math.isnan(x):
        return 0
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if math.isinf(x):
        return hi if x > 0 else lo
    q = Fraction(x)
    r = {"rz": math.trunc, "ru": math.ceil, "rd": math.floor}.get(mode, round)(q)
    return min(max(r, lo), hi)  # Python's round() of a Fraction ties to even


@needs_cudasim
def test_float_to_int_conversions_saturate_and_map_nan_to_zero():
    rng = np.random.default_rng(11)
    x = random_floats(rng, 600, -3, 70, specials=True)
    x[8:60] = rng.integers(-40, 40, 52) + np.float32(0.5)  # ties
    x[60:80] = np.float32(2.0 ** 31) * np.array([1, -1, 0.999999, -1.0000001, 2] * 4, np.float32)
    for t, (nbits, signed) in INT_TYPES.items():
        for m in MODES:
            got = run_math("__float2%s_%s" % (t, m), x)
            got = got.astype(np.int64) if signed else got
            want = [_float_to_int_reference(float(v), m, nbits, signed) for v in x]
            want = np.array(want, np.int64 if signed else np.uint64)
            if nbits == 32 and not signed:
                got = got & 0xFFFFFFFF
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, "__float2%s_%s(%r) = %r, want %r" % (
                t, m, x[bad[0]], got[bad[0]], want[bad[0]])


@needs_cudasim
def test_int_to_float_conversions_round_in_their_mode():
    from fractions import Fraction

    rng = np.random.default_rng(12)
    a = random_floats(rng, 500, -126, 127)  # their bits are the integers
    b = random_floats(rng, 500, -126, 127)
    ia, ua = a.view(np.int32).astype(object), a.view(np.uint32).astype(object)
    ub = b.view(np.uint32).astype(object)
    for m in MODES:
        cases = {"int": ia, "uint": ua,
                 "ull": [(int(x) << 32) | int(y) for x, y in zip(ua, ub)]}
        cases["ll"] = [v - (1 << 64) if v >= 1 << 63 else v for v in cases["ull"]]
        for t, ints in cases.items():
            got = as_f32(run_math("__%s2float_%s" % (t, m), a, b))
            want = np.array([_round_mode(Fraction(int(v)), m) for v in ints], np.float32)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                          "__%s2float_%s" % (t, m))


@needs_cudasim
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_half_and_bfloat16_conversions_and_fma_are_exact():
    import ml_dtypes
    from fractions import Fraction

    rng = np.random.default_rng(13)
    n = 1500
    a, b, c = (random_floats(rng, n, -12, 8) for _ in range(3))
    a[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 65520.0, 65519.0, 2.0 ** -25]
    got = run_math("float2half_rn", a).astype(np.uint16)
    np.testing.assert_array_equal(got[~np.isnan(a)], a.astype(np.float16)[~np.isnan(a)].view(np.uint16))
    got = run_math("float2bfloat16_rn", a).astype(np.uint16)
    want = a.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(got[~np.isnan(a)], want[~np.isnan(a)])
    for name, dt in (("hfma", np.float16), ("hfma_bf16", ml_dtypes.bfloat16)):
        ah, bh, ch = (v.astype(dt) for v in (a, b, c))
        got = run_math(name, a, b, c).astype(np.uint16).view(dt)
        want = []
        for x, y, z in zip(ah.astype(np.float64), bh.astype(np.float64), ch.astype(np.float64)):
            if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
                want.append(np.float64(x) * y + z)
                continue
            q = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
            want.append(_round_to_format(q, dt))
        want = np.array(want, np.float64).astype(dt)
        same = (got.view(np.uint16) == want.view(np.uint16)) | (np.isnan(got.astype(np.float32))
                                                               & np.isnan(want.astype(np.float32)))
        assert same.all(), "%s: %d of %d differ" % (name, np.count_nonzero(~same), n)
    fused = run_math("hfma", a, b, c).astype(np.uint16).view(np.float16).astype(np.float32)
    sat = run_math("hfma_sat", a, b, c).astype(np.uint16).view(np.float16).astype(np.float32)
    relu = run_math("hfma_relu", a, b, c).astype(np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(sat, np.where(np.isnan(fused), 0, np.clip(fused, 0, 1)))
    np.testing.assert_array_equal(relu, np.where(np.isnan(fused), np.nan, np.maximum(fused, 0)))
    got = run_math("half2int_rd", a).astype(np.int64)
    want = [_float_to_int_reference(float(np.float16(v)), "rd", 32, True) for v in a]
    np.testing.assert_array_equal(got, want)


def _round_to_format(q, dt):
    """Exact rational q rounded to nearest-even in the 16-bit format dt (as a float64)."""
    from fractions import Fraction

    info = np.finfo(dt)
    mant = int(info.nmant)
    if q == 0:
        return 0.0
    sign = -1 if q < 0 else 1
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    e = max(e, int(info.minexp))
    quantum = Fraction(2) ** (e - mant)
    m = q / quantum
    k = m.numerator // m.denominator
    rem = m - k
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and k % 2 == 1):
        k += 1
    value = k * quantum
    if value > Fraction(float(info.max)):
        return sign * np.inf
    return sign * float(value)


def _ulp_error(got, ref):
    """|got - ref| in units of the float32 spacing at ref (ref float64)."""
    ref32 = np.abs(ref).astype(np.float32)
    spacing = np.spacing(np.where(np.isfinite(ref32), ref32, np.finfo(np.float32).max))
    spacing = np.maximum(spacing.astype(np.float64), 2.0 ** -149)
    return np.abs(got.astype(np.float64) - ref) / spacing


@needs_cudasim
def test_fast_intrinsics_within_documented_bounds():
    rng = np.random.default_rng(14)
    n = 3000
    x = rng.uniform(-80, 80, n).astype(np.float32)
    got = as_f32(run_math("__expf", x))
    ref = np.exp(x.astype(np.float64))
    ok = np.isfinite(ref) & (ref < 3e38) & (ref > 1.2e-38)
    assert np.all(_ulp_error(got, ref)[ok] <= 2 + np.floor(np.abs(1.173 * x[ok])))
    xs = rng.uniform(-30, 30, n).astype(np.float32)
    got = as_f32(run_math("__exp10f", xs))
    ref = 10.0 ** xs.astype(np.float64)
    ok = (ref < 3e38) & (ref > 1.2e-38)
    assert np.all(_ulp_error(got, ref)[ok] <= 2 + np.floor(np.abs(2.95 * xs[ok])))
    # logarithms: an absolute bound on [0.5, 2], an ulp bound elsewhere
    pos = np.abs(random_floats(rng, n, -126, 127))
    pos[:n // 4] = rng.uniform(0.5, 2, n // 4)
    inside = (pos >= 0.5) & (pos <= 2)
    for name, fn, absbound, ulps in (("__logf", np.log, 2 ** -21.41, 3),
                                     ("__log2f", np.log2, 2 ** -22, 2),
                                     ("__log10f", np.log10, 2 ** -24, 3)):
        got = as_f32(run_math(name, pos)).astype(np.float64)
        ref = fn(pos.astype(np.float64))
        assert np.all(np.abs(got - ref)[inside] <= absbound), name
        assert np.all(_ulp_error(got, ref)[~inside] <= ulps), name
    ang = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
    for name, fn, bound in (("__sinf", np.sin, 2 ** -21.41), ("__cosf", np.cos, 2 ** -21.19)):
        got = as_f32(run_math(name, ang)).astype(np.float64)
        assert np.max(np.abs(got - fn(ang.astype(np.float64)))) <= bound, name
    got = as_f32(run_math("__sincosf", ang)).astype(np.float64)
    ref = np.sin(ang.astype(np.float64)) + 2 * np.cos(ang.astype(np.float64))
    assert np.max(np.abs(got - ref)) <= 2 ** -21.41 + 2 * 2 ** -21.19 + 2 ** -22
    # __tanf is __sinf / __cosf through the approximate division
    got = as_f32(run_math("__tanf", ang)).astype(np.float64)
    ref = np.tan(ang.astype(np.float64))
    c = np.abs(np.cos(ang.astype(np.float64)))
    assert np.all(np.abs(got - ref) <= (2 ** -21 * (1 + np.abs(ref))) / c + 4 * np.spacing(
        np.abs(ref).astype(np.float32)))
    # __powf = exp2(y * log2(x)): the error grows with |y log2 x| as __expf's does with |x|
    base = rng.uniform(0.01, 10, n).astype(np.float32)
    ex = rng.uniform(-8, 8, n).astype(np.float32)
    got = as_f32(run_math("__powf", base, ex))
    ref = np.power(base.astype(np.float64), ex.astype(np.float64))
    t = np.abs(ex * np.log2(base.astype(np.float64)))
    assert np.all(_ulp_error(got, ref) <= 2 + np.floor(t * 0.7 + np.abs(ex) * 2 + 1))


@needs_cudasim
def test_fdividef_range_and_bound():
    rng = np.random.default_rng(15)
    n = 2000
    x = random_floats(rng, n, -60, 60)
    y = random_floats(rng, n, -126, 126)
    got = as_f32(run_math("__fdividef", x, y))
    ref = x.astype(np.float64) / y.astype(np.float64)
    ok = (np.abs(ref) < 3e38) & (np.abs(ref) > 1.2e-38)
    assert np.all(_ulp_error(got, ref)[ok] <= 2)
    # CUDA documents: for 2^126 < |y| < 2^128 __fdividef gives 0 for finite x, NaN for infinite x,
    # where x / y would give a subnormal quotient or infinity
    big = (np.float32(2.0 ** 126) * rng.uniform(1.0001, 1.9999, 200)).astype(np.float32)
    big[::2] *= -1
    xs = random_floats(rng, 200, -20, 127)
    xs[:10] = np.inf
    got = as_f32(run_math("__fdividef", xs, big))
    np.testing.assert_array_equal(np.isnan(got[:10]), True)
    assert np.all(got[10:] == 0)
    np.testing.assert_array_equal(np.signbit(got[10:]), np.signbit(xs[10:]) ^ np.signbit(big[10:]))
    # the IEEE division of the same operands does not vanish
    assert np.count_nonzero(as_f32(run_math("__fdiv_rn", xs[10:], big[10:]))) > 100


def _library_reference(fn, a, b, c):
    mp = pytest.importorskip("mpmath")
    a64, b64, c64 = (v.astype(np.float64) for v in (a, b, c))
    direct = {"exp10": lambda: 10.0 ** a64, "sinpi": lambda: np.array([float(mp.sinpi(v)) for v in a64]),
              "cospi": lambda: np.array([float(mp.cospi(v)) for v in a64]),
              "rcbrt": lambda: 1 / np.cbrt(a64), "rhypot": lambda: 1 / np.hypot(a64, b64),
              "norm3": lambda: np.sqrt(a64 ** 2 + b64 ** 2 + c64 ** 2),
              "rnorm3": lambda: 1 / np.sqrt(a64 ** 2 + b64 ** 2 + c64 ** 2),
              "norm4": lambda: np.sqrt(2 * a64 ** 2 + b64 ** 2 + c64 ** 2),
              "rnorm4": lambda: 1 / np.sqrt(2 * a64 ** 2 + b64 ** 2 + c64 ** 2),
              "divide": lambda: a64 / b64}
    if fn in direct:
        return direct[fn]()
    if hasattr(np, fn) and fn not in ("i0",):
        f = getattr(np, fn)
        return f(a64, b64) if fn in ("arctan2", "power", "hypot") else f(a64)
    mpf = {"erf": mp.erf, "erfc": mp.erfc, "erfinv": mp.erfinv,
           "erfcinv": lambda v: mp.erfinv(1 - mp.mpf(v)),
           "erfcx": lambda v: mp.exp(mp.mpf(v) ** 2) * mp.erfc(v),
           "normcdf": mp.ncdf, "normcdfinv": lambda v: -mp.sqrt(2) * mp.erfinv(1 - 2 * mp.mpf(v)),
           "gamma": mp.gamma, "i0": lambda v: mp.besseli(0, v), "i1": lambda v: mp.besseli(1, v)}[fn]
    with mp.workdps(40):
        return np.array([float(mpf(v)) for v in a64])


def _library_inputs(fn, rng, n):
    domains = {"log": (1e-3, 1e3), "log2": (1e-3, 1e3), "log10": (1e-3, 1e3), "log1p": (-0.9, 100),
               "arcsin": (-1, 1), "arccos": (-1, 1), "arctanh": (-0.999, 0.999),
               "arccosh": (1, 1e4), "erfinv": (-0.9999, 0.9999), "erfcinv": (1e-6, 1.99),
               "normcdfinv": (1e-6, 0.999), "gamma": (0.05, 30), "power": (0.01, 10),
               "exp": (-80, 80), "exp2": (-120, 120), "exp10": (-30, 30), "expm1": (-20, 20),
               "sinh": (-80, 80), "cosh": (-80, 80), "erfcx": (-8, 300), "i0": (-80, 80),
               "i1": (-80, 80), "sqrt": (0, 1e30), "normcdf": (-12, 8)}
    lo, hi = domains.get(fn, (-50, 50))
    a = rng.uniform(lo, hi, n).astype(np.float32)
    b = rng.uniform(-8, 8, n).astype(np.float32) if fn == "power" else \
        rng.uniform(-50, 50, n).astype(np.float32)
    c = rng.uniform(-50, 50, n).astype(np.float32)
    return a, b, c


@needs_cudasim
@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_function_within_cuda_bound(name):
    expr, ulps, fn = LIBRARY[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    n = 300 if fn in ("erf", "erfc", "erfinv", "erfcinv", "erfcx", "normcdf", "normcdfinv",
                      "gamma", "i0", "i1", "sinpi", "cospi") else 2000
    a, b, c = _library_inputs(fn, rng, n)
    got = as_f32(run_math("lib_" + name, a, b, c))
    ref = _library_reference(fn, a, b, c)
    ok = np.isfinite(ref) & (np.abs(ref) < 3.4e38) & (np.abs(ref) > 1.2e-38)
    assert np.count_nonzero(ok) > n // 2
    err = _ulp_error(got[ok], ref[ok])
    # at least the bound; the host computes these in double, so it is far inside it
    assert np.max(err) <= max(ulps, 0.5), "%s: max %.2f ulp at %r" % (
        name, np.max(err), a[ok][np.argmax(err)])


# -- warps ----------------------------------------------------------------------------------------
ACTIVEMASK = r"""
extern "C" __global__ void activemask(unsigned* out)
{
    const int t = threadIdx.x, lane = t % 32;
    out[4 * t] = __activemask();
    if (lane < 8) {
        out[4 * t + 1] = __activemask();
    } else if (lane % 3 == 0) {
        out[4 * t + 1] = __activemask();
    } else {
        out[4 * t + 1] = __activemask();
    }
    __syncwarp();
    if (lane >= 20) return;
    out[4 * t + 2] = __activemask();
    out[4 * t + 3] = __ballot_sync(__activemask(), lane % 2);
}
"""


def _activemask_model(nthreads):
    want = np.zeros((nthreads, 4), np.uint64)
    for t in range(nthreads):
        lane, first = t % 32, t - t % 32
        present = [lane_ for lane_ in range(32) if first + lane_ < nthreads]

        def mask(lanes):
            return sum(1 << x for x in lanes)

        want[t, 0] = mask(present)
        group = ([x for x in present if x < 8] if lane < 8 else
                 [x for x in present if x >= 8 and x % 3 == 0] if lane % 3 == 0 else
                 [x for x in present if x >= 8 and x % 3 != 0])
        want[t, 1] = mask(group)
        if lane < 20:
            alive = [x for x in present if x < 20]
            want[t, 2] = mask(alive)
            want[t, 3] = mask([x for x in alive if x % 2])
    return want


@needs_cudasim
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_activemask_is_the_converged_set(monkeypatch, seed):
    monkeypatch.setenv("BATCHNORM_LIB_CUDASIM_SEED", str(seed))
    f = module(ACTIVEMASK).get_function("activemask")
    for nthreads in (64, 45):  # the second warp of 45 threads has 13 lanes
        out = gpuarray.zeros(4 * nthreads, np.uint32)
        f(out.gpudata, block=(nthreads, 1, 1), grid=(1, 1))
        got = out.get().reshape(nthreads, 4).astype(np.uint64)
        want = _activemask_model(nthreads)
        alive = (np.arange(nthreads) % 32) < 20
        np.testing.assert_array_equal(got[:, :2], want[:, :2])
        np.testing.assert_array_equal(got[alive, 2:], want[alive, 2:])


SHUFFLE_OFFSETS = r"""
extern "C" __global__ void shuffles(const int* v, int* out, int arg, int width)
{
    const int t = threadIdx.x;
    const int x = v[t];
    out[4 * t + 0] = __shfl_sync(0xffffffffu, x, arg, width);
    out[4 * t + 1] = __shfl_up_sync(0xffffffffu, x, (unsigned)arg, width);
    out[4 * t + 2] = __shfl_down_sync(0xffffffffu, x, (unsigned)arg, width);
    out[4 * t + 3] = __shfl_xor_sync(0xffffffffu, x, arg, width);
}
"""


def _shuffle_reference(v, arg, width):
    """CUDA's documented shuffles on 32-lane warps; the hardware reads the low 5 bits of the lane
    or offset operand (PTX ISA, shfl.sync: b[4:0])."""
    n = len(v)
    out = np.zeros((n, 4), np.int64)
    k = arg & 31
    for t in range(n):
        lane = t % 32
        seg = lane - lane % width
        base = t - lane
        out[t, 0] = v[base + seg + k % width]
        out[t, 1] = v[t - k] if lane - seg >= k else v[t]
        out[t, 2] = v[t + k] if lane - seg + k < width else v[t]
        partner = lane ^ k
        out[t, 3] = v[base + partner] if partner < seg + width else v[t]
    return out


@needs_cudasim
@pytest.mark.parametrize("arg", [1, 3, 33, 37, -1, 64 + 5])
@pytest.mark.parametrize("width", [32, 16, 4])
def test_shuffle_operands_as_ptx_defines_them(arg, width):
    f = module(SHUFFLE_OFFSETS).get_function("shuffles")
    v = (np.arange(64, dtype=np.int32) * 7 + 3)
    out = gpuarray.zeros(4 * 64, np.int32)
    f(arr(v).gpudata, out.gpudata, np.int32(arg), np.int32(width), block=(64, 1, 1), grid=(1, 1))
    np.testing.assert_array_equal(out.get().reshape(64, 4), _shuffle_reference(v, arg, width))


REJECTED = {
    "float2 shuffle": ("float2 v = make_float2(p[0], p[1]); v = __shfl_sync(0xffffffffu, v, 0); "
                       "p[0] = v.x;", "__shfl_sync"),
    "struct shuffle": ("struct S { float a; int b; } s = {p[0], 1}; "
                       "s = __shfl_xor_sync(0xffffffffu, s, 1); p[0] = s.a;", "__shfl_sync"),
    "atomicSub(float*)": ("atomicSub(p, 1.0f);", "atomicSub(float*"),
    "atomicMax(float*)": ("atomicMax(p, 1.0f);", "atomicMax(float*"),
    "atomicMin(double*)": ("atomicMin((double*)p, 1.0);", "atomicMin(double*"),
    "atomicAdd(long long*)": ("atomicAdd((long long*)p, 1ll);", "atomicAdd(long long*"),
    "atomicCAS(float*)": ("atomicCAS(p, 1.0f, 2.0f);", "atomicCAS(float*"),
}
ACCEPTED = ("atomicAdd(p, 1.0f); atomicSub((int*)p, 1); atomicMax((unsigned*)p, 2u); "
            "atomicMin((long long*)p, 3ll); atomicExch(p, 1.0f); "
            "atomicCAS((unsigned long long*)p, 1ull, 2ull); "
            "p[1] = __shfl_sync(0xffffffffu, p[1], 0) + (float)__shfl_sync(0xffffffffu, 2.0, 0) "
            "+ __half2float(__shfl_down_sync(0xffffffffu, __float2half(p[2]), 1)) "
            "+ (float)__shfl_xor_sync(0xffffffffu, (short)3, 1);")
CONSTRUCT = r"""
#include <cuda_fp16.h>
extern "C" __global__ void construct(float* p)
{
    BODY
}
"""


@needs_cudasim
@pytest.mark.parametrize("what", sorted(REJECTED))
def test_constructs_nvcc_rejects_do_not_compile(what):
    body, named = REJECTED[what]
    with pytest.raises(compiler.CompileError) as info:
        module(CONSTRUCT.replace("BODY", body))
    assert named in info.value.stderr


@needs_cudasim
def test_constructs_nvcc_accepts_compile_and_run():
    f = module(CONSTRUCT.replace("BODY", ACCEPTED)).get_function("construct")
    p = arr(np.zeros(4, np.float32))
    f(p.gpudata, block=(32, 1, 1), grid=(1, 1))


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_nvcc_agrees_on_rejected_and_accepted_constructs(tmp_path):
    """The same bodies through nvcc: the rejected ones fail there too, the accepted ones build."""
    def builds(body):
        src = tmp_path / "c.cu"
        src.write_text(CONSTRUCT.replace("BODY", body))
        proc = subprocess.run([NVCC, "-ptx", "-arch=sm_90"] + list(core.NVCC_OPTIONS)
                              + [str(src), "-o", str(tmp_path / "c.ptx")],
                              capture_output=True, timeout=300)
        return proc.returncode == 0

    assert builds(ACCEPTED)
    for what, (body, _) in REJECTED.items():
        assert not builds(body), what


# -- launches: shared memory, registers, device limits --------------------------------------------
def _limits_cc(monkeypatch, cc):
    monkeypatch.setenv("BATCHNORM_LIB_CUDASIM_CC", cc)


LIMITS_SRC = r"""
extern "C" __global__ void noop(int* p) { if (p) p[0] = 1; }
"""


@needs_cudasim
@pytest.mark.parametrize("block, grid, ok_", [
    ((1024, 1, 1), (1, 1), True), ((1025, 1, 1), (1, 1), False), ((32, 32, 1), (1, 1), True),
    ((1, 1, 64), (1, 1), True), ((1, 1, 65), (1, 1), False), ((1, 1025, 1), (1, 1), False),
    ((64, 1, 1), (1, 65535, 1), True), ((64, 1, 1), (1, 65536, 1), False),
    ((64, 1, 1), (1, 1, 65536), False), ((64, 1, 1), (2 ** 31, 1, 1), False),
])
def test_device_limits_refused_as_the_driver_does(block, grid, ok_):
    f = module(LIMITS_SRC).get_function("noop")
    if ok_:
        f(np.uintp(0), block=block, grid=grid)
    else:
        with pytest.raises(driver.LogicError, match="cuLaunchKernel failed: invalid argument"):
            f(np.uintp(0), block=block, grid=grid)


SHARED_SRC = r"""
__device__ float helper(int i)
{
    __shared__ float table[100];
    table[i % 100] = (float)i;
    __syncthreads();
    return table[99 - i % 100];
}

extern "C" __global__ void big_static(float* out)
{
    __shared__ float s[10240];   // 40 KiB
    for (int i = threadIdx.x; i < 10240; i += blockDim.x) s[i] = (float)i;
    __syncthreads();
    out[threadIdx.x] = s[10239 - threadIdx.x] + helper(threadIdx.x);
}

extern "C" __global__ void other_big_static(float* out)
{
    __shared__ float t[10240];
    for (int i = threadIdx.x; i < 10240; i += blockDim.x) t[i] = 2.0f * i;
    __syncthreads();
    out[threadIdx.x] = t[threadIdx.x] + helper(threadIdx.x);
}

extern "C" __global__ void only_helper(float* out)
{
    out[threadIdx.x] = helper(threadIdx.x);
}

extern "C" __global__ void dynamic(float* out, int n)
{
    extern __shared__ float d[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) d[i] = (float)i;
    __syncthreads();
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += d[n - 1 - i];
    out[threadIdx.x] = s;
}
"""


@needs_cudasim
def test_static_shared_memory_per_kernel():
    """Each kernel is charged the shared memory it uses, a function-local __shared__ once; two
    kernels of 40 KiB each both launch (their sum would exceed 48 KiB)."""
    mod = module(SHARED_SRC)
    want = {"big_static": 10240 * 4 + 100 * 4, "other_big_static": 10240 * 4 + 100 * 4,
            "only_helper": 100 * 4, "dynamic": 0}
    assert {k: mod.get_function(k).shared_size_bytes for k in want} == want
    if NVCC is not None:  # ptxas's numbers, and the host build's analysis used without nvcc
        assert {k: mod.ptxas[k][1] for k in want} == want
    assert {k: mod._host_shared[k] for k in want} == want
    out = gpuarray.zeros(100, np.float32)
    t = np.arange(100)
    for k, first in (("big_static", 10239 - t), ("other_big_static", 2.0 * t)):
        mod.get_function(k)(out.gpudata, block=(100, 1, 1), grid=(3, 1))
        np.testing.assert_array_equal(out.get(), first + (99 - t))


@needs_cudasim
@pytest.mark.parametrize("cc, optin", [("9.0", 227 * 1024), ("8.0", 163 * 1024)])
def test_max_dynamic_shared_attribute(monkeypatch, cc, optin):
    _limits_cc(monkeypatch, cc)
    f = module(SHARED_SRC).get_function("dynamic")
    fa = driver.function_attribute
    static = f.shared_size_bytes
    assert f.get_attribute(fa.MAX_DYNAMIC_SHARED_SIZE_BYTES) == 48 * 1024 - static
    n = 100 * 1024 // 4
    out = gpuarray.zeros(64, np.float32)
    with pytest.raises(driver.LogicError, match="MAX_DYNAMIC_SHARED_SIZE_BYTES"):
        f(out.gpudata, np.int32(n), block=(64, 1, 1), grid=(1, 1), shared=4 * n)
    with pytest.raises(driver.LogicError, match="cuFuncSetAttribute failed"):
        f.set_attribute(fa.MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - static + 1)
    f.set_attribute(fa.MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - static)
    f(out.gpudata, np.int32(n), block=(64, 1, 1), grid=(1, 1), shared=4 * n)
    idx = np.arange(n, dtype=np.float64)
    want = [idx[n - 1 - np.arange(t, n, 64)].sum() for t in range(64)]
    np.testing.assert_allclose(out.get(), want, rtol=1e-6)
    with pytest.raises(driver.LogicError):
        f(out.gpudata, np.int32(n), block=(64, 1, 1), grid=(1, 1), shared=optin - static + 4)


REGS_SRC = r"""
extern "C" __global__ void many_registers(const float* x, float* out, int n)
{
    float acc[96];
#pragma unroll
    for (int k = 0; k < 96; ++k) acc[k] = x[k * 7 % n];
    for (int i = 0; i < n; ++i) {
        const float v = x[(i + threadIdx.x) % n];
#pragma unroll
        for (int k = 0; k < 96; ++k) acc[k] = fmaf(acc[k], v, (float)k);
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 96; ++k) s += acc[k] * acc[(k * 5) % 96];
    out[threadIdx.x] = s;
}
"""


@needs_cudasim
@pytest.mark.skipif(NVCC is None, reason="registers come from ptxas, and nvcc is not installed")
def test_register_limit_refused_as_the_driver_does():
    f = module(REGS_SRC).get_function("many_registers")
    regs = f.num_regs
    assert regs == f.get_attribute(driver.function_attribute.NUM_REGS) > 64
    per_warp = -(-regs * 32 // 256) * 256
    fits = 65536 // per_warp * 32  # the most threads whose registers fit in a block
    x = arr(np.ones(5, np.float32))
    out = gpuarray.zeros(1024, np.float32)
    f(x.gpudata, out.gpudata, np.int32(5), block=(fits, 1, 1), grid=(1, 1))
    with pytest.raises(driver.LaunchError, match="too many resources requested for launch"):
        f(x.gpudata, out.gpudata, np.int32(5), block=(fits + 32, 1, 1), grid=(1, 1))


# -- blocks that wait for each other --------------------------------------------------------------
COOP_SRC = r"""
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// Three rounds: every block publishes a value, the grid syncs, every block reads its right
// neighbour's. A __shared__ value set before each sync must survive it (blocks share addresses).
extern "C" __global__ void ring(int* slots, int* out, int rounds)
{
    cg::grid_group grid = cg::this_grid();
    __shared__ int mine;
    const int b = blockIdx.x, nb = gridDim.x;
    int v = b;
    for (int r = 0; r < rounds; ++r) {
        if (threadIdx.x == 0) {
            mine = v;
            slots[r * nb + b] = v * 3 + 1;
        }
        __syncthreads();
        grid.sync();
        v = slots[r * nb + (b + 1) % nb] + mine;
        __syncthreads();
    }
    if (threadIdx.x == 0) out[b] = v;
    out[nb + grid.thread_rank()] = (int)(grid.size() + grid.is_valid());
}

// Block 0 waits for a flag that block `setter` raises.
extern "C" __global__ void flag_wait(int* flag, int* out, int setter)
{
    if (blockIdx.x == setter && threadIdx.x == 0) atomicExch(flag, 1);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        while (atomicAdd(flag, 0) == 0) __nanosleep(100);
        out[0] = 7;
    }
}

// Every block's thread 0 spins on a plain volatile load: no atomic, fence or sleep in the loop.
extern "C" __global__ void volatile_spin(int* flag)
{
    if (threadIdx.x == 0) while (*(volatile int*)flag == 0) { }
}

extern "C" __global__ void big_block(int* out)
{
    extern __shared__ int d[];
    cg::this_grid().sync();
    d[threadIdx.x] = 1;
    out[blockIdx.x] = d[threadIdx.x];
}
"""


def _ring_reference(nb, rounds):
    v = list(range(nb))
    for _ in range(rounds):
        published = [x * 3 + 1 for x in v]
        v = [published[(b + 1) % nb] + v[b] for b in range(nb)]
    return v


@needs_cudasim
@pytest.mark.parametrize("nb", [2, 7])
def test_cooperative_grid_sync(nb):
    f = module(COOP_SRC).get_function("ring")
    rounds, threads = 3, 64
    slots = gpuarray.zeros(rounds * nb, np.int32)
    out = gpuarray.zeros(nb + nb * threads, np.int32)
    f(slots.gpudata, out.gpudata, np.int32(rounds), block=(threads, 1, 1), grid=(nb, 1),
      cooperative=True)
    got = out.get()
    np.testing.assert_array_equal(got[:nb], _ring_reference(nb, rounds))
    np.testing.assert_array_equal(got[nb:], nb * threads + 1)


@needs_cudasim
def test_grid_sync_without_cooperative_launch_is_an_error():
    f = module(COOP_SRC).get_function("ring")
    slots, out = gpuarray.zeros(6, np.int32), gpuarray.zeros(2 + 128, np.int32)
    with pytest.raises(driver.LaunchError, match="not launched as a cooperative kernel"):
        f(slots.gpudata, out.gpudata, np.int32(3), block=(64, 1, 1), grid=(2, 1))


@needs_cudasim
def test_cooperative_launch_refused_when_the_grid_does_not_fit(monkeypatch):
    _limits_cc(monkeypatch, "9.0")
    f = module(COOP_SRC).get_function("big_block")
    f.set_attribute(driver.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, 200 * 1024)
    assert f.blocks_per_sm(32, 200 * 1024) == 1  # 228 KiB per SM: one such block
    out = gpuarray.zeros(200, np.int32)
    with pytest.raises(driver.LaunchError, match="cooperative launch is too large"):
        f(out.gpudata, block=(32, 1, 1), grid=(driver.SM_COUNT + 1, 1), shared=200 * 1024,
          cooperative=True)
    f(out.gpudata, block=(32, 1, 1), grid=(driver.SM_COUNT, 1), shared=200 * 1024,
      cooperative=True)
    np.testing.assert_array_equal(out.get()[:driver.SM_COUNT], 1)


@needs_cudasim
@pytest.mark.parametrize("setter", [1, 5])
def test_block_waiting_for_a_resident_block(setter):
    """Blocks that fit on the device together run side by side when one waits for another."""
    f = module(COOP_SRC).get_function("flag_wait")
    flag, out = gpuarray.zeros(1, np.int32), gpuarray.zeros(1, np.int32)
    f(flag.gpudata, out.gpudata, np.int32(setter), block=(32, 1, 1), grid=(6, 1))
    assert out.get()[0] == 7


@needs_cudasim
def test_wait_for_a_block_that_never_runs_is_a_deadlock(monkeypatch):
    _limits_cc(monkeypatch, "9.0")
    f = module(COOP_SRC).get_function("flag_wait")
    flag, out = gpuarray.zeros(1, np.int32), gpuarray.zeros(1, np.int32)
    # no block raises the flag
    with pytest.raises(driver.LaunchError, match=r"deadlock in kernel flag_wait:(.|\n)*"
                                                 r"block \(0,0,0\) spins at"):
        f(flag.gpudata, out.gpudata, np.int32(-1), block=(32, 1, 1), grid=(3, 1))


@needs_cudasim
def test_volatile_spin_is_stopped_by_the_watchdog(monkeypatch):
    monkeypatch.setenv("BATCHNORM_LIB_CUDASIM_WATCHDOG", "0.5")
    f = module(COOP_SRC).get_function("volatile_spin")
    flag = gpuarray.zeros(1, np.int32)
    with pytest.raises(driver.LaunchError, match=r"deadlock in kernel volatile_spin: thread "
                                                 r"\(0,0,0\) of block \(0,0,0\) ran for"):
        f(flag.gpudata, block=(32, 1, 1), grid=(2, 1))
    # and the simulator still works afterwards
    g = module(LIMITS_SRC).get_function("noop")
    out = gpuarray.zeros(1, np.int32)
    g(out.gpudata, block=(32, 1, 1), grid=(1, 1))
    assert out.get()[0] == 1


# -- scripts/compare_cudasim.py (gpu_check.sh's bit-for-bit step) ---------------------------------
@needs_cudasim
def test_compare_script_covers_every_kernel(capsys):
    """The comparison run against the simulator itself: every exact operation equal, and every
    kernel of batchnorm.cu and dense.cu launched by some operation of the table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_cudasim", os.path.join(ROOT, "scripts", "compare_cudasim.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--against", "cudasim"]) == 0
    table = capsys.readouterr().out
    assert "DIFFER" not in table
    for src in ("norm/batchnorm.cu", "dense/dense.cu"):
        with open(os.path.join(ROOT, "batchnorm_lib", "kernels", src)) as f:
            entries = core._ENTRY.findall(f.read())
        launched = set(re.findall(r"\b(?:bn|dense)_\w+", table))
        missing = [e for e in entries if e not in launched]
        assert not missing, "%s kernels never compared: %s" % (src, missing)


FTZ_SRC = r"""
extern "C" __global__ void halve(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x] * 0.5f; }
"""


@needs_cudasim
def test_fast_math_flushes_subnormals():
    """-use_fast_math implies -ftz=true: subnormal results (and inputs) become zero."""
    tiny = np.finfo(np.float32).tiny
    x = np.array([tiny, -tiny, tiny * 3, 1.0, tiny / 4], np.float32)
    exact = x * np.float32(0.5)
    for options, want in (([], exact),
                          (["-use_fast_math"], np.where(np.abs(exact) < tiny, 0, exact))):
        f = module(FTZ_SRC, options=options).get_function("halve")
        y = gpuarray.zeros(len(x), np.float32)
        f(arr(x).gpudata, y.gpudata, block=(len(x), 1, 1), grid=(1, 1))
        np.testing.assert_array_equal(y.get(), want.astype(np.float32))
    # the host's own arithmetic is unaffected after the launch
    assert np.float32(tiny) * np.float32(0.5) != 0
