"""Batch normalization on the CPU backend: picks the compiled path or the numpy path.

``BATCHNORM_LIB_CPU_KERNELS`` chooses, once, on first use:

``auto`` (default)
    the compiled kernels (:mod:`cpu_native`, C with OpenMP built by the system compiler) when they
    build here, else the numpy path; one log line on the ``batchnorm_lib`` logger says which path
    is in use and, on fallback, why.
``native``
    the compiled kernels, or :class:`~batchnorm_lib.config.BackendError` saying why they cannot
    build.
``numpy``
    the numpy path (:mod:`cpu_numpy`).

:func:`use` switches the path later in the process (the tests run every case on both paths).
Both paths implement the contract documented in :mod:`batchnorm_lib.kernels` with the same
numerics.
"""

import logging
import os

from batchnorm_lib.config import BackendError

log = logging.getLogger("batchnorm_lib")

ENV_VAR = "BATCHNORM_LIB_CPU_KERNELS"
PATHS = ("native", "numpy")
CHOICES = ("auto",) + PATHS

_impl = None  # the active implementation module
_name = None


def _load(name):
    if name == "numpy":
        from batchnorm_lib.kernels.norm import cpu_numpy

        return cpu_numpy
    from batchnorm_lib.kernels.norm import cpu_native

    ok, reason = cpu_native.probe()
    if not ok:
        raise BackendError("CPU kernel path 'native' cannot work here: %s (set %s=numpy or "
                           "auto to use the numpy path)" % (reason, ENV_VAR))
    return cpu_native


def available_paths():
    """The CPU kernel paths that work in this process (``numpy`` always does)."""
    from batchnorm_lib.kernels.norm import cpu_native

    return [p for p in PATHS if p == "numpy" or cpu_native.probe()[0]]


def use(choice="auto", quiet=False):
    """Make ``choice`` (``auto``, ``native`` or ``numpy``) the active CPU path; returns its name."""
    global _impl, _name
    choice = (choice or "auto").strip().lower()
    if choice not in CHOICES:
        raise BackendError("%s=%r is not a CPU kernel path; choose one of %s"
                           % (ENV_VAR, choice, ", ".join(CHOICES)))
    if choice == "auto":
        from batchnorm_lib.kernels.norm import cpu_native

        ok, reason = cpu_native.probe()
        impl = cpu_native if ok else _load("numpy")
        name = "native" if ok else "numpy"
        if not quiet:
            if ok:
                log.info("batchnorm_lib: CPU kernels: native (%s)", cpu_native.describe())
            else:
                log.info("batchnorm_lib: CPU kernels: numpy (native kernels unavailable: %s)",
                         reason)
    else:
        impl, name = _load(choice), choice
        if not quiet:
            log.info("batchnorm_lib: CPU kernels: %s (%s=%s)%s", name, ENV_VAR, choice,
                     " " + impl.describe() if name == "native" else "")
    _impl, _name = impl, name
    return name


def active_path():
    """Name of the CPU path in use (resolving ``BATCHNORM_LIB_CPU_KERNELS`` on first use)."""
    _active()
    return _name


def _active():
    if _impl is None:
        use(os.environ.get(ENV_VAR, "auto"))
    return _impl


def set_num_threads(n):
    """Threads for the compiled kernels (0: the OpenMP default); returns the count in effect."""
    from batchnorm_lib.kernels.norm import cpu_native

    if cpu_native.probe()[0]:
        return cpu_native.set_num_threads(n)
    return 1


def get_num_threads():
    """Threads the active path uses (the numpy path is single-threaded)."""
    impl = _active()
    return impl.get_num_threads() if _name == "native" else 1


def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                  relu=False):
    return _active().forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean,
                                   saveinvvar, relu)


def forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    return _active().forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu)


def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    return _active().backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y)


def backward_infer(dy, scale, run_var, eps, dx, y=None):
    return _active().backward_infer(dy, scale, run_var, eps, dx, y)


def axpby(x, y, alpha, beta):
    return _active().axpby(x, y, alpha, beta)


def per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd):
    return _active().per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean,
                                     saveinvstd)


def per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias):
    return _active().per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx,
                                      dscale, dbias)
def rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                       relu=False):
    return _active().rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out,
                                        savemean, saveinvvar, relu)


def rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    return _active().rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu)


def rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    return _active().rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias,
                                         y)


def rows_backward_infer(dy, scale, run_var, eps, dx, y=None):
    return _active().rows_backward_infer(dy, scale, run_var, eps, dx, y)
