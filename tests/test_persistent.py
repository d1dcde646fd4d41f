"""The single-read training kernels (kernels/norm/persistent.cu) on the simulator: results against
the float64 reference and the two-pass kernels, the grid barrier between blocks of a channel, the
fit decision at the device's limits, the sanitizer, and the bytes they move."""

import numpy as np
import pytest

import reference as ref
from conftest import TOLERANCES, active_backend

from batchnorm_lib.kernels.norm import cuda as bn_cuda

EPS = 1e-5
FACTOR = 0.3


@pytest.fixture(autouse=True)
def single_read_on(monkeypatch):
    """These tests are about the single-read path: whatever the environment says."""
    monkeypatch.delenv(bn_cuda.SINGLE_READ_ENV, raising=False)


@pytest.fixture
def sim():
    with active_backend("cudasim"):
        yield bn_cuda._runtime()


@pytest.fixture
def small_device(sim, monkeypatch):
    """A simulated device of 2 SMs with 20 KiB of shared memory each, so tensors of a few thousand
    elements need several blocks per channel, or do not fit at all. The simulator's own residency
    rule reads the same limits: a plan that overcommits the device deadlocks the launch. The
    blocks of a channel wait for each other here, which the sanitizer rules out (see
    test_sanitizer_finds_nothing, which turns it on itself): it is off."""
    from batchnorm_lib.backend.cudasim import driver, instrument

    monkeypatch.delenv(instrument.SANITIZE_ENV, raising=False)

    monkeypatch.setattr(driver, "SM_COUNT", 2)
    limits = dict(driver._LIMITS[driver.compute_capability()] if driver.compute_capability()
                  in driver._LIMITS else driver._LIMITS[(8, 0)])
    limits.update(smem_sm=20 * 1024, smem_block_optin=19 * 1024)
    monkeypatch.setitem(driver._LIMITS, driver.compute_capability(), limits)
    return sim


def launched(fn):
    """(result of fn(), names of the kernels it launched)."""
    from batchnorm_lib.backend.cudasim import compiler

    before = dict(compiler.launch_counts)
    result = fn()
    return result, sorted(k for k, v in compiler.launch_counts.items() if v != before.get(k, 0))


def two_pass(monkeypatch):
    monkeypatch.setenv(bn_cuda.SINGLE_READ_ENV, "0")


def forward(rt, x, scale, bias, relu=False, dtype=np.float32):
    c = x.shape[1]
    g = lambda a, t=np.float32: rt.to_gpu(np.ascontiguousarray(a, t))  # noqa: E731
    run_mean, run_var = g(np.linspace(-1, 1, c)), g(np.linspace(0.5, 2, c))
    out, savemean, saveinvvar = rt.empty(x.shape, dtype), rt.empty((c,)), rt.empty((c,))
    bn_cuda.forward_train(g(x, dtype), g(scale), g(bias), run_mean, run_var, EPS, FACTOR, out,
                          savemean, saveinvvar, relu=relu)
    return (out.get().astype(np.float64), savemean.get(), saveinvvar.get(), run_mean.get(),
            run_var.get())


def backward(rt, x, dy, scale, savemean, saveinvvar, y=None, dtype=np.float32):
    c = x.shape[1]
    g = lambda a, t=np.float32: rt.to_gpu(np.ascontiguousarray(a, t))  # noqa: E731
    dx, dscale, dbias = rt.empty(x.shape, dtype), rt.empty((c,)), rt.empty((c,))
    bn_cuda.backward_train(g(x, dtype), g(dy, dtype), g(scale), g(savemean), g(saveinvvar), dx,
                           dscale, dbias, y=None if y is None else g(y, dtype))
    return dx.get().astype(np.float64), dscale.get(), dbias.get()


def data(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape) * 2.0 + np.arange(c).reshape((1, c) + (1,) * (len(shape) - 2))
    return x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(shape)


def check_forward(got, x, scale, bias, relu, dtype=np.float32):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    y, mean, _, var_unbiased, invstd = ref.forward_train(x, scale, bias, EPS)
    if relu:
        y = np.maximum(y, 0.0)
    c = x.shape[1]
    np.testing.assert_allclose(got[0], y, rtol=rtol, atol=atol * max(1.0, np.abs(y).max()))
    np.testing.assert_allclose(got[1], mean, rtol=2e-6, atol=2e-6 * np.abs(x).max())
    np.testing.assert_allclose(got[2], invstd, rtol=1e-5 if dtype == np.float32 else 1e-3)
    np.testing.assert_allclose(got[3], (1 - FACTOR) * np.linspace(-1, 1, c) + FACTOR * mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[4], (1 - FACTOR) * np.linspace(0.5, 2, c)
                               + FACTOR * var_unbiased, rtol=1e-5 if dtype == np.float32 else 1e-3)


def relu_passes(rt, x, scale, bias, dy, entry):
    """Training forward with the fused relu, then its backward (dy masked by y): each one launch of
    the single-read ``entry`` (forward and backward), against the reference. (forward, backward)."""
    got, names = launched(lambda: forward(rt, x, scale, bias, relu=True))
    assert names == ["bn_persist_forward_" + entry]
    check_forward(got, x, scale, bias, True)
    grads, names = launched(lambda: backward(rt, x, dy, scale, got[1], got[2], y=got[0]))
    assert names == ["bn_persist_backward_" + entry]
    check_backward(grads, x, np.where(got[0] <= 0, 0.0, dy), scale)
    return got, grads


def check_backward(got, x, dy, scale, dtype=np.float32):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    dx, dscale, dbias = ref.backward_train(x, dy, scale, EPS)
    big = lambda a: atol * max(1.0, np.abs(a).max())  # noqa: E731
    np.testing.assert_allclose(got[0], dx, rtol=rtol, atol=big(dx))
    np.testing.assert_allclose(got[1], dscale, rtol=rtol, atol=big(dscale) * 10)
    np.testing.assert_allclose(got[2], dbias, rtol=rtol, atol=big(dbias) * 10)


# odd sizes; spatial sizes a multiple of 4 take the 16-byte entries
FIT_SHAPES = [(3, 5, 7, 11), (4, 3, 6, 10), (2, 3, 5), (5, 2, 3, 3, 3)]


@pytest.mark.parametrize("shape", FIT_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_training_pass_against_reference_and_two_pass(sim, rng, monkeypatch, shape, relu):
    x, scale, bias, dy = data(rng, shape)
    got, names = launched(lambda: forward(sim, x, scale, bias, relu))
    assert len(names) == 1 and names[0].startswith("bn_persist_forward_f32")
    check_forward(got, x, scale, bias, relu)
    y = got[0]
    dy_masked = np.where(y <= 0, 0.0, dy) if relu else dy
    grads, names = launched(lambda: backward(sim, x, dy, scale, got[1], got[2],
                                             y=y if relu else None))
    assert len(names) == 1 and names[0].startswith("bn_persist_backward_f32")
    check_backward(grads, x, dy_masked, scale)

    with monkeypatch.context() as m:
        two_pass(m)
        base, names = launched(lambda: forward(sim, x, scale, bias, relu))
        assert not any(n.startswith("bn_persist") for n in names)
        if relu:  # (idempotent where the two-pass kernels fuse the ReLU themselves)
            base = (np.where(base[0] <= 0, 0.0, base[0]),) + base[1:]
        base_grads = backward(sim, x, dy_masked, scale, got[1], got[2])
    # the same numerics as the two-pass kernels (equal bits where both split a channel alike)
    for a, b in zip(got, base):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(b).max()))
    for a, b in zip(grads, base_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


def test_blocks_of_a_channel_meet_at_the_barrier(small_device, rng):
    # forward: 1500 packs of 4 in 6 blocks of 250 (4 KiB of shared memory each), 3 per SM;
    # backward: 1000 packs of x and dy in 4 blocks
    x, scale, bias, _ = data(rng, (6, 1, 25, 40))
    assert bn_cuda._persistent_plan(small_device, "forward", "f32", "_vec", 4, 4, 1, 6, 1,
                                    1000)[2] == 6
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert names == ["bn_persist_forward_f32_vec"]
    check_forward(got, x, scale, bias, False)
    again = forward(small_device, x, scale, bias)
    for a, b in zip(got, again):  # bitwise repeatable
        assert np.array_equal(a, b)

    x, scale, bias, dy = data(rng, (4, 1, 25, 40))
    assert bn_cuda._persistent_plan(small_device, "backward", "f32", "_vec", 4, 4, 2, 4, 1,
                                    1000)[2] == 4
    stats = forward(small_device, x, scale, bias)
    grads, names = launched(lambda: backward(small_device, x, dy, scale, stats[1], stats[2]))
    assert names == ["bn_persist_backward_f32_vec"]
    check_backward(grads, x, dy, scale)
    again = backward(small_device, x, dy, scale, stats[1], stats[2])
    for a, b in zip(grads, again):
        assert np.array_equal(a, b)
    # every launch leaves the arrival counts at 0 (no memset between launches); the generations
    # advance
    assert not bn_cuda._persist_counters(small_device, 1).get()[0::2].any()


@pytest.mark.parametrize("kind, shape, fits", [
    ("forward", (6, 1, 32, 40), True),     # 7680 values: 4 blocks of 8 KiB, 2 per SM
    ("forward", (7, 1, 30, 40), False),    # 8400: no split fits 2 SMs of 20 KiB, 2 blocks each
    ("forward", (10, 2, 13, 31), True),    # scalar entries
    ("forward", (11, 2, 13, 31), True),    # both channels at once do not fit: one group walks them
    ("forward", (23, 1, 13, 31), False),
    ("forward", (3, 21, 5, 8), True),      # one block a channel, more blocks than fit at once
    ("backward", (3, 21, 5, 8), True),
    ("backward", (4, 1, 25, 40), True),    # x and dy: 4000 values each
    ("backward", (4, 1, 26, 40), False),
    ("backward", (10, 1, 13, 31), True),
    ("backward", (11, 1, 13, 31), False),
])
def test_only_tensors_that_fit_take_the_single_read_path(small_device, rng, kind, shape, fits):
    x, scale, bias, dy = data(rng, shape)
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    if kind == "forward":
        assert any(n.startswith("bn_persist") for n in names) == fits
    check_forward(got, x, scale, bias, False)
    grads, names = launched(lambda: backward(small_device, x, dy, scale, got[1], got[2]))
    if kind == "backward":
        assert any(n.startswith("bn_persist") for n in names) == fits
    check_backward(grads, x, dy, scale)


def test_sanitizer_finds_nothing(small_device, rng, monkeypatch):
    """One block per channel. The sanitizer keeps one block's access history at a time (entering
    a block resets it), so it would report blocks that wait for each other and resume falsely; the
    barrier itself is covered by the tests above."""
    from batchnorm_lib.backend.cudasim import instrument

    monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
    x, scale, bias, dy = data(rng, (3, 2, 7, 31))
    assert bn_cuda._persistent_plan(small_device, "backward", "f32", "", 1, 4, 2, 3, 2, 217)[2] == 1
    relu_passes(small_device, x, scale, bias, dy, "f32")
    # a channel that needs several blocks takes the two-pass kernels under the sanitizer
    x, scale, bias, _ = data(rng, (6, 1, 25, 40))
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert not any(n.startswith("bn_persist") for n in names)
    check_forward(got, x, scale, bias, False)


def test_forward_reads_x_once(sim, rng):
    from batchnorm_lib.backend.cudasim import profile

    shape = (7, 3, 8, 12)
    x, scale, bias, _ = data(rng, shape)
    with profile() as prof:
        forward(sim, x, scale, bias)
    (launch,) = [l for l in prof.launches if l.name.startswith("bn_persist")]
    nbytes = x.size * 4
    per_channel = 3 * 32 * 8  # a few per-channel values and partials, each in its own sectors
    assert nbytes <= 32 * launch.unique_load_sectors <= nbytes + per_channel
    assert nbytes <= 32 * launch.unique_store_sectors <= nbytes + per_channel
    # no element loaded twice: the threads' requests add up to x once, plus each thread's shift
    assert launch.load_bytes <= nbytes + 4 * 256 * 3 + per_channel


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_data(sim, rng, dtype):
    from batchnorm_lib.backend.cuda.core import bfloat16_dtype

    dt = bfloat16_dtype() if dtype == "bfloat16" else np.dtype(dtype)
    if dt is None or dt not in sim.supported_dtypes():
        pytest.skip("%s is not supported by the simulated device here" % dtype)
    shape = (3, 4, 5, 8)
    x, scale, bias, dy = data(rng, shape)
    x, dy = x.astype(dt).astype(np.float64), dy.astype(dt).astype(np.float64)
    got, names = launched(lambda: forward(sim, x, scale, bias, dtype=dt))
    assert names == ["bn_persist_forward_%s_vec" % ("f16" if dtype == "float16" else "bf16")]
    check_forward(got, x, scale, bias, False, dtype=dt)
    grads = backward(sim, x, dy, scale, got[1], got[2], dtype=dt)
    check_backward(grads, x, dy, scale, dtype=dt)


# -- one block per SM: the packed entries keep PERSIST_FLIGHT_BYTES in flight with one block -------

@pytest.fixture
def device_of(sim, monkeypatch):
    """device_of(sms, smem_sm, smem_block): the simulated device with these limits (the plan and
    the simulator's residency rule read them)."""
    from batchnorm_lib.backend.cudasim import driver

    cc = driver.compute_capability()
    base = dict(driver._LIMITS.get(cc, driver._LIMITS[(8, 0)]))

    def make(sms, smem_sm, smem_block):
        monkeypatch.setattr(driver, "SM_COUNT", sms)
        monkeypatch.setitem(driver._LIMITS, cc, dict(base, smem_sm=smem_sm,
                                                     smem_block_optin=smem_block))
        return sim
    return make


def resident(rt, plan):
    return plan[1].blocks_per_sm(256, plan[4])


# (shape, dtype, kind, entry): a channel (x; x and dy backward) of 10-12 KiB, one per SM of 20 KiB
ONE_BLOCK_CASES = [
    ((5, 3, 24, 25), "float32", "forward", "bn_persist_forward_f32_vec"),     # 16-byte packs
    ((5, 3, 14, 43), "float32", "forward", "bn_persist_forward_f32_vec8"),    # rows of 602 floats
    ((3, 2, 14, 31), "float32", "backward", "bn_persist_backward_f32_vec8"),
    ((13, 2, 14, 14), "float16", "backward", "bn_persist_backward_f16_vec8"),  # 392-byte rows
    ((25, 2, 14, 14), "bfloat16", "forward", "bn_persist_forward_bf16_vec8"),
]


@pytest.mark.parametrize("shape, dtype, kind, entry", ONE_BLOCK_CASES)
def test_a_channel_in_one_block_per_sm(device_of, rng, shape, dtype, kind, entry):
    from batchnorm_lib.backend.cuda.core import bfloat16_dtype

    rt = device_of(2, 20 * 1024, 19 * 1024)
    dt = bfloat16_dtype() if dtype == "bfloat16" else np.dtype(dtype)
    if dt is None or dt not in rt.supported_dtypes():
        pytest.skip("%s is not supported by the simulated device here" % dtype)
    n, c = shape[:2]
    s = int(np.prod(shape[2:]))
    width = 16 // dt.itemsize if entry.endswith("_vec") else 8 // dt.itemsize
    arrays = 2 if kind == "backward" else 1
    suffix = entry.split("_")[3]
    plan = bn_cuda._persistent_plan(rt, kind, suffix, entry[len("bn_persist_%s_%s" % (
        kind, suffix)):], width, dt.itemsize, arrays, n, c, s)
    # one block a channel, one block per SM: the rule the scalar entries follow would refuse it
    assert plan[0] == entry and plan[2] == 1 and resident(rt, plan) == 1
    assert bn_cuda._persist_min_resident(1) == 2

    x, scale, bias, dy = data(rng, shape)
    x, dy = x.astype(dt).astype(np.float64), dy.astype(dt).astype(np.float64)
    got, names = launched(lambda: forward(rt, x, scale, bias, dtype=dt))
    assert (names == [entry]) == (kind == "forward")
    check_forward(got, x, scale, bias, False, dtype=dt)
    grads, names = launched(lambda: backward(rt, x, dy, scale, got[1], got[2], dtype=dt))
    assert (names == [entry]) == (kind == "backward")
    check_backward(grads, x, dy, scale, dtype=dt)
    # bitwise repeatable
    again = forward(rt, x, scale, bias, dtype=dt)
    assert all(np.array_equal(a, b) for a, b in zip(got, again))
    again = backward(rt, x, dy, scale, got[1], got[2], dtype=dt)
    assert all(np.array_equal(a, b) for a, b in zip(grads, again))


def test_deeper_loads_fold_the_same_batches(sim, rng, monkeypatch):
    """The 16-byte forward loads 4 packs ahead and folds them 2 by 2 as the two-pass reduction
    does: with one block per channel on both paths (a channel of 1 block's work), equal bits."""
    shape = (3, 2, 40, 50)  # 1500 packs a channel: one block of the two-pass reduction too
    x, scale, bias, _ = data(rng, shape)
    got, names = launched(lambda: forward(sim, x, scale, bias))
    assert names == ["bn_persist_forward_f32_vec"]
    with monkeypatch.context() as m:
        two_pass(m)
        base = forward(sim, x, scale, bias)
    assert np.array_equal(got[1], base[1]) and np.array_equal(got[2], base[2])


@pytest.mark.parametrize("kind, dtype, entry, shared", [
    ("forward", "float32", "bn_persist_forward_f32_vec", 256 * 196 * 4),
    ("backward", "float16", "bn_persist_backward_f16_vec8", 2 * 256 * 196 * 2),
    # x and dy: 392 KiB a channel, more than a block holds, and 2048 blocks cannot wait at once:
    # 66 groups of 6 blocks (3 per SM, 72 KiB each) walk the channels
    ("backward", "float32", "bn_persist_backward_f32_vec", 2 * 9 * 256 * 16),
    ("forward", "float16", "bn_persist_forward_f16_vec8", 256 * 196 * 2),
])
def test_resnet_14x14_plans_on_an_h100(device_of, monkeypatch, kind, dtype, entry, shared):
    """The full ResNet-50 shape's plans on an H100's limits (132 SMs, 228 KiB per SM; not the
    simulator's own cap on blocks set aside at once)."""
    from batchnorm_lib.backend.cudasim import instrument

    rt = device_of(132, 228 * 1024, 227 * 1024)
    monkeypatch.setattr(bn_cuda, "_simulator_waiting_blocks", lambda: None)
    # the plan a GPU gets: blocks may wait for each other (the sanitizer rules that out)
    monkeypatch.delenv(instrument.SANITIZE_ENV, raising=False)
    item = np.dtype(dtype).itemsize
    width, vec = (16 // item, "_vec") if item == 4 else (8 // item, "_vec8")
    plan = bn_cuda._persistent_plan(rt, kind, bn_cuda._SUFFIX[dtype], vec, width, item,
                                    2 if kind == "backward" else 1, 256, 1024, 196)
    assert plan[0] == entry and plan[4] == shared
    if kind == "backward" and dtype == "float32":
        assert plan[2] == 6 and plan[5] == 66 and resident(rt, plan) == 3
        return
    assert plan[2] == 1 and plan[5] == 1024
    assert resident(rt, plan) * 256 * bn_cuda.PERSIST_AHEAD_BYTES >= bn_cuda.PERSIST_FLIGHT_BYTES




def test_channels_walked_by_fewer_groups(device_of, rng, monkeypatch):
    """A channel larger than a block, more channels than the device holds split at once: groups of
    nsplit blocks walk the channels (block (split, g) takes channels g, g + G, ...). Against the
    reference, bitwise repeatable, and bitwise what the same split gives with a group a channel
    on a device large enough to hold every block at once. The blocks of a channel wait for each
    other, which the sanitizer rules out (see small_device): it is off."""
    from batchnorm_lib.backend.cudasim import instrument

    monkeypatch.delenv(instrument.SANITIZE_ENV, raising=False)
    rt = device_of(4, 20 * 1024, 19 * 1024)
    shape = (6, 4, 25, 40)  # a channel: 1500 packs of 16 bytes (24 KiB), x and dy 48 KiB
    n, c, s = 6, 4, 1000
    x, scale, bias, dy = data(rng, shape)
    plans = {}
    for kind, arrays in (("forward", 1), ("backward", 2)):
        plans[kind] = bn_cuda._persistent_plan(rt, kind, "f32", "_vec", 4, 4, arrays, n, c, s)
        assert plans[kind][2] > 1 and plans[kind][5] < c  # split, and walked
    got, grads = relu_passes(rt, x, scale, bias, dy, "f32_vec")
    again = forward(rt, x, scale, bias, relu=True), backward(rt, x, dy, scale, got[1], got[2],
                                                               y=got[0])
    assert all(np.array_equal(a, b) for a, b in zip(got + grads, again[0] + again[1]))
    assert not bn_cuda._persist_counters(rt, c).get()[0::2].any()  # arrivals left at 0

    # the same splits, one group a channel, on a device holding every block at once
    big = device_of(64, 20 * 1024, 19 * 1024)
    monkeypatch.setattr(bn_cuda, "_persistent_plan", lambda *a: plans[a[1]]._replace(groups=c))
    wide = forward(big, x, scale, bias, relu=True), backward(big, x, dy, scale, got[1], got[2],
                                                             y=got[0])
    assert all(np.array_equal(a, b) for a, b in zip(got + grads, wide[0] + wide[1]))

# -- padded rows: 7x7 (and 5x5) rows walked as 64 (32) positions, each warp request in one row ---

@pytest.mark.parametrize("shape, dtype, relu", [
    ((5, 3, 7, 7), "float32", True),
    ((9, 2, 5, 5), "float32", False),
    ((6, 3, 7, 7), "float16", False),
])
def test_padded_rows_requests_stay_in_one_row(sim, rng, shape, dtype, relu):
    from batchnorm_lib.backend.cudasim import profile

    dt = np.dtype(dtype)
    if dt not in sim.supported_dtypes():
        pytest.skip("%s is not supported by the simulated device here" % dtype)
    s = int(np.prod(shape[2:]))
    assert bn_cuda._persist_cols(s, 1) == (64 if s == 49 else 32)
    x, scale, bias, dy = data(rng, shape)
    x, dy = x.astype(dt).astype(np.float64), dy.astype(dt).astype(np.float64)
    with profile() as prof:
        got = forward(sim, x, scale, bias, relu=relu, dtype=dt)
        grads = backward(sim, x, dy, scale, got[1], got[2], y=got[0] if relu else None, dtype=dt)
    check_forward(got, x, scale, bias, relu, dtype=dt)
    check_backward(grads, x, np.where(got[0] <= 0, 0.0, dy) if relu else dy, scale, dtype=dt)
    launches = [l for l in prof.launches if l.name.startswith("bn_persist")]
    assert [l.name for l in launches] == ["bn_persist_forward_%s" % bn_cuda._SUFFIX[dtype],
                                          "bn_persist_backward_%s" % bn_cuda._SUFFIX[dtype]]
    arrays = (1, 3 if relu else 2)
    for launch, reads in zip(launches, arrays):
        # every request covers one contiguous stretch: no more sectors than its bytes need
        assert launch.load_sectors == launch.ideal_load_sectors
        assert launch.store_sectors == launch.ideal_store_sectors
        # and no element is read twice (a few per-channel values and each thread's shift aside)
        assert launch.load_bytes <= reads * x.size * dt.itemsize + shape[1] * (256 * 4 + 128)


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_padded_rows_split_over_blocks(small_device, rng, kind):
    """Rows of 49 over several blocks of whole rows that meet at the barrier (forward: 100 rows,
    6 blocks of 17 rows, the last one short); bitwise repeatable."""
    shape = (100 if kind == "forward" else 60, 1, 7, 7)
    plan = bn_cuda._persistent_plan(small_device, kind, "f32", "", 1, 4,
                                    2 if kind == "backward" else 1, shape[0], 1, 49)
    assert plan[2] > 1
    x, scale, bias, dy = data(rng, shape)
    got, names = launched(lambda: forward(small_device, x, scale, bias))
    assert kind != "forward" or names == ["bn_persist_forward_f32"]
    check_forward(got, x, scale, bias, False)
    grads, names = launched(lambda: backward(small_device, x, dy, scale, got[1], got[2]))
    assert names == ["bn_persist_backward_f32"] or kind != "backward"
    check_backward(grads, x, dy, scale)
    again = forward(small_device, x, scale, bias)
    assert all(np.array_equal(a, b) for a, b in zip(got, again))
    again = backward(small_device, x, dy, scale, got[1], got[2])
    assert all(np.array_equal(a, b) for a, b in zip(grads, again))
