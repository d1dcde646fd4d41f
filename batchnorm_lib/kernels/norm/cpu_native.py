"""Batch normalization on the CPU backend, compiled path: bn_cpu.c and rows_channels_cpu.c built
with the system compiler into one library.

The first use compiles ``SOURCES`` into one shared library with ``$CC`` (else ``cc``, ``gcc``,
``clang``): ``-O3 -ffp-contract=off``, plus ``-march=native`` (it is built on the machine that
runs it) and ``-fopenmp`` when they work, dropping them one by one when they do not. The library is
cached under ``$BATCHNORM_LIB_CACHE`` (default ``$XDG_CACHE_HOME/batchnorm_lib`` or
``~/.cache/batchnorm_lib``), named by a hash of the sources, the compiler and the flags, so a
changed source rebuilds and concurrent processes never load a half-written file. It is loaded with
ctypes. :func:`probe` says whether all this works here and, if not, why.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from batchnorm_lib.backend.cpu import kernel_address
from batchnorm_lib.kernels.norm import cpu_numpy

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "bn_cpu.c")
# every C source of the one shared library: batch norm over (N, C, S), then the other families
SOURCES = [
    SOURCE,
    os.path.join(_HERE, "per_row_cpu.c"),
    os.path.join(_HERE, "rows_channels_cpu.c"),
]
CACHE_ENV = "BATCHNORM_LIB_CACHE"
CFLAGS_ENV = "BATCHNORM_LIB_CFLAGS"  # extra compiler flags, e.g. -DTILE_BYTES=... for experiments
BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fPIC", "-shared", "-std=c99"]
# tried in order; the first set that compiles and loads is used
OPTIONAL_FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])

_lock = threading.Lock()
_lib = None
_probe = None  # (ok, reason)
_build_info = {}

_f32p = ctypes.c_void_p
_i64 = ctypes.c_int64
_dbl = ctypes.c_double
_int = ctypes.c_int


def cache_dir():
    path = os.environ.get(CACHE_ENV)
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "batchnorm_lib")
    return path


def _find_compiler():
    cand = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in cand:
        exe = shutil.which(name.split()[0]) if name else None
        if exe:
            return exe
    return None


def _compiler_id(cc):
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        return (proc.stdout.splitlines() or [""])[0].strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _compile(cc, flags, src_text, out_path):
    """Compile to a temporary file beside out_path, then rename (atomic for other processes)."""
    d = os.path.dirname(out_path)
    fd, tmp = tempfile.mkstemp(prefix=".bn_cpu-", suffix=".so", dir=d)
    os.close(fd)
    try:
        proc = subprocess.run([cc] + BASE_FLAGS + flags + ["-o", tmp] + SOURCES + ["-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return False, (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
        os.replace(tmp, out_path)
        return True, None
    except (OSError, subprocess.SubprocessError) as e:
        return False, [str(e)]
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cpu_id():
    """What -march=native depends on: a library built for one CPU must not load on another that
    shares the cache directory (a home directory on several machines)."""
    import platform

    ident = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    ident += "|" + line.strip()
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        ident += "|" + platform.processor()
    return ident


def _writable_dir():
    path = cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = os.path.join(tempfile.gettempdir(), "batchnorm_lib-%d" % os.getuid()
                        if hasattr(os, "getuid") else "batchnorm_lib")
    os.makedirs(path, exist_ok=True)
    return path


def _declare(lib):
    lib.bn_forward_train.argtypes = [_f32p, _f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p, _f32p,
                                     _dbl, _dbl, _f32p, _f32p, _int]
    lib.bn_forward_infer.argtypes = [_f32p, _f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p, _f32p,
                                     _dbl, _int]
    lib.bn_backward_train.argtypes = [_f32p, _f32p, _f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p,
                                      _f32p, _f32p, _f32p]
    lib.bn_backward_infer.argtypes = [_f32p, _f32p, _i64, _i64, _i64, _f32p, _f32p, _dbl, _f32p]
    for fn in (lib.bn_forward_train, lib.bn_forward_infer, lib.bn_backward_train,
               lib.bn_backward_infer):
        fn.restype = ctypes.c_int
    lib.bn_set_num_threads.argtypes = [ctypes.c_int]
    lib.bn_set_num_threads.restype = ctypes.c_int
    lib.bn_get_num_threads.restype = ctypes.c_int
    lib.bn_has_openmp.restype = ctypes.c_int
    lib.bn_copy.argtypes = [_f32p, _f32p, _i64]
    lib.bn_copy.restype = None
    lib.per_row_forward.argtypes = [_f32p, _f32p, _i64, _i64, _i64, _i64, _f32p, _f32p, _dbl,
                                    _f32p, _f32p]
    lib.per_row_backward.argtypes = [_f32p, _f32p, _f32p, _i64, _i64, _i64, _i64, _f32p, _f32p,
                                     _f32p, _f32p, _f32p]
    lib.per_row_forward.restype = lib.per_row_backward.restype = ctypes.c_int
    _declare_rows(lib)


def _build():
    cc = _find_compiler()
    if cc is None:
        return None, "no C compiler found (tried %s)" % (
            os.environ.get("CC") or "cc, gcc, clang")
    src = b""
    for path in SOURCES:
        with open(path, "rb") as f:
            src += f.read() + b"\0"
    ident = _compiler_id(cc)
    cpu = _cpu_id()
    out_dir = _writable_dir()
    errors = []
    user_flags = os.environ.get(CFLAGS_ENV, "").split()
    for extra in OPTIONAL_FLAG_SETS:
        flags = list(extra) + user_flags
        key = hashlib.sha256(b"\0".join([src, cc.encode(), ident.encode(),
                                         " ".join(BASE_FLAGS + flags).encode(),
                                         sys.platform.encode(), cpu.encode()])).hexdigest()[:16]
        path = os.path.join(out_dir, "bn_cpu-%s.so" % key)
        if not os.path.exists(path):
            ok, err = _compile(cc, flags, src, path)
            if not ok:
                errors.append("%s %s: %s" % (os.path.basename(cc), " ".join(flags) or "(plain)",
                                             " ".join(err)))
                continue
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError) as e:
            errors.append("%s: cannot load %s: %s" % (" ".join(flags), path, e))
            continue
        _build_info.update(compiler=cc, version=ident, flags=BASE_FLAGS + flags, path=path,
                           openmp=bool(lib.bn_has_openmp()))
        return lib, None
    return None, "compiling %s failed: %s" % (
        ", ".join(os.path.basename(p) for p in SOURCES), "; ".join(errors))


def probe():
    """``(ok, reason)``: whether the compiled kernels build and load here (built on first call)."""
    global _lib, _probe
    if _probe is None:
        with _lock:
            if _probe is None:
                try:
                    lib, reason = _build()
                except OSError as e:
                    lib, reason = None, "build failed: %s" % e
                _lib = lib
                _probe = (lib is not None, reason or "")
    return _probe


def _library():
    ok, reason = probe()
    if not ok:
        raise RuntimeError("native CPU kernels unavailable: %s" % reason)
    return _lib


def describe():
    """One line: compiler, flags, OpenMP and threads of the built library."""
    ok, reason = probe()
    if not ok:
        return "unavailable: " + reason
    info = _build_info
    flags = [f for f in info["flags"] if f not in ("-fPIC", "-shared", "-std=c99")]
    return "%s %s, %s, %d thread%s" % (
        os.path.basename(info["compiler"]), " ".join(flags),
        "OpenMP" if info["openmp"] else "no OpenMP", get_num_threads(),
        "" if get_num_threads() == 1 else "s")


def build_info():
    probe()
    return dict(_build_info)


def set_num_threads(n):
    return _library().bn_set_num_threads(int(n))


def get_num_threads():
    return _library().bn_get_num_threads()


def copy(src, dst):
    """``dst[...] = src`` for C-contiguous float32 ndarrays, on the kernels' threads."""
    if src.dtype != np.float32 or dst.dtype != np.float32 or src.size != dst.size \
            or not (src.flags.c_contiguous and dst.flags.c_contiguous):
        raise ValueError("copy: needs two C-contiguous float32 arrays of one size")
    _library().bn_copy(src.ctypes.data, dst.ctypes.data, src.size)


# -- the kernel contract -------------------------------------------------------------------------

def _addrs(arrays):
    """The kernels' addresses of ``arrays`` (an absent optional array, None, stays None), or None
    if the compiled kernels cannot take one of them (kernel_address: C-contiguous float32, not
    empty): the numpy path then handles the call."""
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        addr = kernel_address(a)
        if not addr:
            return None
        out.append(addr)
    return out


def _nsc(shape):
    """(N, C, S) of (N, C, *spatial) data."""
    s = 1
    for d in shape[2:]:
        s *= d
    return shape[0], shape[1], s


def _rc(shape):
    """(R, C) of (..., C) data."""
    c = shape[-1]
    r = 1
    for d in shape[:-1]:
        r *= d
    return r, c


def _check(rc):
    if rc != 0:
        raise MemoryError("batchnorm_lib: the CPU kernels could not allocate their workspace")


def _batchnorm_entries(prefix, dims, fallback):
    """The four batch-norm entries of one data family: the library's ``<prefix>forward_train``
    and so on, called with the data's ``dims(shape)`` (``(N, C, S)`` or ``(R, C)``), falling back
    to ``cpu_numpy``'s ``<fallback>forward_train`` and so on for arrays they cannot take."""
    names = [fallback + n for n in ("forward_train", "forward_infer", "backward_train",
                                    "backward_infer")]

    def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                      relu=False):
        p = _addrs((x, out, scale, bias, run_mean, run_var, savemean, saveinvvar))
        if p is None:
            return getattr(cpu_numpy, names[0])(x, scale, bias, run_mean, run_var, eps, factor,
                                                out, savemean, saveinvvar, relu)
        _check(getattr(_library(), prefix + "forward_train")(
            p[0], p[1], *dims(x.shape), p[2], p[3], p[4], p[5], float(eps), float(factor), p[6],
            p[7], bool(relu)))

    def forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
        p = _addrs((x, out, scale, bias, run_mean, run_var))
        if p is None:
            return getattr(cpu_numpy, names[1])(x, scale, bias, run_mean, run_var, eps, out, relu)
        _check(getattr(_library(), prefix + "forward_infer")(
            p[0], p[1], *dims(x.shape), p[2], p[3], p[4], p[5], float(eps), bool(relu)))

    def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
        p = _addrs((x, dy, dx, scale, savemean, saveinvvar, dscale, dbias, y))
        if p is None:
            return getattr(cpu_numpy, names[2])(x, dy, scale, savemean, saveinvvar, dx, dscale,
                                                dbias, y)
        _check(getattr(_library(), prefix + "backward_train")(
            p[0], p[1], p[2], *dims(x.shape), p[3], p[4], p[5], p[6], p[7], p[8]))

    def backward_infer(dy, scale, run_var, eps, dx, y=None):
        p = _addrs((dy, dx, scale, run_var, y))
        if p is None:
            return getattr(cpu_numpy, names[3])(dy, scale, run_var, eps, dx, y)
        _check(getattr(_library(), prefix + "backward_infer")(
            p[0], p[1], *dims(dy.shape), p[2], p[3], float(eps), p[4]))

    entries = (forward_train, forward_infer, backward_train, backward_infer)
    for fn, name in zip(entries, names):
        fn.__name__ = fn.__qualname__ = name
    return entries


forward_train, forward_infer, backward_train, backward_infer = _batchnorm_entries("bn_", _nsc, "")


# parameter-sized arrays: numpy is as fast as a call into the library
axpby = cpu_numpy.axpby


def per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd):
    p = _addrs((x, out, scale, bias, savemean, saveinvstd))
    if p is None:
        return cpu_numpy.per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean,
                                         saveinvstd)
    rows = savemean.size
    _check(_library().per_row_forward(p[0], p[1], rows, x.size // rows, int(groups), int(spatial),
                                      p[2], p[3], float(eps), p[4], p[5]))


def per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias):
    p = _addrs((x, dy, dx, scale, savemean, saveinvstd, dscale, dbias))
    if p is None:
        return cpu_numpy.per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial,
                                          dx, dscale, dbias)
    rows = savemean.size
    _check(_library().per_row_backward(p[0], p[1], p[2], rows, x.size // rows, int(groups),
                                       int(spatial), p[3], p[4], p[5], p[6], p[7]))


# -- rows x channels (rows_channels_cpu.c): (..., C) data as R rows of C channels ----------------

def _declare_rows(lib):
    lib.rc_forward_train.argtypes = [_f32p, _f32p, _i64, _i64, _f32p, _f32p, _f32p, _f32p, _dbl,
                                     _dbl, _f32p, _f32p, _int]
    lib.rc_forward_infer.argtypes = [_f32p, _f32p, _i64, _i64, _f32p, _f32p, _f32p, _f32p, _dbl,
                                     _int]
    lib.rc_backward_train.argtypes = [_f32p, _f32p, _f32p, _i64, _i64, _f32p, _f32p, _f32p,
                                      _f32p, _f32p, _f32p]
    lib.rc_backward_infer.argtypes = [_f32p, _f32p, _i64, _i64, _f32p, _f32p, _dbl, _f32p]
    for fn in (lib.rc_forward_train, lib.rc_forward_infer, lib.rc_backward_train,
               lib.rc_backward_infer):
        fn.restype = ctypes.c_int
    lib.rc_set_stream_bytes.argtypes = [_i64]
    lib.rc_set_stream_bytes.restype = _i64


def rows_stream_bytes(n=-1):
    """Output size (bytes) from which the elementwise passes (normalize, dx; both data families)
    use non-temporal stores; ``n >= 0`` sets it. Returns the previous value. For tests and
    tuning."""
    return _library().rc_set_stream_bytes(int(n))


rows_forward_train, rows_forward_infer, rows_backward_train, rows_backward_infer = \
    _batchnorm_entries("rc_", _rc, "rows_")
