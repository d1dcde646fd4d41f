"""The NCHW inference passes run in one launch each (kernels/norm/batchnorm.cu: bn_normalize_infer_*,
bn_backward_infer_*): the kernel computes a = scale / sqrt(run_var + eps) in float64, rounded once,
per channel per block, so the results are bitwise those of the training elementwise pass given that
factor (computed on the host in float64 and rounded once: IEEE division and sqrt give the same bits), and close to the float64 reference. The shapes cover a block's
channel table holding every channel (from a channel other than 0, wrapping past C - 1), a run of
fewer than C channels (wrapping too), a block range taken in several table-sized segments, packs
straddling channels (S < pack), a partial last pack, and the unpacked (misaligned) kernels."""

import numpy as np
import pytest

from batchnorm_lib import kernels
from batchnorm_lib.backend.cudasim import profile
from batchnorm_lib.kernels.norm import cuda as norm_cuda
from conftest import TOLERANCES, active_backend, to_gpu_misaligned

TABLE = 512  # bn::kTable: channels a block keeps in shared memory

# (shape, dtype, misaligned): what each exercises, by _blocks below
CASES = [
    ((5, 37, 7, 7), np.float32, False),  # every channel in each block's table, from ch0 > 0
    ((2, 300, 29), np.float32, False),  # runs of < C channels, one wrapping past C - 1
    ((3, 700, 3), np.float32, False),  # several segments; S < 4: packs straddle channels
    ((2, 300, 7), np.float32, True),  # the unpacked kernels, runs wrapping past C - 1
    ((5, 37, 7, 7), np.float16, False),
    ((3, 700, 3), np.float16, False),
]


def _blocks(shape, width):
    """What each block's range covers, as channel_stream sees it: 'all' channels, a 'run' of fewer,
    or 'over' the table, so in segments (with '+wrap' where the range passes channel C - 1)."""
    n, c, s = norm_cuda._ncs(shape)
    total = n * c * s // width
    blocks = norm_cuda._elementwise_grid(total)[0]
    chunk = -(-total // blocks)
    kinds = set()
    for b in range(blocks):
        begin, end = min(b * chunk, total), min(b * chunk + chunk, total)
        if begin < end:
            row0 = begin * width // s
            rows = (end * width - 1) // s - row0 + 1
            kind = "over" if min(rows, c) > TABLE else ("all" if rows >= c else "run")
            kinds.add(kind + ("+wrap" if row0 % c + min(rows, c) > c else ""))
    return kinds


def test_cases_cover_every_table_path():
    widths = {np.float32: 4, np.float16: 8}
    seen = set()
    for shape, dtype, misaligned in CASES:
        seen |= _blocks(shape, 1 if misaligned else widths[dtype])
    assert {"all+wrap", "run+wrap", "over"} <= seen


def _factor32(scale, run_var, eps):
    """The inference factor a: float64, rounded once to float32 (bn::frozen_factor's expression)."""
    return (scale.astype(np.float64) / np.sqrt(run_var.astype(np.float64) + eps)).astype(np.float32)


def _bits(a):
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape, dtype, misaligned", CASES)
def test_inference_one_launch_bitwise_as_two(shape, dtype, misaligned, relu, rng):
    from batchnorm_lib.backend import gpuarray

    dtype = np.dtype(dtype)
    with active_backend("cudasim"):
        impl = kernels.implementation("norm", "cudasim")
        rt = norm_cuda._runtime()
        n, c, s = norm_cuda._ncs(shape)
        eps = 1e-3
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        scale = rng.uniform(-1.5, 1.5, c).astype(np.float32)  # negative too: -0 in the mask
        bias = rng.standard_normal(c).astype(np.float32)
        run_mean = rng.standard_normal(c).astype(np.float32)
        run_var = rng.uniform(0.1, 3, c).astype(np.float32)
        params = [gpuarray.to_gpu(a) for a in (scale, bias, run_mean, run_var)]
        gx = to_gpu_misaligned(x, misaligned)
        out = to_gpu_misaligned(np.full(shape, np.nan, dtype), misaligned)
        vec, width = norm_cuda._flat_vector(dtype, gx, out)
        assert vec == ("" if misaligned else "_vec")
        suffix = {"float32": "f32", "float16": "f16"}[dtype.name]
        relu_tag = "_relu" if relu else ""

        with profile() as prof:
            impl.forward_infer(gx, params[0], params[1], params[2], params[3], eps, out, relu=relu)
        assert [lp.name for lp in prof.launches] == ["bn_normalize_infer%s_%s%s"
                                                     % (relu_tag, suffix, vec)]
        y = out.get()

        # the two-launch sequence: the factor (from the host), then the training normalize entry
        a = gpuarray.to_gpu(_factor32(scale, run_var, eps))
        old = to_gpu_misaligned(np.full(shape, np.nan, dtype), misaligned)
        P = norm_cuda._ptr
        rt.launch("bn_normalize%s_%s%s" % (relu_tag, suffix, vec),
                  norm_cuda._elementwise_grid(n * c * s // width),
                  (P(gx), P(old), P(params[2]), P(a), P(params[1]), np.int64(n), np.int32(c),
                   np.int64(s)))
        assert np.array_equal(_bits(y), _bits(old.get()))

        rtol, atol = TOLERANCES[dtype.name]
        k64 = scale.astype(np.float64) / np.sqrt(run_var.astype(np.float64) + eps)
        per = (1, c) + (1,) * (len(shape) - 2)
        ref = (x.astype(np.float64) - run_mean.reshape(per)) * k64.reshape(per) + bias.reshape(per)
        np.testing.assert_allclose(y, np.maximum(ref, 0) if relu else ref, rtol=rtol, atol=atol)

        # in place (y may be x): the same bits
        inplace = to_gpu_misaligned(x, misaligned)
        impl.forward_infer(inplace, params[0], params[1], params[2], params[3], eps, inplace,
                           relu=relu)
        assert np.array_equal(_bits(inplace.get()), _bits(y))

        # backward with frozen statistics, masked by this y under relu: dx = g * a in float32
        gdy = to_gpu_misaligned(dy, misaligned)
        dx = to_gpu_misaligned(np.full(shape, np.nan, dtype), misaligned)
        with profile() as prof:
            impl.backward_infer(gdy, params[0], params[3], eps, dx, y=out if relu else None)
        assert [lp.name for lp in prof.launches] == ["bn_backward_infer%s_%s%s"
                                                     % (relu_tag, suffix, vec)]
        g = dy.astype(np.float32)
        if relu:
            g = np.where(y.astype(np.float32) <= 0, np.float32(0), g)
        want = (g * _factor32(scale, run_var, eps).reshape(per)).astype(dtype)
        got = dx.get()
        assert np.array_equal(_bits(got), _bits(want))
        np.testing.assert_allclose(got, g.astype(np.float64) * k64.reshape(per), rtol=rtol,
                                   atol=atol)
