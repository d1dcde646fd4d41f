"""The H100 performance model: occupancy and time arithmetic against hand-computed figures, and
``python -m batchnorm_lib model --source`` on small kernels written here (needs nvcc and
nvdisasm, which CI installs: the [gpu-tools] extra)."""

import json
import os
import re

import pytest

from batchnorm_lib.model import h100, sass

TOOLS = sass.find_tool("nvcc") is not None and sass.find_tool("nvdisasm") is not None
needs_tools = pytest.mark.skipif(not TOOLS, reason="nvcc or nvdisasm not found "
                                                   "(pip install '.[gpu-tools]')")

KERNELS = r"""
extern "C" __global__ void chain(const int* __restrict__ idx, const float* __restrict__ x,
                                 float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int j = i;
    for (int k = 0; k < 8; ++k) j = idx[j];   // each load's address is the previous load's value
    y[i] = x[j];
}

extern "C" __global__ void eight(const float* __restrict__ x, float* y, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i + 7 * stride < n;
         i += 8 * stride) {
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = x[i + k * stride];
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) s += v[k];
        y[i] = s;
    }
}

extern "C" __global__ void scalar_copy(const float* x, float* y, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
#pragma unroll 1
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = 2.0f * x[i];
}

extern "C" __global__ void vector_copy(const float4* x, float4* y, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
#pragma unroll 1
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        float4 v = x[i];
        y[i] = make_float4(2.0f * v.x, 2.0f * v.y, 2.0f * v.z, 2.0f * v.w);
    }
}

extern "C" __global__ void heavy(const float* __restrict__ x, float* y, int n)
{
    // 96 accumulators live across the loop: far more registers than a streaming kernel needs
    float acc[96];
    int t = blockIdx.x * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 96; ++k) acc[k] = x[(t + 131 * k) % n];
    for (int r = 0; r < n; ++r) {
        float v = x[(t + r) % n];
#pragma unroll
        for (int k = 0; k < 96; ++k) acc[k] = fmaf(acc[k], v, (float)k);
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 96; ++k) s += acc[k] * (float)(k + 1);
    y[t] = s;
}
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "kernels.cu"
    path.write_text(KERNELS)
    return str(path)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_model(*argv):
    """The command in this process (the compile is cached across calls), its output captured."""
    import contextlib
    import io

    from batchnorm_lib.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["model"] + list(argv))
        except SystemExit as e:  # argparse refusals
            code = e.code
    return Result(code, out.getvalue(), err.getvalue())


def require_cudasim():
    from batchnorm_lib import config

    ok, why = config.probe("cudasim")
    if not ok:
        pytest.skip("cudasim unavailable: " + why)


def analyze(source, tmp_path, kernel, grid="1056", block="256"):
    out = tmp_path / (kernel + ".json")
    proc = run_model("--source", source, "--kernel", kernel, "--grid", grid, "--block", block,
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    figures = json.loads(out.read_text())
    for label, key in (("registers", "registers"), ("occupancy", "occupancy"),
                       ("loads in flight per thread", "loads_in_flight_per_thread"),
                       ("bytes in flight per SM", "bytes_in_flight_per_sm"),
                       ("bandwidth fraction", "bandwidth_fraction")):
        assert float(lines[label]) == pytest.approx(figures[key], rel=1e-3), label
    # every figure printed is in the JSON under its key, and the other way round
    from batchnorm_lib.cli.model import KERNEL_LABELS, _format

    printed = {label: key for key, label in KERNEL_LABELS if key in figures}
    assert set(printed) == set(lines) - {"modelled H100 figures (not measured)"}
    for label, key in printed.items():
        assert lines[label] == _format(figures[key]), label
    assert {"shared_bytes", "blocks_per_sm", "waves", "tail_wave_fill", "spill_stores",
            "bandwidth_fraction_600ns", "bandwidth_fraction_800ns"} <= set(printed.values())
    return figures


@needs_tools
def test_modelled_time_with_bytes(source, tmp_path):
    out = tmp_path / "t.json"
    proc = run_model("--source", source, "--kernel", "scalar_copy", "--grid", "2112", "--block",
                     "256", "--bytes", "1000000000", "--latency", "800", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    expected = h100.launch_time(1e9, figures["bytes_in_flight_per_sm"], 800e-9) * 1e6
    assert figures["modelled_time_us"] == pytest.approx(expected)
    assert float(lines["modelled time us"]) == pytest.approx(expected, rel=1e-3)
    assert figures["latency_ns"] == pytest.approx(800)


def test_occupancy_limits():
    # 256 threads = 8 warps; 32 registers: 1024 per warp, 64 warps fit, threads limit 8 blocks
    assert h100.occupancy(32, 256) == {"blocks_per_sm": 8, "limited_by": "threads",
                                       "occupancy": 1.0}
    # 72 registers: 2304 per warp -> 28 warps -> 3 blocks of 8 warps = 24 of 64 warps
    assert h100.occupancy(72, 256) == {"blocks_per_sm": 3, "limited_by": "registers",
                                       "occupancy": 0.375}
    # 33 registers round up to 40 per thread: 1280 per warp -> 51 warps -> 6 blocks
    assert h100.occupancy(33, 256)["blocks_per_sm"] == 6
    # 48 KB static shared + 1 KB reserved per block: 228 KB hold 4
    assert h100.occupancy(16, 128, 48 * 1024) == {"blocks_per_sm": 4,
                                                  "limited_by": "shared memory",
                                                  "occupancy": 0.25}
    # 32-thread blocks: the 32 blocks per SM limit, half the threads
    assert h100.occupancy(16, 32) == {"blocks_per_sm": 32, "limited_by": "blocks",
                                      "occupancy": 0.5}
    with pytest.raises(ValueError):
        h100.occupancy(32, 1025)


def test_waves_and_time():
    assert h100.waves(2 * 1056, 8) == (2.0, 1.0)
    waves, tail = h100.waves(1056 + 264, 8)
    assert waves == pytest.approx(1.25) and tail == pytest.approx(0.25)
    # a resident grid walking tiles: 66 groups of 6 blocks (3 per SM fill 396 slots) over 1024
    # channels are 1024 / 66 waves, the last 34 of 66 groups full; a grid of fewer blocks than
    # slots counts its own
    waves, tail = h100.waves(396, 3, tiles=6 * 1024)
    assert waves == pytest.approx(1024 / 66) and tail == pytest.approx(34 / 66)
    waves, tail = h100.waves(100, 8, tiles=250)
    assert waves == pytest.approx(2.5) and tail == pytest.approx(0.5)
    # a grid under one wave spreads over the SMs: 66 blocks of 256 threads -> 128 per SM
    assert h100.resident_threads_per_sm(66, 256, 8) == pytest.approx(128)
    # 1 GB at 3.0 TB/s is 333.3 us; with 8 KB in flight per SM at 700 ns Little's law allows
    # 8192 * 132 / 700e-9 = 1.545 TB/s, so the latency bound rules: 1e9 / 1.545e12 s
    t = h100.launch_time(1e9, 8192, 700e-9)
    assert t == pytest.approx(1e9 * 700e-9 / (8192 * 132) + 2e-6)
    assert h100.launch_time(1e9, 1 << 20, 700e-9) == pytest.approx(1e9 / 3.0e12 + 2e-6)
    assert h100.bandwidth_fraction(8192, 700e-9) == pytest.approx(8192 * 132 / (3.0e12 * 700e-9))
    assert h100.bandwidth_fraction(8192, 600e-9) > h100.bandwidth_fraction(8192, 800e-9)


@needs_tools
def test_dependent_chain_against_independent_loads(source, tmp_path):
    chain = analyze(source, tmp_path, "chain")
    eight = analyze(source, tmp_path, "eight")
    assert chain["loads_in_flight_per_thread"] == 1
    assert eight["loads_in_flight_per_thread"] >= 8
    assert eight["bytes_in_flight_per_sm"] >= 8 * chain["bytes_in_flight_per_sm"]
    assert chain["bandwidth_fraction"] < 0.6 <= eight["bandwidth_fraction"] == 1.0


@needs_tools
def test_vector_loads_against_scalar_loads(source, tmp_path):
    scalar = analyze(source, tmp_path, "scalar_copy")
    vector = analyze(source, tmp_path, "vector_copy")
    assert scalar["widest_load_bytes"] == 4 and vector["widest_load_bytes"] == 16
    assert scalar["loads_in_flight_per_thread"] == vector["loads_in_flight_per_thread"] == 1
    assert vector["bytes_in_flight_per_sm"] == 4 * scalar["bytes_in_flight_per_sm"]
    assert vector["bandwidth_fraction"] > scalar["bandwidth_fraction"]


@needs_tools
def test_register_heavy_kernel(source, tmp_path):
    light = analyze(source, tmp_path, "scalar_copy", grid="4096")
    heavy = analyze(source, tmp_path, "heavy", grid="4096")
    assert heavy["registers"] >= 96 > light["registers"]
    assert heavy["spill_stores"] == 0
    expected = h100.occupancy(heavy["registers"], 256)
    assert heavy["occupancy"] == expected["occupancy"] < 0.5 <= light["occupancy"]
    assert heavy["occupancy_limited_by"] == "registers"
    assert heavy["waves"] == pytest.approx(4096 / (expected["blocks_per_sm"] * 132))


@needs_tools
def test_refused_arguments(source):
    proc = run_model("--source", source, "--kernel", "chain", "--block", "256")
    assert proc.returncode == 2 and "--grid" in proc.stderr
    proc = run_model("--source", source, "--kernel", "absent", "--grid", "1", "--block", "32")
    assert proc.returncode == 2 and "absent" in proc.stderr and "chain" in proc.stderr
    proc = run_model("--source", source, "--kernel", "chain", "--grid", "0", "--block", "32")
    assert proc.returncode == 2 and "--grid" in proc.stderr
    proc = run_model("--source", source, "--kernel", "chain", "--grid", "1", "--block", "2048")
    assert proc.returncode == 2 and "1024" in proc.stderr


@pytest.mark.skipif(sass.find_tool("nvcc") is None or sass.find_tool("cuobjdump") is None,
                    reason="nvcc or cuobjdump not found (pip install '.[gpu-tools]')")
def test_vector_kernels_issue_128_bit_loads():
    """Every entry of the batch-norm source that moves 16-byte packs issues LDG.E.128 on sm_90
    (the whole point of those paths), read from cuobjdump -sass."""
    import re
    import subprocess

    from batchnorm_lib.backend.cuda.core import KERNEL_DIR

    source = os.path.join(KERNEL_DIR, "norm", "batchnorm.cu")
    cubin, entries = sass.compile_cubin(source)
    text = subprocess.run([sass.find_tool("cuobjdump"), "-sass", cubin], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout
    bodies = dict(re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", text, re.S))
    vector = sorted(name for name in entries if name.endswith("_vec"))
    assert vector and set(vector) <= set(bodies)
    for name in vector:
        assert re.search(r"\bLDG\.E\.128\b", bodies[name]), name
    # the scalar twins do not: the check can fail
    assert not re.search(r"\bLDG\.E\.128\b", bodies["bn_normalize_f32"])


@needs_tools
def test_library_report(tmp_path):
    require_cudasim()
    out = tmp_path / "report.json"
    # 4-D: aligned rows of whole 16-byte packs (the vector kernels), larger than the simulated
    # budget so the batch is reduced; 2-D: the rows x channels kernels, odd sizes
    md = tmp_path / "report.md"
    proc = run_model("--quick", "--shape", "64x8x12x12", "--shape", "301x70", "--dtype",
                     "float32", "--sim-elements", "20000", "--no-progress", "--json", str(out),
                     "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    rows = md.read_text().splitlines()
    assert len(rows) == 2 + 12 and rows[2].startswith("| 64x8x12x12 | float32 | forward train | 1 |")
    lines = proc.stdout.strip().splitlines()
    assert "MODELLED" in lines[0] and "measured" in lines[0]
    assert lines[-1].startswith("summary (modelled, not measured): 12 cases")
    cases = {(tuple(f["shape"]), f["pass"]): f for f in json.loads(out.read_text())["cases"]}
    assert len(cases) == 12
    infer = cases[(64, 8, 12, 12), "forward infer"]
    assert infer["simulated_shape"] == [20000 // (8 * 144), 8, 12, 12]
    # x read and y written once, plus the per-channel float32 arrays (four read, one written)
    elements = 17 * 8 * 144
    assert 8 <= infer["dram_bytes_per_element"] <= 8 + 5 * (8 * 4 + 64) / elements
    assert infer["floor_bytes_per_element"] == 8 and infer["launches_per_call"] >= 1
    # stores: 16-byte packs, every warp writing whole sectors (loads add per-channel reloads)
    assert infer["store_sector_efficiency"] == 1.0
    assert 0 < infer["sector_efficiency"] <= 1
    # the full shape's normalize grid: 8 packs of 4 per thread, 256 threads a block, at most 4096
    normalize = [l for l in infer["launches"] if l["kernel"].startswith("bn_normalize")]
    assert [l["kernel"] for l in normalize] == ["bn_normalize_infer_f32_vec"]
    assert normalize[0]["grid"] == [min(4096, -(-64 * 8 * 144 // 4 // 8 // 256))]
    by_line = {}
    for line in lines:
        m = re.match(r"(\S+)\s+(\S+)\s+(.+?)\s{2,}", line)
        if m:
            by_line.setdefault((m.group(1), m.group(3)), []).append(line)
    for f in cases.values():
        itemsize = 4
        floor = {"forward infer": 2, "forward train": 2, "backward train": 3,
                 "forward infer relu": 2, "forward train relu": 2,
                 "backward train relu": 4}[f["pass"]]
        assert f["floor_bytes_per_element"] == floor * itemsize  # these tensors fit on chip
        assert f["bytes_over_floor"] == pytest.approx(f["dram_bytes_per_element"] / floor / 4)
        assert f["modelled_time_us"] >= 2.0 * f["launches_per_call"]
        assert (1.0 >= f["bandwidth_fraction_600ns"] >= f["bandwidth_fraction_700ns"]
                >= f["bandwidth_fraction_800ns"] > 0)
        for launch in f["launches"]:
            assert launch["registers"] > 0 and 0 < launch["occupancy"] <= 1
        assert len(by_line["x".join(map(str, f["shape"])), f["pass"]]) == 1
    # (N, C) data goes through the rows x channels kernels, as the BatchNorm module sends it
    train = cases[(301, 70), "forward train"]
    assert train["launches_per_call"] == 1 and train["simulated_shape"] == [301, 70]
    # it fits on chip: the single-read entry reads x once and writes y once, at least
    assert train["launches"][0]["kernel"] == "rc_persist_forward_f32"
    assert train["dram_bytes_per_element"] >= 8
    # the 4-D tensor fits on chip: its training passes are one single-read launch each, moving
    # x (and dy) once
    for name in ("forward train", "backward train", "forward train relu", "backward train relu"):
        single = cases[(64, 8, 12, 12), name]
        assert single["launches_per_call"] == 1
        assert single["launches"][0]["kernel"].startswith("bn_persist_")
    assert cases[(64, 8, 12, 12), "forward train"]["dram_bytes_per_element"] < 8.1
    # the fused relu: the forward moves what the plain one does; the backward reads y in each of
    # its passes over the data (4 more bytes each for float32: one single-read pass), nothing else
    for shape, reads in (((64, 8, 12, 12), 1), ((301, 70), 1)):
        for name in ("forward train", "forward infer"):
            assert (cases[shape, name + " relu"]["dram_bytes_per_element"]
                    == pytest.approx(cases[shape, name]["dram_bytes_per_element"], abs=1e-9))
        extra = (cases[shape, "backward train relu"]["dram_bytes_per_element"]
                 - cases[shape, "backward train"]["dram_bytes_per_element"])
        assert 4 * reads <= extra <= 4 * reads + 0.05
    relu = cases[(301, 70), "backward train relu"]
    assert {l["kernel"] for l in relu["launches"]} == {"rc_persist_backward_relu_f32"}


def test_floors():
    from batchnorm_lib.model.report import ON_CHIP_BYTES, floor_bytes

    small, big = (8, 16, 10, 10), (256, 64, 112, 112)
    assert 256 * 64 * 112 * 112 * 4 > ON_CHIP_BYTES >= 8 * 16 * 100 * 4
    for pass_name, on_chip, two_pass in (("forward infer", 8, 8), ("forward infer relu", 8, 8),
                                         ("forward train", 8, 12), ("forward train relu", 8, 12),
                                         ("backward train", 12, 20),
                                         ("backward train relu", 16, 28)):
        for op in ("bn", "nhwc"):
            assert floor_bytes(pass_name, small, 4, op) == on_chip
            assert floor_bytes(pass_name, big, 4, op) == two_pass
            assert floor_bytes(pass_name, big, 2, op) == two_pass // 2
    # per-row norms: a row that fits in one block's shared memory (227 KB) stays on chip
    for op, shape in (("layernorm", (4096, 1024)), ("groupnorm32", (32, 256, 28, 28)),
                      ("instancenorm", (32, 64, 56, 56))):
        assert floor_bytes("forward", shape, 4, op) == 8
        assert floor_bytes("backward", shape, 4, op) == 12
    assert floor_bytes("forward", (4, 60000), 4, "layernorm") == 12
    assert floor_bytes("backward", (4, 60000), 4, "layernorm") == 20
    assert floor_bytes("backward", (4, 60000), 2, "layernorm") == 6  # 120 KB rows fit


def test_reduced_shapes_keep_the_code_path():
    from batchnorm_lib.model.report import parse_shape, reduced_shape

    # channels first: N shrinks, then C; spatial sizes stay
    assert reduced_shape((256, 64, 112, 112), 1 << 15) == (2, 1, 112, 112)
    assert reduced_shape((256, 2048, 7, 7), 1 << 16) == (11, 121, 7, 7)
    # rows x channels: (rows, C'), C' a multiple of 8 when C is, at least 256 channels
    assert reduced_shape((256, 56, 56, 256), 1 << 15, "nhwc") == (512, 256)
    assert reduced_shape((256, 7, 7, 2048), 1 << 16, "nhwc") == (512, 256)
    assert reduced_shape((8192, 4096), 1 << 20) == (4096, 256)
    assert reduced_shape((301, 70), 20000) == (301, 70)
    # per row: whole rows; GroupNorm keeps its channels per group, InstanceNorm its planes
    assert reduced_shape((4096, 1024), 1 << 15, "layernorm") == (32, 1024)
    assert reduced_shape((32, 256, 28, 28), 1 << 16, "groupnorm32") == (1, 80, 28, 28)
    assert reduced_shape((32, 64, 56, 56), 1 << 16, "instancenorm") == (1, 20, 56, 56)
    assert parse_shape("nhwc:2x3x4x8") == ("nhwc", (2, 3, 4, 8))
    assert parse_shape("5x6") == ("bn", (5, 6))
    import argparse
    for bad in ("groupnorm32:2x33x4x4", "instancenorm:2x3x4", "layer:4x4", "nhwc:4x4", "0x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shape(bad)


@needs_tools
def test_family_report(tmp_path):
    require_cudasim()
    out = tmp_path / "family.json"
    proc = run_model("--shape", "nhwc:3x5x7x24", "--shape", "layernorm:37x100", "--shape",
                     "groupnorm32:3x64x5x5", "--shape", "instancenorm:2x6x7x9", "--dtype",
                     "float32", "--sim-elements", "4000", "--no-progress", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    cases = {(f["op"], f["pass"]): f for f in json.loads(out.read_text())["cases"]}
    assert len(cases) == 6 + 3 * 2
    nhwc = cases["nhwc", "forward train"]
    assert nhwc["simulated_shape"] == [105, 24]  # 105 rows kept, C = 24 whole packs of 4
    # it fits on chip: one single-read launch, x read once and y written once
    assert [l["kernel"] for l in nhwc["launches"]] == ["rc_persist_forward_f32_vec"]
    assert 8 <= nhwc["dram_bytes_per_element"] < 12
    for op in ("layernorm", "groupnorm32", "instancenorm"):
        fwd, bwd = cases[op, "forward"], cases[op, "backward"]
        assert fwd["floor_bytes_per_element"] == 8 and bwd["floor_bytes_per_element"] == 12
        assert any(l["kernel"].startswith("per_row_normalize") for l in fwd["launches"])
        assert any(l["kernel"].startswith("per_row_backward_dx") for l in bwd["launches"])
        # x read at least once and y written (forward); x and dy read and dx written (backward)
        assert fwd["dram_bytes_per_element"] >= 8 and bwd["dram_bytes_per_element"] >= 12
    assert cases["layernorm", "forward"]["simulated_shape"] == [37, 100]
    # 4000 // (64 x 25) = 2 samples of all 32 groups
    assert cases["groupnorm32", "backward"]["simulated_shape"] == [2, 64, 5, 5]
