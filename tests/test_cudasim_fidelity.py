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
