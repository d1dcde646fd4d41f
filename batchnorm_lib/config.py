"""Backend selection.

``BATCHNORM_LIB_BACKEND`` picks the backend once per process: ``auto`` (the default) takes
``cuda`` when pycuda imports and a device answers, else ``cpu``; ``cuda``, ``cudasim`` and ``cpu``
are taken as asked, and a backend that cannot work raises :class:`BackendError` saying why.
``set_backend`` switches the active backend later in the process (the tests use it to run the same
cases on every backend present); arrays and modules keep the backend they were made under.
"""

import importlib
import logging
import os
import sys

log = logging.getLogger("batchnorm_lib")

ENV_VAR = "BATCHNORM_LIB_BACKEND"
BACKENDS = ("cpu", "cuda", "cudasim")
CHOICES = ("auto",) + BACKENDS

_active = None
_probe_cache = {}


class BackendError(RuntimeError):
    """A backend was asked for that cannot work here; the message says why."""


def _backend_module(name):
    # (sys.modules first: every array allocation asks, and import_module's lock costs more)
    full = "batchnorm_lib.backend." + name
    return sys.modules.get(full) or importlib.import_module(full)


def probe(name):
    """Return ``(ok, reason)``: whether backend ``name`` can work in this process, and if not, why."""
    if name not in BACKENDS:
        return False, "unknown backend %r (choose one of %s)" % (name, ", ".join(CHOICES))
    if name not in _probe_cache:
        try:
            ok, reason = _backend_module(name).probe()
        except ImportError as e:
            ok, reason = False, "cannot import its backend package: %s" % e
        except Exception as e:  # a broken backend must not take the others down with it
            ok, reason = False, "its probe failed: %s: %s" % (type(e).__name__, e)
        _probe_cache[name] = (ok, reason)
    return _probe_cache[name]


def available_backends():
    return [name for name in BACKENDS if probe(name)[0]]


def _resolve(choice):
    choice = choice.strip().lower()
    if choice not in CHOICES:
        raise BackendError(
            "%s=%r is not a backend; choose one of %s" % (ENV_VAR, choice, ", ".join(CHOICES))
        )
    if choice == "auto":
        ok, reason = probe("cuda")
        if ok:
            return "cuda"
        log.info("batchnorm_lib: CUDA backend unavailable (%s); using the cpu backend", reason)
        return "cpu"
    ok, reason = probe(choice)
    if not ok:
        raise BackendError("backend %r was asked for but cannot work here: %s" % (choice, reason))
    return choice


def get_backend():
    """Name of the active backend, resolving ``BATCHNORM_LIB_BACKEND`` on first use."""
    global _active
    if _active is None:
        _active = _resolve(os.environ.get(ENV_VAR, "auto"))
    return _active


def set_backend(name):
    """Make ``name`` (or ``auto``) the active backend; raises BackendError if it cannot work."""
    global _active
    _active = _resolve(name)
    return _active


def backend_module(name=None):
    """The backend package (``batchnorm_lib.backend.<name>``) of ``name`` or of the active backend."""
    return _backend_module(name or get_backend())
