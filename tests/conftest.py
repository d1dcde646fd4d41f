"""Every test that takes the ``backend`` fixture runs once per backend; a backend that cannot work
here is skipped with its reason shown (``pytest -rs``)."""

import contextlib

import numpy as np
import pytest

from batchnorm_lib import config

TOLERANCES = {  # (rtol, atol) of float32 results against the float64 reference
    "float32": (2e-5, 2e-5),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}


@contextlib.contextmanager
def active_backend(name):
    """Make ``name`` the active backend for the block (skipping the test, with the reason, when it
    cannot work here), then restore the previous one."""
    ok, reason = config.probe(name)
    if not ok:
        pytest.skip("backend %s unavailable: %s" % (name, reason))
    previous = config.get_backend()
    config.set_backend(name)
    try:
        yield name
    finally:
        config.set_backend(previous)


@pytest.fixture(params=config.BACKENDS)
def backend(request):
    with active_backend(request.param) as name:
        yield name


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


# Backends, and the CPU backend's two kernel paths separately: the ``where`` fixture
WHERE = ["cpu-native", "cpu-numpy", "cudasim", "cuda"]


def _where(param):
    from batchnorm_lib.kernels.norm import cpu as cpu_kernels
    from batchnorm_lib.kernels.norm import cpu_native

    backend, _, path = param.partition("-")
    if path == "native" and not cpu_native.probe()[0]:
        pytest.skip("native CPU kernels unavailable: %s" % cpu_native.probe()[1])
    with active_backend(backend):
        previous = cpu_kernels.active_path()
        if path:
            cpu_kernels.use(path, quiet=True)
        try:
            yield param
        finally:
            cpu_kernels.use(previous, quiet=True)


@pytest.fixture(params=WHERE)
def where(request):
    """A backend, and for ``cpu`` one of its two kernel paths."""
    yield from _where(request.param)


@pytest.fixture(params=WHERE[:2])
def cpu_where(request):
    """One of the CPU backend's two kernel paths."""
    yield from _where(request.param)


def to_gpu_misaligned(a, misaligned=True):
    """``a`` on the active backend; with ``misaligned``, starting one element past a 16-byte
    aligned allocation (the kernels' unpacked paths)."""
    from batchnorm_lib.backend import gpuarray

    if not misaligned:
        return gpuarray.to_gpu(a)
    whole = gpuarray.to_gpu(np.concatenate([np.zeros(1, a.dtype), a.ravel()]))
    return whole[1:].reshape(a.shape)
