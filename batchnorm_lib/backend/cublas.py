"""cuBLAS for the CUDA backend: scikit-cuda's bindings, adapted to CUDA 12/13 installs.

scikit-cuda 0.5.3 (the last release) predates CUDA 12: it loads ``libcublas.so`` or
``libcublas.so.<=10.1``, ``libcudart.so[.<=10.1]`` and ``libcuda.so``, and its package
``__init__`` imports ``pkg_resources``, which current setuptools no longer ships. A CUDA 13
runtime install has ``libcublas.so.13``, ``libcudart.so.13`` and ``libcuda.so.1`` (the unversioned
names come only with the developer packages), so a plain ``import skcuda.cublas`` fails there.

This adapter imports scikit-cuda with, for the duration of that import only:

* ``ctypes.cdll.LoadLibrary`` answering scikit-cuda's unversioned/old names with the versioned
  libraries that :func:`find_library` locates (``BATCHNORM_LIB_CUBLAS`` may name the cuBLAS file);
* its cuBLAS version probe answered from ``cublasGetProperty`` (major.minor, no device needed)
  rather than from the SONAME, which has no minor number (scikit-cuda would otherwise create a
  cuBLAS context just to ask);
* a minimal ``pkg_resources`` stand-in when setuptools has none.

If scikit-cuda is not installed or still cannot be imported, the same ``sgemm`` is bound directly
with ctypes (``cublasCreate_v2``, ``cublasSgemm_v2``, ``cublasDestroy_v2``) on the same library,
so GEMM does not depend on scikit-cuda's import succeeding; :func:`status` says which path is live
and why. Everything here is loaded lazily, on the first ``gemm``: importing this module never
touches a CUDA library.
"""

import atexit
import contextlib
import ctypes
import ctypes.util
import glob
import importlib
import os
import sys
import types

ENV_VAR = "BATCHNORM_LIB_CUBLAS"

# newest first; scikit-cuda's own list stops at 10.1
_VERSIONS = ("13", "12", "11", "10")
_SEARCH_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/lib",
                "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu")

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


class CublasUnavailable(RuntimeError):
    """cuBLAS cannot be loaded or used here; the message says why."""


def _candidates(stem, versions):
    names = ["%s.so.%s" % (stem, v) for v in versions]
    names.append("%s.so" % stem)
    return names


def _try_load(name):
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def find_library(stem, versions=_VERSIONS, env=None):
    """The first of ``stem.so.<version>`` (newest first), ``stem.so``, and the same names in the
    usual CUDA directories and ``nvidia.*`` wheels, that the dynamic loader accepts; None if none.
    ``env`` names an environment variable that, when set, is taken as the path to use."""
    if env and os.environ.get(env):
        path = os.environ[env]
        if not _try_load(path):
            raise CublasUnavailable("%s=%s cannot be loaded" % (env, path))
        return path
    for name in _candidates(stem, versions):
        if _try_load(name):
            return name
    dirs = list(_SEARCH_DIRS) + sorted(glob.glob("/usr/local/cuda-*/lib*"), reverse=True)
    for base in sys.path:  # the nvidia-cublas / nvidia-cuda-runtime wheels
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
    for d in dirs:
        for name in _candidates(stem, versions):
            path = os.path.join(d, name)
            if os.path.exists(path) and _try_load(path):
                return path
    found = ctypes.util.find_library(stem[3:] if stem.startswith("lib") else stem)
    if found and _try_load(found):
        return found
    return None


def _real_path(name):
    """Absolute path of a loaded library name (for the version in its file name)."""
    if os.path.isabs(name):
        return os.path.realpath(name)
    lib = ctypes.CDLL(name)
    try:
        info = _DlInfo()
        addr = ctypes.cast(lib.cublasCreate_v2, ctypes.c_void_p).value
        if _dladdr(ctypes.c_void_p(addr), ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(info.dli_fname.decode())
    except (AttributeError, OSError):
        pass
    return name


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


try:
    _dladdr = ctypes.CDLL(None).dladdr
    _dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    _dladdr.restype = ctypes.c_int
except (AttributeError, OSError):  # not glibc
    def _dladdr(addr, info):
        return 0


def library_map():
    """``{stem: loadable name or path}`` for cuBLAS, the CUDA runtime and the driver (None where
    missing)."""
    return {
        "libcublas": find_library("libcublas", env=ENV_VAR),
        "libcudart": find_library("libcudart"),
        "libcuda": find_library("libcuda", versions=("1",)),
    }


def resolve_name(requested, libs):
    """What to load when scikit-cuda asks for ``requested``: the versioned library of the same stem
    when we found one, else the name unchanged."""
    base = os.path.basename(requested)
    for stem, path in libs.items():
        if path and (base == stem + ".so" or base.startswith(stem + ".so.")):
            return path
    return requested


def library_version(path):
    """``(major, minor, patch)`` of the cuBLAS at ``path`` from ``cublasGetProperty`` (needs no
    device), or None."""
    try:
        fn = ctypes.CDLL(path).cublasGetProperty
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    fn.restype = ctypes.c_int
    parts = []
    for prop in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        if fn(prop, ctypes.byref(value)) != 0:
            return None
        parts.append(value.value)
    return tuple(parts)


def _versioned_soname(cublas_file, version):
    """A name scikit-cuda's version regex reads as major.minor."""
    if version is None:
        return os.path.basename(cublas_file)
    return "libcublas.so.%d.%d" % version[:2]


@contextlib.contextmanager
def _skcuda_import_shims(libs, cublas_file):
    original_load = ctypes.cdll.LoadLibrary

    def load(name):
        return original_load(resolve_name(name, libs))

    added_pkg_resources = False
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        from importlib import metadata

        stub = types.ModuleType("pkg_resources")
        stub.require = lambda name: [types.SimpleNamespace(version=metadata.version(name))]

        def declare_namespace(name):
            raise ImportError("pkg_resources stand-in: no namespace packages")

        stub.declare_namespace = declare_namespace
        sys.modules["pkg_resources"] = stub
        added_pkg_resources = True

    ctypes.cdll.LoadLibrary = load
    utils = None
    try:
        utils = importlib.import_module("skcuda.utils")
        saved = utils.find_lib_path, utils.get_soname
        utils.find_lib_path = lambda name: cublas_file if name == "cublas" else saved[0](name)
        soname = _versioned_soname(cublas_file, library_version(cublas_file))
        utils.get_soname = lambda path: soname if path == cublas_file else saved[1](path)
        yield
    finally:
        ctypes.cdll.LoadLibrary = original_load
        if utils is not None:
            utils.find_lib_path, utils.get_soname = saved
        if added_pkg_resources:
            sys.modules.pop("pkg_resources", None)


class _SkcudaBlas:
    via = "scikit-cuda"

    def __init__(self, module):
        self._m = module

    def create(self):
        return self._m.cublasCreate()

    def destroy(self, handle):
        self._m.cublasDestroy(handle)

    def sgemm(self, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        self._m.cublasSgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)


class _CtypesBlas:
    via = "ctypes"

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        self._create, self._destroy, self._sgemm = (lib.cublasCreate_v2, lib.cublasDestroy_v2,
                                                    lib.cublasSgemm_v2)
        self._create.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self._destroy.argtypes = [ctypes.c_void_p]
        f = ctypes.POINTER(ctypes.c_float)
        self._sgemm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_int, f, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_int, f, ctypes.c_void_p, ctypes.c_int]
        for fn in (self._create, self._destroy, self._sgemm):
            fn.restype = ctypes.c_int

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise CublasUnavailable("%s failed with cuBLAS status %d" % (what, status))

    def create(self):
        handle = ctypes.c_void_p()
        self._check(self._create(ctypes.byref(handle)), "cublasCreate_v2")
        return handle.value

    def destroy(self, handle):
        self._check(self._destroy(ctypes.c_void_p(handle)), "cublasDestroy_v2")

    def sgemm(self, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        a, b = ctypes.c_float(alpha), ctypes.c_float(beta)
        self._check(self._sgemm(ctypes.c_void_p(handle), transa, transb, m, n, k, ctypes.byref(a),
                                ctypes.c_void_p(A), lda, ctypes.c_void_p(B), ldb, ctypes.byref(b),
                                ctypes.c_void_p(C), ldc), "cublasSgemm_v2")


_state = {"blas": None, "handle": None, "error": None, "note": ""}


def _load():
    if _state["blas"] is not None or _state["error"] is not None:
        return
    try:
        libs = library_map()
    except CublasUnavailable as e:
        _state["error"] = str(e)
        return
    if libs["libcublas"] is None:
        _state["error"] = ("no cuBLAS library found (looked for %s, in the CUDA directories and "
                           "nvidia-cublas wheels; set %s to its path)"
                           % (", ".join(_candidates("libcublas", _VERSIONS)), ENV_VAR))
        return
    cublas_file = _real_path(libs["libcublas"])
    try:
        with _skcuda_import_shims(libs, cublas_file):
            module = importlib.import_module("skcuda.cublas")
        _state["blas"] = _SkcudaBlas(module)
        _state["note"] = "scikit-cuda on %s" % cublas_file
    except Exception as e:  # ImportError, OSError, AttributeError from a changed C API, ...
        try:
            _state["blas"] = _CtypesBlas(libs["libcublas"])
        except (OSError, AttributeError) as e2:
            _state["error"] = "cuBLAS at %s cannot be bound: %s" % (libs["libcublas"], e2)
            return
        _state["note"] = ("direct ctypes binding on %s (scikit-cuda unusable: %s: %s)"
                          % (cublas_file, type(e).__name__, e))


def status():
    """``(ok, detail)``: whether cuBLAS is usable and through which binding, or why not."""
    _load()
    if _state["error"]:
        return False, _state["error"]
    return True, _state["note"]


def handle():
    """The process's cuBLAS handle, created on first use in the current CUDA context."""
    _load()
    if _state["error"]:
        raise CublasUnavailable(_state["error"])
    if _state["handle"] is None:
        _state["handle"] = _state["blas"].create()
    return _state["handle"]


def gemm_ptrs(m, n, k, a_ptr, b_ptr, c_ptr, transA=False, transB=False, alpha=1.0, beta=0.0):
    """Row-major ``C (m x n) = alpha * op(A) @ op(B) + beta * C`` on device pointers, where op(A)
    is m x k and op(B) is k x n.

    cuBLAS is column-major, and a row-major matrix read column-major is its transpose, so this
    computes ``C^T = op(B)^T @ op(A)^T``: the operands swap places and keep their own flags."""
    h = handle()
    lda = m if transA else k  # row length of A as stored
    ldb = k if transB else n
    _state["blas"].sgemm(h, CUBLAS_OP_T if transB else CUBLAS_OP_N,
                         CUBLAS_OP_T if transA else CUBLAS_OP_N, n, m, k, float(alpha), b_ptr, ldb,
                         a_ptr, lda, float(beta), c_ptr, n)


@atexit.register
def _release():
    if _state["handle"] is not None and _state["blas"] is not None:
        try:
            _state["blas"].destroy(_state["handle"])
        except Exception:  # the context may already be gone at exit
            pass
        _state["handle"] = None
