"""The GPU benchmark's pieces that run without PyTorch-on-CUDA: our side on the CUDA backends
(the simulator here), the report, and the refusal on other backends."""

import numpy as np
import pytest

from batchnorm_lib.bench import gpu
from conftest import active_backend

import reference as ref


@pytest.fixture(params=("cuda", "cudasim"))
def cuda_backend(request):
    with active_backend(request.param) as name:
        yield name


def test_our_side_rotates_and_computes_batch_norm(cuda_backend):
    rng = np.random.default_rng(5)
    shape = (3, 5, 7, 3)
    x = rng.normal(1, 2, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, 5).astype(np.float32)
    fns, results = gpu.ours(x, dy, scale, bias, copies=3)
    assert set(fns) == set(gpu.PASSES)
    for p in gpu.PASSES:
        for _ in range(4):  # wraps around the three copies
            fns[p]()
        assert fns[p].i == 1
    y, dx = results()
    np.testing.assert_allclose(y, ref.forward_train(x, scale, bias, gpu.EPS)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref.backward_train(x, dy, scale, gpu.EPS)[0], rtol=1e-4,
                               atol=1e-4)


def test_report_ends_with_the_geomean_line():
    rows = []
    for p, ratio in zip(gpu.PASSES, (1.5, 2.0, 0.75)):
        ms = {"ours": 1.0, "cudnn": ratio, "native": 2 * ratio}
        rows.append({"shape": [4, 3, 2, 2], "dtype": "float32", "pass": p, "copies": 1, "ms": ms,
                     "gbs": {s: 100.0 / v for s, v in ms.items()}, "vs_cudnn": ratio,
                     "vs_native": 2 * ratio, "max_rel_diff": 1e-7})
    summary = {p: r["vs_cudnn"] for p, r in zip(gpu.PASSES, rows)}
    summary["overall"] = gpu.geomean([r["vs_cudnn"] for r in rows])
    summary["overall_native"] = gpu.geomean([r["vs_native"] for r in rows])
    env = {"device": "dev", "commit": "abc", "date": "d", "torch": "t", "cudnn": 1, "copy_gbs": 200.0,
           "repeats": 3, "warmup": 1, "l2_bytes": 50 << 20}
    report = gpu.format_report({"env": env, "rows": rows, "geomean": summary})
    assert report.rstrip().splitlines()[-1] == "geomean vs cuDNN: %.2fx" % (1.5 * 2.0 * 0.75) ** (1 / 3)
    assert "| 4x3x2x2 | float32 | train_bwd | 1.000 | 100 | 50% | 0.750 |" in report


def test_refuses_without_the_cuda_backend(capsys):
    with active_backend("cpu"):
        assert gpu.main([]) == 2
    assert "needs the cuda backend" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, bound", [("--repeats", "0", ">= 1"),
                                                   ("--warmup", "-1", ">= 0")])
def test_counts_out_of_range_are_refused_by_the_parser(option, value, bound, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.parse_args([option, value])
    assert exit_info.value.code == 2
    assert "argument %s: must be an integer %s" % (option, bound) in capsys.readouterr().err
