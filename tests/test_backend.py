"""The gpuarray shim, backend selection and the command line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray


def test_to_gpu_copies_and_get_copies(backend):
    host = np.arange(35, dtype=np.float32).reshape(5, 7)
    a = gpuarray.to_gpu(host)
    host[0, 0] = -1
    assert a.get()[0, 0] == 0  # the device array does not share the caller's memory
    out = a.get()
    out[1, 1] = -5
    assert a.get()[1, 1] == 8
    assert isinstance(a, gpuarray.GPUArray) and gpuarray.is_array(a)
    assert a.shape == (5, 7) and a.dtype == np.float32 and a.size == 35 and a.nbytes == 140


def test_array_surface(backend):
    a = gpuarray.zeros((3, 5), np.float32)
    np.testing.assert_array_equal(a.get(), np.zeros((3, 5)))
    a.fill(2.5)
    np.testing.assert_array_equal(a.get(), np.full((3, 5), 2.5))
    b = a.copy()
    b.fill(1)
    assert a.get()[0, 0] == 2.5
    r = a.reshape(5, 3)
    assert r.shape == (5, 3) and a.reshape((15,)).shape == (15,) and a.ravel().shape == (15,)
    src = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    a.set(src)
    np.testing.assert_array_equal(r.get(), src.reshape(5, 3))  # reshape views the same memory
    e = gpuarray.empty((2, 3), np.float32)
    assert e.shape == (2, 3) and e.dtype == np.float32
    assert str(gpuarray.to_gpu(np.arange(3, dtype=np.float32))) == str(np.arange(3, dtype=np.float32))
    with pytest.raises(ValueError):
        a.set(np.zeros((4, 5), np.float32))


def test_unknown_backend_is_refused():
    with pytest.raises(config.BackendError, match="not a backend"):
        config.set_backend("tpu")


def _run(args, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, env=full,
                          timeout=300)


def test_auto_falls_back_to_cpu_with_one_log_line():
    if config.probe("cuda")[0]:
        pytest.skip("a CUDA device is present, auto picks it")
    code = ("import logging; logging.basicConfig(level=logging.INFO);"
            "from batchnorm_lib import config; print(config.get_backend()); config.get_backend()")
    proc = _run(["-c", code], BATCHNORM_LIB_BACKEND="auto")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cpu"
    lines = [l for l in proc.stderr.splitlines() if "CUDA backend unavailable" in l]
    assert len(lines) == 1


def test_asking_for_cuda_without_it_says_why():
    ok, reason = config.probe("cuda")
    if ok:
        pytest.skip("a CUDA device is present")
    proc = _run(["-c", "from batchnorm_lib import config; config.get_backend()"],
                BATCHNORM_LIB_BACKEND="cuda")
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and reason in proc.stderr


def test_bad_env_value_is_refused():
    proc = _run(["-c", "from batchnorm_lib import config; config.get_backend()"],
                BATCHNORM_LIB_BACKEND="gpu0")
    assert proc.returncode != 0 and "not a backend" in proc.stderr


def test_cli_demo(backend):
    proc = _run(["-m", "batchnorm_lib", "demo"], BATCHNORM_LIB_BACKEND=backend)
    assert proc.returncode == 0, proc.stderr
    head, rest = proc.stdout.split("\n", 1)
    assert ("backend: %s" % backend) in head and "device:" in head
    assert "[[[[ 6.]]" in rest and "[[[[36.]]" in rest


def test_cli_info():
    proc = _run(["-m", "batchnorm_lib", "info"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("batchnorm_lib ") and "active backend:" in proc.stdout
    assert "CUDA kernels" in proc.stdout and "cuBLAS (Linear on cuda):" in proc.stdout


def test_cli_usage_errors():
    proc = _run(["-m", "batchnorm_lib"])
    assert proc.returncode == 2 and "COMMAND" in proc.stderr
    proc = _run(["-m", "batchnorm_lib", "frobnicate"])
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_cli_bad_backend_is_a_one_line_usage_error():
    proc = _run(["-m", "batchnorm_lib", "demo"], BATCHNORM_LIB_BACKEND="gpu0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("python -m batchnorm_lib demo: error: "
                                   "BATCHNORM_LIB_BACKEND='gpu0' is not a backend; choose one of %s"
                                   % ", ".join(config.CHOICES))


def test_cli_info_with_an_unusable_backend_still_reports():
    proc = _run(["-m", "batchnorm_lib", "info"], BATCHNORM_LIB_BACKEND="gpu0")
    assert proc.returncode == 2
    assert "active backend: none" in proc.stdout and "not a backend" in proc.stdout
    assert all(("  %-8s" % b) in proc.stdout for b in config.BACKENDS)
