"""Synchronized batch norm and data-parallel training over MPI.

The multi-rank checks live in tests/mpi_cases.py and run under ``mpiexec -n 2`` and ``-n 3``
(on each backend); the training command runs data-parallel against the single-process run. The
rest runs here in one process, on a single-rank communicator."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from batchnorm_lib import BatchNorm2D, ModuleError, distributed
from batchnorm_lib.backend import gpuarray

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py not installed (the [mpi] extra)")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def mpiexec():
    """The mpiexec next to this Python (the mpich wheel's) or on PATH."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    if found is None:
        pytest.skip("no mpiexec (pip install '.[mpi]')")
    return found


def launch(ranks, args, backend="cpu", cwd=None):
    env = dict(os.environ, BATCHNORM_LIB_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               # OpenMPI refuses to start as root without these (CI runs as root); MPICH ignores them
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # a generous guard, so a deadlock fails the test instead of hanging the suite
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable] + args, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_cases(backend, ranks):
    out = launch(ranks, [os.path.join(HERE, "mpi_cases.py")], backend)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all checks passed on %d ranks" % ranks in out.stdout


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_train_distributed_matches_single_process(tmp_path, ranks):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    common = ["-m", "batchnorm_lib", "train", "--epochs", "2", "--no-plot", "--batch-size", "50"]
    single = subprocess.run([sys.executable] + common + ["--out", str(tmp_path / "one")],
                            env=dict(os.environ, BATCHNORM_LIB_BACKEND="cpu",
                                     PYTHONPATH=os.pathsep.join([ROOT,
                                                                 os.environ.get("PYTHONPATH",
                                                                                "")])),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    out = launch(ranks, common + ["--distributed", "--out", str(tmp_path / "many")])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("test accuracy") == 2  # one summary line: rank 0's
    assert "distributed: %d ranks" % ranks in out.stdout
    one = json.loads((tmp_path / "one" / "train_history.json").read_text())
    many = json.loads((tmp_path / "many" / "train_history.json").read_text())
    assert many["settings"]["ranks"] == ranks
    for run in ("BatchNorm", "no BatchNorm"):
        for a, b in zip(one[run], many[run]):
            for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
                if ranks == 1 and run == "no BatchNorm":  # the same arithmetic: the same bits
                    assert a[key] == b[key], (run, key, a[key], b[key])
                assert abs(a[key] - b[key]) < 1e-4, (run, key, a[key], b[key])


def test_train_distributed_without_mpi4py_names_the_extra(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = dict(os.environ, BATCHNORM_LIB_BACKEND="cpu",
               PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "batchnorm_lib", "train", "--distributed",
                          "--no-plot", "--epochs", "1", "--out", str(tmp_path / "o")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert "batchnorm_lib[mpi]" in out.stderr and "Traceback" not in out.stderr


def test_single_rank_communicator_is_one_process(backend, rng):
    comm = MPI.COMM_SELF
    np.random.seed(4)
    local = BatchNorm2D(3)
    np.random.seed(4)
    synced = BatchNorm2D(3, comm=comm)
    for _ in range(2):
        x = gpuarray.to_gpu((3 + rng.standard_normal((4, 3, 5, 3))).astype(np.float32))
        dy = gpuarray.to_gpu(rng.standard_normal((4, 3, 5, 3)).astype(np.float32))
        np.testing.assert_allclose(synced(x).get(), local(x).get(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(synced.backward(dy).get(), local.backward(dy).get(),
                                   rtol=1e-4, atol=1e-5)
        for k in ("scale", "bias"):
            np.testing.assert_allclose(synced.vars[k].grad.get(), local.vars[k].grad.get(),
                                       rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(synced.var.get(), local.var.get(), rtol=1e-6)
    assert synced.numOfProps == 2


def test_missing_mpi4py_names_the_extra(monkeypatch):
    BatchNorm2D(3)  # no comm: mpi4py is never needed
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ModuleError, match=r"batchnorm_lib\[mpi\]"):
        BatchNorm2D(3, comm=MPI.COMM_SELF)


def test_not_a_communicator_refused():
    with pytest.raises(ModuleError, match="mpi4py communicator"):
        BatchNorm2D(3, comm="world")
    with pytest.raises(ModuleError, match="mpi4py communicator"):
        distributed.convert_sync(BatchNorm2D(3), object())


def test_merge_statistics_against_float64(rng):
    parts, chunks = [], []
    for n in (5, 0, 1, 17):
        x = 1e3 + rng.standard_normal((n, 4))
        chunks.append(x)
        parts.append((n, x.mean(axis=0) if n else np.zeros(4),
                      ((x - x.mean(axis=0)) ** 2).sum(axis=0) if n else np.zeros(4)))
    count, mean, m2 = distributed.merge_statistics(parts)
    whole = np.concatenate(chunks)
    assert count == 23
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(m2, ((whole - whole.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-10)
