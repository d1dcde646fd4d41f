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

from batchnorm_lib.backend.cpu import as_ndarray
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

def _f32(a):
    """The backing ndarray if the compiled kernels can take it (C-contiguous float32, not empty),
    else None: the numpy path then handles the call."""
    ary = as_ndarray(a)
    if ary.dtype != np.float32 or not ary.flags.c_contiguous or ary.size == 0:
        return None
    return ary


def _nsc(ary):
    n, c = ary.shape[0], ary.shape[1]
    s = 1
    for d in ary.shape[2:]:
        s *= d
    return n, c, s


def _mask(y):
    """The relu mask argument of the backwards: (ok, pointer). No y: (True, None); a y the
    compiled kernels cannot take: (False, None), the numpy path then handles the call."""
    if y is None:
        return True, None
    ya = _f32(y)
    return ya is not None, None if ya is None else ya.ctypes.data


def _check(rc):
    if rc != 0:
        raise MemoryError("batchnorm_lib: the CPU kernels could not allocate their workspace")


def forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                  relu=False):
    arys = [_f32(a) for a in (x, out, scale, bias, run_mean, run_var, savemean, saveinvvar)]
    if any(a is None for a in arys):
        return cpu_numpy.forward_train(x, scale, bias, run_mean, run_var, eps, factor, out,
                                       savemean, saveinvvar, relu)
    xa, oa, sc, bi, rm, rv, sm, si = arys
    n, c, s = _nsc(xa)
    _check(_library().bn_forward_train(xa.ctypes.data, oa.ctypes.data, n, c, s, sc.ctypes.data,
                                       bi.ctypes.data, rm.ctypes.data, rv.ctypes.data, float(eps),
                                       float(factor), sm.ctypes.data, si.ctypes.data, bool(relu)))


def forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    arys = [_f32(a) for a in (x, out, scale, bias, run_mean, run_var)]
    if any(a is None for a in arys):
        return cpu_numpy.forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu)
    xa, oa, sc, bi, rm, rv = arys
    n, c, s = _nsc(xa)
    _check(_library().bn_forward_infer(xa.ctypes.data, oa.ctypes.data, n, c, s, sc.ctypes.data,
                                       bi.ctypes.data, rm.ctypes.data, rv.ctypes.data,
                                       float(eps), bool(relu)))


def backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    arys = [_f32(a) for a in (x, dy, scale, savemean, saveinvvar, dscale, dbias)]
    dxa = _f32(dx) if dx is not None else None
    ok, yp = _mask(y)
    if any(a is None for a in arys) or (dx is not None and dxa is None) or not ok:
        return cpu_numpy.backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y)
    xa, ga, sc, sm, si, ds, db = arys
    n, c, s = _nsc(xa)
    _check(_library().bn_backward_train(xa.ctypes.data, ga.ctypes.data,
                                        None if dxa is None else dxa.ctypes.data, n, c, s,
                                        sc.ctypes.data, sm.ctypes.data, si.ctypes.data,
                                        ds.ctypes.data, db.ctypes.data, yp))


def backward_infer(dy, scale, run_var, eps, dx, y=None):
    arys = [_f32(a) for a in (dy, dx, scale, run_var)]
    ok, yp = _mask(y)
    if any(a is None for a in arys) or not ok:
        return cpu_numpy.backward_infer(dy, scale, run_var, eps, dx, y)
    ga, da, sc, rv = arys
    n, c, s = _nsc(ga)
    _check(_library().bn_backward_infer(ga.ctypes.data, da.ctypes.data, n, c, s, sc.ctypes.data,
                                        rv.ctypes.data, float(eps), yp))


# parameter-sized arrays: numpy is as fast as a call into the library
axpby = cpu_numpy.axpby


def per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd):
    arys = [_f32(a) for a in (x, out, scale, bias, savemean, saveinvstd)]
    if any(a is None for a in arys):
        return cpu_numpy.per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean,
                                         saveinvstd)
    xa, oa, sc, bi, sm, si = arys
    rows = sm.size
    _check(_library().per_row_forward(xa.ctypes.data, oa.ctypes.data, rows, xa.size // rows,
                                      int(groups), int(spatial), sc.ctypes.data, bi.ctypes.data,
                                      float(eps), sm.ctypes.data, si.ctypes.data))


def per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias):
    arys = [_f32(a) for a in (x, dy, scale, savemean, saveinvstd, dscale, dbias)]
    dxa = _f32(dx) if dx is not None else None
    if any(a is None for a in arys) or (dx is not None and dxa is None):
        return cpu_numpy.per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial,
                                          dx, dscale, dbias)
    xa, ga, sc, sm, si, ds, db = arys
    rows = sm.size
    _check(_library().per_row_backward(xa.ctypes.data, ga.ctypes.data,
                                       None if dxa is None else dxa.ctypes.data, rows,
                                       xa.size // rows, int(groups), int(spatial), sc.ctypes.data,
                                       sm.ctypes.data, si.ctypes.data, ds.ctypes.data,
                                       db.ctypes.data))


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


def _rc(ary):
    """(R, C) of a (..., C) array."""
    c = ary.shape[-1]
    return ary.size // c, c


def rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar,
                       relu=False):
    arys = [_f32(a) for a in (x, out, scale, bias, run_mean, run_var, savemean, saveinvvar)]
    if any(a is None for a in arys):
        return cpu_numpy.rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out,
                                            savemean, saveinvvar, relu)
    xa, oa, sc, bi, rm, rv, sm, si = arys
    r, c = _rc(xa)
    _check(_library().rc_forward_train(xa.ctypes.data, oa.ctypes.data, r, c, sc.ctypes.data,
                                       bi.ctypes.data, rm.ctypes.data, rv.ctypes.data, float(eps),
                                       float(factor), sm.ctypes.data, si.ctypes.data, bool(relu)))


def rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False):
    arys = [_f32(a) for a in (x, out, scale, bias, run_mean, run_var)]
    if any(a is None for a in arys):
        return cpu_numpy.rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu)
    xa, oa, sc, bi, rm, rv = arys
    r, c = _rc(xa)
    _check(_library().rc_forward_infer(xa.ctypes.data, oa.ctypes.data, r, c, sc.ctypes.data,
                                       bi.ctypes.data, rm.ctypes.data, rv.ctypes.data, float(eps),
                                       bool(relu)))


def rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None):
    arys = [_f32(a) for a in (x, dy, scale, savemean, saveinvvar, dscale, dbias)]
    dxa = _f32(dx) if dx is not None else None
    ok, yp = _mask(y)
    if any(a is None for a in arys) or (dx is not None and dxa is None) or not ok:
        return cpu_numpy.rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale,
                                             dbias, y)
    xa, ga, sc, sm, si, ds, db = arys
    r, c = _rc(xa)
    _check(_library().rc_backward_train(xa.ctypes.data, ga.ctypes.data,
                                        None if dxa is None else dxa.ctypes.data, r, c,
                                        sc.ctypes.data, sm.ctypes.data, si.ctypes.data,
                                        ds.ctypes.data, db.ctypes.data, yp))


def rows_backward_infer(dy, scale, run_var, eps, dx, y=None):
    arys = [_f32(a) for a in (dy, dx, scale, run_var)]
    ok, yp = _mask(y)
    if any(a is None for a in arys) or not ok:
        return cpu_numpy.rows_backward_infer(dy, scale, run_var, eps, dx, y)
    ga, da, sc, rv = arys
    r, c = _rc(ga)
    _check(_library().rc_backward_infer(ga.ctypes.data, da.ctypes.data, r, c, sc.ctypes.data,
                                        rv.ctypes.data, float(eps), yp))
