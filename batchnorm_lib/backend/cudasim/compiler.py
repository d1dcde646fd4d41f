"""Simulated ``pycuda.compiler``: ``SourceModule`` builds CUDA C with the host C++ compiler.

The source is compiled unchanged except for two textual rewrites that keep line numbers:
``extern __shared__ T name[];`` becomes a pointer to the block's dynamic shared memory, and
``static __shared__`` loses its ``static``. ``cudasim_runtime.h`` is force-included first; it maps
CUDA's execution model onto fibers (see that header). For every non-template ``extern "C"
__global__`` function a launcher is appended that unpacks the parameter buffer with the kernel's
own parameter types (so the simulator never parses C types) and a signature string the launch
checks numpy argument types against.

Each module has a plain build and, made on first use by the sanitizer or ``profile()``, an
instrumented one (see instrument.py). Builds are cached by a hash of everything that goes into them
(source, included files, options, runtime and instrumentation headers, compiler version) under ``BATCHNORM_LIB_CUDASIM_CACHE`` (default
``$XDG_CACHE_HOME/batchnorm_lib/cudasim``, ``~/.cache/batchnorm_lib/cudasim`` when that is unset).
``BATCHNORM_LIB_CUDASIM_DEBUG=1`` builds with ``-O0 -g3`` for gdb.
"""

import ctypes
import glob
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from batchnorm_lib.backend.cudasim import driver, instrument
from batchnorm_lib.backend.cudasim.driver import CompileError

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_HEADER = os.path.join(HERE, "cudasim_runtime.h")
INSTRUMENT_HEADER = os.path.join(HERE, "cudasim_instrument.h")
# The sanitizer's and profiler's build: every load and store calls a hook (the thread
# sanitizer's instrumentation, whose entry points cudasim_instrument.h defines; unlike the address
# sanitizer's it reports a load and a store to one address separately); no vectorization or store
# merging, so each access the source makes is one hook call of its own size (no scalar replacement
# of aggregates either: it splits a 16-byte struct load into four 4-byte ones, where the GPU issues
# one 128-bit load); -g for source lines.
INSTRUMENT_FLAGS = ["-DCUDASIM_INSTRUMENT=1", "-g", "-fsanitize=thread",
                    "--param", "tsan-instrument-func-entry-exit=0", "-fno-tree-vectorize",
                    "-fno-tree-slp-vectorize", "-fno-store-merging", "-fno-tree-sra"]
# Misaligned accesses fault on a GPU, so every build checks them (the handler is in
# cudasim_instrument.h); benchmarks/cudasim_checks.py measures what the check costs.
ALIGNMENT_CHECK_FLAGS = ["-fsanitize=alignment"]
SHIM_DIR = os.path.join(HERE, "shim")  # crt/host_defines.h for header sets without crt/
CACHE_ENV = "BATCHNORM_LIB_CUDASIM_CACHE"
DEBUG_ENV = "BATCHNORM_LIB_CUDASIM_DEBUG"
SEED_ENV = "BATCHNORM_LIB_CUDASIM_SEED"
STACK_ENV = "BATCHNORM_LIB_CUDASIM_STACK"  # bytes of stack per simulated thread
CXX_ENV = "BATCHNORM_LIB_CUDASIM_CXX"
WATCHDOG_ENV = "BATCHNORM_LIB_CUDASIM_WATCHDOG"  # seconds a thread may run without yielding
DEFAULT_WATCHDOG = 60.0
PTXAS_ENV = "BATCHNORM_LIB_CUDASIM_PTXAS"  # "0": do not ask nvcc for registers and shared memory
DEFAULT_STACK = 64 * 1024
BUILD_VERSION = "2"  # bump to invalidate every cached build

__all__ = ["SourceModule", "CompileError", "cache_dir", "find_cxx", "find_cuda_include"]


# -- toolchain ----------------------------------------------------------------------------------
def find_cxx():
    """The host C++ compiler: $BATCHNORM_LIB_CUDASIM_CXX, $CXX, g++, c++ or clang++ (or None)."""
    for candidate in (os.environ.get(CXX_ENV), os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate:
            path = shutil.which(candidate)
            if path:
                return path
    return None


def find_cuda_include():
    """A directory holding the CUDA toolkit's cuda_fp16.h, or None."""
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    roots += ["/usr/local/cuda", "/opt/cuda", "/usr"]
    candidates = []
    for root in roots:
        if root:
            candidates += [os.path.join(root, "include"),
                           os.path.join(root, "targets", "%s-linux" % platform.machine(), "include")]
    # NVIDIA's pip wheels (nvidia-cuda-runtime-cu12 and the like) ship the headers too
    for entry in sys.path:
        candidates += sorted(glob.glob(os.path.join(entry or ".", "nvidia", "*", "include")))
    for inc in candidates:
        if os.path.isfile(os.path.join(inc, "cuda_fp16.h")) and \
                os.path.isfile(os.path.join(inc, "vector_types.h")):
            return inc
    return None


_cxx_version = {}


def _runtime_sources():
    """The runtime header and every header beside it that it includes (part of the cache key)."""
    parts = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.h"))):
        with open(path, "rb") as f:
            parts.append(os.path.basename(path).encode() + b"\0" + f.read())
    return b"\0".join(parts)


def _sibling_includes(inc):
    """The other nvidia/*/include directories beside a pip-wheel include directory (the runtime
    wheel's cuda_fp16.h needs nv/target from the cccl wheel), else []."""
    parent = os.path.dirname(os.path.dirname(os.path.abspath(inc)))
    if os.path.basename(parent) != "nvidia":
        return []
    return [d for d in sorted(glob.glob(os.path.join(parent, "*", "include")))
            if os.path.abspath(d) != os.path.abspath(inc)]


def _compiler_version(cxx):
    if cxx not in _cxx_version:
        try:
            out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
            _cxx_version[cxx] = out.stdout.splitlines()[0] if out.stdout else cxx
        except (OSError, subprocess.SubprocessError):
            _cxx_version[cxx] = cxx
    return _cxx_version[cxx]


def cache_dir():
    path = os.environ.get(CACHE_ENV)
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "batchnorm_lib", "cudasim")
    return path


# -- source handling ----------------------------------------------------------------------------
_COMMENT = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)


def _blank_comments(src):
    """Comments replaced by spaces (newlines kept), string literals kept: offsets stay valid."""
    def repl(m):
        text = m.group(0)
        if text.startswith('"'):
            return text
        return re.sub(r"[^\n]", " ", text)
    return _COMMENT.sub(repl, src)


_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+((?:(?:__align__|alignas)\s*\([^;]*?\)\s*)*)"
    r"([A-Za-z_][\w:<>,\s\*]*?)\s*((?:(?:__align__|alignas)\s*\([^;]*?\)\s*)*)"
    r"\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"\bstatic(\s+)__shared__\b")


def _depth_at(text, pos):
    return text.count("{", 0, pos) - text.count("}", 0, pos)


def rewrite_source(src):
    """Apply the simulator's two rewrites; line numbers are unchanged."""
    clean = _blank_comments(src)
    out, last = [], 0
    for m in _EXTERN_SHARED.finditer(clean):
        ctype, name = " ".join(m.group(2).split()), m.group(4)
        newlines = "\n" * src.count("\n", m.start(), m.end())
        if _depth_at(clean, m.start()) > 0:
            repl = "%s* const %s = reinterpret_cast<%s*>(__cudasim_dynamic_shared());" % (
                ctype, name, ctype)
        else:  # file scope: every use is in some kernel
            repl = "#define %s (reinterpret_cast<%s*>(__cudasim_dynamic_shared()))\n" % (name, ctype)
            if not src[:m.start()].endswith("\n") and m.start() > 0:
                repl = "\n" + repl
                newlines = newlines[1:] if newlines else ""
        out.append(src[last:m.start()])
        out.append(repl + newlines)
        last = m.end()
    out.append(src[last:])
    src = "".join(out)
    return _STATIC_SHARED.sub(r"\1__shared__", src)


_GLOBAL = re.compile(
    r"__global__\s+((?:__launch_bounds__\s*\(([^)]*)\)\s*)?)void\s+"
    r"(?:__launch_bounds__\s*\(([^)]*)\)\s*)?([A-Za-z_]\w*)\s*\(")
_EXTERN_C_BLOCK = re.compile(r'extern\s+"C"\s*\{')


def _extern_c_ranges(clean):
    ranges = []
    for m in _EXTERN_C_BLOCK.finditer(clean):
        depth, i = 1, m.end()
        while i < len(clean) and depth:
            if clean[i] == "{":
                depth += 1
            elif clean[i] == "}":
                depth -= 1
            i += 1
        ranges.append((m.end(), i))
    return ranges


def find_kernels(src, wrapped_extern_c):
    """[(name, max_threads or None)] of the kernels callable by their plain name."""
    clean = _blank_comments(src)
    blocks = _extern_c_ranges(clean)
    kernels = []
    for m in _GLOBAL.finditer(clean):
        start = m.start()
        prefix = clean[max(0, start - 400):start]
        stmt = re.split(r"[;{}]", prefix)[-1]
        if re.search(r"\btemplate\b", stmt):
            continue
        extern_c = wrapped_extern_c or re.search(r'extern\s+"C"\s*$', stmt.strip() + " ")\
            or re.search(r'extern\s+"C"', stmt) or any(a <= start < b for a, b in blocks)
        if not extern_c:
            continue
        bounds = m.group(2) or m.group(3)
        max_threads = None
        if bounds:
            first = bounds.split(",")[0].strip()
            if re.fullmatch(r"\d+[uU]?", first):
                max_threads = int(first.rstrip("uU"))
        kernels.append((m.group(4), max_threads))
    return kernels


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _included_files(src, dirs, seen=None):
    """Contents of the quoted #includes found in dirs, recursively (for the cache key)."""
    seen = {} if seen is None else seen
    for name in _INCLUDE.findall(src):
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                path = os.path.realpath(path)
                if path not in seen:
                    with open(path, "rb") as f:
                        data = f.read()
                    seen[path] = data
                    _included_files(data.decode("utf-8", "replace"),
                                    [os.path.dirname(path)] + list(dirs), seen)
                break
    return seen


def _translate_options(options):
    """nvcc options -> host compiler flags: -D/-U/-I/-std pass, fast math is noted, the rest
    (code generation, ptxas) has no host meaning and is dropped."""
    flags, std = [], "-std=c++17"
    skip_next = False
    for opt in options or []:
        if skip_next:
            skip_next = False
            continue
        if opt in ("-Xptxas", "-Xcompiler", "-maxrregcount", "--maxrregcount", "-arch", "-code",
                   "-gencode", "--gpu-architecture", "-ccbin", "-rdc"):
            skip_next = True
            continue
        if opt.startswith(("-D", "-U", "-I")):
            flags.append(opt)
        elif re.fullmatch(r"--?std=c\+\+\d\w*", opt):
            std = "-std=" + opt.split("=", 1)[1]
        elif opt in ("-use_fast_math", "--use_fast_math"):
            flags.append("-D__USE_FAST_MATH__=1")
    return [std] + flags


def _arch_number(arch):
    if arch:
        m = re.search(r"(\d+)", str(arch))
        if m:
            return int(m.group(1)) * 10
    major, minor = driver.compute_capability()
    return major * 100 + minor * 10


_TRAMPOLINE = (
    'CUDASIM_EXPORT const char* __cudasim_sig_{name}() {{ return cudasim::signature(&{name}); }}\n'
    'CUDASIM_EXPORT int __cudasim_launch_{name}(const cudasim::LaunchConfig* c, '
    'const unsigned char* a) {{ return cudasim::launch(&{name}, "{name}", c, a); }}\n')


SECTION_MARK = "@section:"  # a symbol-file entry inside the cudasim_shared section


def _symbols(cxx, so_path):
    """Addresses and sizes of zero-initialised function-local statics (``__shared__`` arrays of
    templates, which the linker keeps out of the cudasim_shared section), from objdump."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return []
    try:
        out = subprocess.run([objdump, "-t", so_path], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        name, size, section = parts[-1], parts[-2], parts[-3]
        if name == "cudasim_error" and section == ".text":
            result.append(("@anchor", int(parts[0], 16), 0))
        elif name.startswith("_ZZ") and "cudasim" not in name and section.startswith(".bss"):
            try:
                result.append((name, int(parts[0], 16), int(size, 16)))
            except ValueError:
                pass
        elif section == "cudasim_shared" and "cudasim" not in name and not name.startswith("__"):
            # counted and reset with the section; listed (marked) only to name them in findings
            try:
                result.append((SECTION_MARK + name, int(parts[0], 16), int(size, 16)))
            except ValueError:
                pass
    return result


# -- what ptxas says of each kernel (registers, static shared memory), where nvcc is installed ------
_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def _start_ptxas(source, options, include_dirs, arch_number, directory):
    """Start nvcc -cubin -Xptxas -v on the unmodified source (in parallel with the host build), or
    return None when nvcc is absent or disabled."""
    nvcc = shutil.which("nvcc")
    if nvcc is None or os.environ.get(PTXAS_ENV, "1") == "0":
        return None
    work = tempfile.mkdtemp(prefix="ptxas-", dir=directory)
    src = os.path.join(work, "kernel.cu")
    with open(src, "w") as f:
        f.write(source)
    cmd = [nvcc, "-cubin", "-arch=sm_%d" % (arch_number // 10), "-Xptxas", "-v",
           "-o", os.path.join(work, "kernel.cubin")] + list(options or []) \
        + ["-I" + d for d in include_dirs] + [src]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=work)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        return None
    return proc, work


def _finish_ptxas(started, path):
    """Write ``name registers smem`` per kernel to path (empty when ptxas could not say)."""
    lines = []
    if started is not None:
        proc, work = started
        try:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode == 0:
                name = None
                for line in out.splitlines():
                    m = _PTXAS_ENTRY.search(line)
                    if m:
                        name = m.group(1)
                        continue
                    m = _PTXAS_USED.search(line)
                    if m and name:
                        smem = _PTXAS_SMEM.search(line)
                        lines.append("%s %s %s\n" % (name, m.group(1), smem.group(1) if smem else 0))
                        name = None
        except subprocess.TimeoutExpired:
            proc.kill()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    tmp = path + ".%d.tmp" % os.getpid()
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _read_ptxas(path):
    info = {}
    try:
        with open(path) as f:
            for line in f:
                name, regs, smem = line.split()
                info[name] = (int(regs), int(smem))
    except (OSError, ValueError):
        pass
    return info


# -- without nvcc: each kernel's static shared memory from the host build ----------------------------
_FUNC_HEADER = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_REFERENCE = re.compile(r"<([^>+]+)(?:\+0x[0-9a-f]+)?>")


def _shared_by_kernel(so_path, kernels):
    """{kernel: bytes} of the ``__shared__`` variables each kernel reaches, directly or through the
    functions it calls, each variable once (what ptxas counts), from objdump's symbol table and
    disassembly; {} when objdump is missing."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return {}
    try:
        table = subprocess.run([objdump, "-t", so_path], capture_output=True, text=True,
                               timeout=120).stdout
        code = subprocess.run([objdump, "-d", "--no-show-raw-insn", so_path],
                              capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    shared = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        name, size, section = parts[-1], parts[-2], parts[-3]
        try:
            nbytes = int(size, 16)
        except ValueError:
            continue
        if nbytes and (section == "cudasim_shared" or (
                section.startswith(".bss") and name.startswith("_ZZ") and "cudasim" not in name)):
            shared[name] = nbytes
    refs, current = {}, None
    for line in code.splitlines():
        m = _FUNC_HEADER.match(line)
        if m:
            current = refs.setdefault(m.group(1), set())
        elif current is not None and "<" in line:
            current.update(_REFERENCE.findall(line))
    result = {}
    for kernel in kernels:
        seen, todo, used = set(), [kernel], set()
        while todo:
            fn = todo.pop()
            if fn in seen:
                continue
            seen.add(fn)
            for name in refs.get(fn, ()):
                if name in shared:
                    used.add(name)
                elif name in refs and "cudasim" not in name and not name.startswith("__ubsan"):
                    todo.append(name)  # (the runtime, and its misaligned-access handler, are not)
        if kernel in refs:
            result[kernel] = sum(shared[n] for n in used)
    return result


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3),
                ("shared_bytes", ctypes.c_uint64), ("seed", ctypes.c_uint64),
                ("stack_bytes", ctypes.c_uint64)]


_launch_lock = threading.RLock()
_launch_count = [0]
launch_counts = {}  # kernel name -> launches in this process (which kernels a test run exercised)


def _base_seed():
    text = os.environ.get(SEED_ENV, "0")
    try:
        return int(text, 0)
    except ValueError:
        raise driver.LogicError("%s=%r is not an integer" % (SEED_ENV, text))


def _watchdog_seconds():
    text = os.environ.get(WATCHDOG_ENV, "")
    try:
        return float(text) if text else DEFAULT_WATCHDOG
    except ValueError:
        raise driver.LogicError("%s=%r is not a number of seconds" % (WATCHDOG_ENV, text))


def _stack_bytes():
    return int(os.environ.get(STACK_ENV, DEFAULT_STACK))


class SourceModule:
    """pycuda's ``SourceModule``, built for the host. Same signature; ``nvcc``, ``keep``, ``code``
    are accepted and ignored; ``arch`` sets ``__CUDA_ARCH__`` (default: the simulated device's)."""

    def __init__(self, source, nvcc="nvcc", options=None, keep=False, no_extern_c=False,
                 arch=None, code=None, cache_dir=None, include_dirs=[]):  # noqa: B006 (pycuda's)
        cxx = find_cxx()
        if cxx is None:
            raise CompileError("no host C++ compiler found (set %s or CXX)" % CXX_ENV, [])
        cuda_inc = find_cuda_include()
        if cuda_inc is None:
            raise CompileError("the CUDA toolkit headers (cuda_fp16.h) were not found; set "
                               "CUDA_HOME", [])
        if not no_extern_c:
            source = 'extern "C" {\n%s\n}\n' % source
        self.kernels = dict(find_kernels(source, wrapped_extern_c=not no_extern_c))
        text = rewrite_source(source)
        arch_number = _arch_number(arch)
        # The source is saved beside the build and compiled from there, without line directives,
        # so __FILE__:__LINE__ in launch errors and gdb's listings point into a file that exists.
        full = "%s\n%s" % (text, "".join(_TRAMPOLINE.format(name=k) for k in self.kernels))
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        include_dirs = list(include_dirs or [])
        flags = (_translate_options(options)
                 + ["-O0", "-g3"] if debug else _translate_options(options) + ["-O2"])
        flags += ["-fPIC", "-shared", "-fvisibility=hidden", "-fno-strict-aliasing",
                  "-U_FORTIFY_SOURCE", "-ffp-contract=off", "-fstack-clash-protection",
                  "-pthread", "-w"]
        flags += ALIGNMENT_CHECK_FLAGS + ["-DCUDASIM_ARCH=%d" % arch_number]
        flags += ["-I" + d for d in include_dirs] + ["-I" + cuda_inc]
        for extra in _sibling_includes(cuda_inc) + [SHIM_DIR]:
            flags += ["-idirafter", extra]
        self._cxx, self._flags, self._full = cxx, flags, full
        self._included = sorted(_included_files(source, include_dirs).items())
        self._source, self._options = source, options
        self._include_dirs, self.arch_number = include_dirs, arch_number

        if cache_dir is False:
            directory = tempfile.mkdtemp(prefix="cudasim-")
        else:
            directory = cache_dir if isinstance(cache_dir, str) else globals()["cache_dir"]()
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError:  # e.g. a read-only home: a private directory under the temp dir
                directory = os.path.join(tempfile.gettempdir(),
                                         "batchnorm_lib-cudasim-%d" % os.getuid())
                os.makedirs(directory, mode=0o700, exist_ok=True)
        self._directory = directory
        self._builds = {}
        self._functions = {}
        so_path = os.path.join(directory, "cudasim-%s.so" % self._key(flags))
        ptxas_path = so_path[:-3] + ".ptxas"
        ptxas = None
        if not os.path.isfile(ptxas_path):  # nvcc runs beside the host build
            ptxas = _start_ptxas(source, options, include_dirs, arch_number, directory)
        try:
            plain = self._load(False)
        except BaseException:
            if ptxas is not None:
                ptxas[0].kill()
                ptxas[0].wait()
                shutil.rmtree(ptxas[1], ignore_errors=True)
            raise
        if not os.path.isfile(ptxas_path):
            _finish_ptxas(ptxas, ptxas_path)
        # registers and static shared memory per kernel as ptxas counts them ({} without nvcc)
        self.ptxas = _read_ptxas(ptxas_path)
        smem_path = so_path[:-3] + ".smem"
        if not os.path.isfile(smem_path):
            tmp = smem_path + ".%d.tmp" % os.getpid()
            with open(tmp, "w") as f:
                for name, nbytes in _shared_by_kernel(plain.path, self.kernels).items():
                    f.write("%s 0 %d\n" % (name, nbytes))
            os.replace(tmp, smem_path)
        self._host_shared = {k: v[1] for k, v in _read_ptxas(smem_path).items()}
        self.path = plain.path
        self._lib = plain.lib
        self._static_shared = plain.static_shared

    def _key(self, flags):
        h = hashlib.sha256()
        for part in (BUILD_VERSION, _compiler_version(self._cxx), " ".join(flags),
                     _runtime_sources(), self._full):
            h.update(part if isinstance(part, bytes) else part.encode())
            h.update(b"\0")
        for path, data in self._included:
            h.update(path.encode() + b"\0" + data + b"\0")
        return h.hexdigest()[:32]

    def _load(self, instrumented):
        """The plain build, or the instrumented one (built on first use): a _Build."""
        if instrumented not in self._builds:
            flags = self._flags + (INSTRUMENT_FLAGS if instrumented else [])
            so_path = os.path.join(self._directory, "cudasim-%s.so" % self._key(flags))
            sym_path = so_path[:-3] + ".shared"
            src_path = so_path[:-3] + ".cu"
            if not (os.path.isfile(so_path) and os.path.isfile(sym_path)
                    and os.path.isfile(src_path)):
                self._build(self._cxx, flags, self._full, self._directory, so_path, sym_path,
                            src_path)
            self._builds[instrumented] = _Build(so_path, sym_path)
        return self._builds[instrumented]

    @staticmethod
    def _build(cxx, flags, full, directory, so_path, sym_path, src_path):
        work = tempfile.mkdtemp(prefix="build-", dir=directory)
        try:
            with open(os.path.join(work, "kernel.cu"), "w") as f:
                f.write(full)
            os.replace(os.path.join(work, "kernel.cu"), src_path)
            src = src_path
            tmp_so = os.path.join(work, "module.so")
            tmp_o = os.path.join(work, "module.o")
            # compiled and linked apart: the checks' handlers are the module's own
            # (cudasim_instrument.h), so no sanitizer runtime library is linked into the process
            compile_flags = [f for f in flags if f not in ("-shared",)]
            link_flags = [f for f in flags if f in ("-shared", "-fPIC", "-pthread")]
            cmd = [cxx] + compile_flags + ["-include", RUNTIME_HEADER, "-include",
                                           INSTRUMENT_HEADER, "-x", "c++", "-c", src, "-o", tmp_o]
            for step in (cmd, [cxx] + link_flags + ["-Wl,-z,defs", tmp_o, "-o", tmp_so]):
                proc = subprocess.run(step, capture_output=True, text=True, cwd=work)
                if proc.returncode != 0:
                    raise CompileError("cudasim compilation failed", step, stdout=proc.stdout,
                                       stderr=proc.stderr)
            symbols = _symbols(cxx, tmp_so)
            with open(os.path.join(work, "module.shared"), "w") as f:
                for name, addr, size in symbols:
                    f.write("%s %d %d\n" % (name, addr, size))
            os.replace(os.path.join(work, "module.shared"), sym_path)
            os.replace(tmp_so, so_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def get_function(self, name):
        if name not in self._functions:
            if name not in self.kernels:
                raise driver.LogicError(
                    "cuModuleGetFunction failed: named symbol not found (%r is not a non-template "
                    'extern "C" __global__ function of this module)' % (name,))
            self._functions[name] = Function(self, name, self.kernels[name])
        return self._functions[name]

    def get_global(self, name):
        raise driver.LogicError("get_global is not simulated")

    @property
    def static_shared_bytes(self):
        """Static shared memory of all the module's kernels together (an upper bound for one)."""
        return self._static_shared

    def kernel_static_shared(self, name):
        """Static shared memory of kernel ``name``: ptxas's count where nvcc is installed, else the
        ``__shared__`` variables the host build shows it reaching, else the module's total."""
        if name in self.ptxas:
            return self.ptxas[name][1]
        return self._host_shared.get(name, self._static_shared)


class _Build:
    """One loaded build of a module: the library, its static shared memory, its load address."""

    def __init__(self, so_path, sym_path):
        self.path = so_path
        self.lib = ctypes.CDLL(so_path, mode=getattr(os, "RTLD_LOCAL", 0))
        self.lib.cudasim_error.restype = ctypes.c_char_p
        self.lib.cudasim_static_shared_bytes.restype = ctypes.c_size_t
        self.lib.cudasim_set_grid.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double]
        self.instrumented = bool(self.lib.cudasim_instrumented())
        self.static_shared = 0
        self.base = None
        self.symbols = []
        self._set_poison(sym_path)

    def _set_poison(self, sym_path):
        entries = []
        with open(sym_path) as f:
            for line in f:
                name, addr, size = line.split()
                entries.append((name, int(addr), int(size)))
        anchor = [a for n, a, s in entries if n == "@anchor"]
        self.symbols = [(n[len(SECTION_MARK):] if n.startswith(SECTION_MARK) else n, a, s)
                        for n, a, s in entries if n != "@anchor" and s > 0]
        entries = [e for e in entries if not e[0].startswith(SECTION_MARK)]
        regions = [(a, s) for n, a, s in entries if n != "@anchor" and s > 0]
        self.static_shared = int(self.lib.cudasim_static_shared_bytes()) + sum(
            s for n, a, s in entries if n.startswith("_ZZ") and s > 0)
        if anchor:
            self.base = ctypes.cast(self.lib.cudasim_error, ctypes.c_void_p).value - anchor[0]
        if not anchor or not regions:
            return
        base = self.base
        n = len(regions)
        addrs = (ctypes.c_uint64 * n)(*[base + a for a, s in regions])
        sizes = (ctypes.c_uint64 * n)(*[s for a, s in regions])
        self._poison = (addrs, sizes)
        self.lib.cudasim_set_poison(addrs, sizes, ctypes.c_int(n))


# -- launching ----------------------------------------------------------------------------------
def _parse_signature(sig):
    params = []
    for item in sig.split():
        kind, rest = item[0], item[1:]
        size, align = (int(v) for v in rest.split(":"))
        params.append((kind, size, align))
    return params


_KIND_NAMES = {"p": "pointer", "i": "signed integer", "u": "unsigned integer", "f": "floating",
               "h": "16-bit float", "s": "struct"}


def _is_pointerish(arg):
    return isinstance(arg, driver.DeviceAllocation) or hasattr(arg, "gpudata") or \
        type(arg).__name__ == "PooledDeviceAllocation"


class Function:
    """pycuda's ``Function``: ``f(*args, block=(x, y, z), grid=(x, y[, z]), shared=0)``."""

    def __init__(self, module, name, max_threads):
        self.module = module
        self.name = name
        lib = module._lib
        self._launchers = {}
        self._pointers = []
        sig = getattr(lib, "__cudasim_sig_" + name)
        sig.restype = ctypes.c_char_p
        self.params = _parse_signature(sig().decode())
        self.max_threads_per_block = max_threads or driver.MAX_THREADS_PER_BLOCK
        # registers per thread as ptxas allocates them (0: unknown, nvcc is not installed)
        self.num_regs = module.ptxas.get(name, (0, 0))[0]
        self.local_size_bytes = 0
        self.const_size_bytes = 0
        self._prepared = None
        self._max_dynamic_shared = None  # cuFuncSetAttribute's MAX_DYNAMIC_SHARED_SIZE_BYTES

    @property
    def shared_size_bytes(self):
        return self.module.kernel_static_shared(self.name)

    @property
    def max_dynamic_shared_size_bytes(self):
        if self._max_dynamic_shared is not None:
            return self._max_dynamic_shared
        return max(0, driver.MAX_SHARED_PER_BLOCK - self.shared_size_bytes)

    def get_attribute(self, attr):
        fa = driver.function_attribute
        values = {fa.MAX_THREADS_PER_BLOCK: self.max_threads_per_block,
                  fa.SHARED_SIZE_BYTES: self.shared_size_bytes,
                  fa.CONST_SIZE_BYTES: 0, fa.LOCAL_SIZE_BYTES: 0, fa.NUM_REGS: self.num_regs,
                  fa.MAX_DYNAMIC_SHARED_SIZE_BYTES: self.max_dynamic_shared_size_bytes}
        if attr not in values:
            raise driver.LogicError("cuFuncGetAttribute: attribute %r is not simulated" % (attr,))
        return values[attr]

    def set_attribute(self, attr, value):
        """pycuda's ``Function.set_attribute``; MAX_DYNAMIC_SHARED_SIZE_BYTES opts in to more than
        48 KiB of shared memory per block, up to the device's limit (227 KiB on sm_90)."""
        if attr == driver.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES:
            value = int(value)
            limit = driver.device_limits()["smem_block_optin"] - self.shared_size_bytes
            if not 0 <= value <= limit:
                raise driver.LogicError(
                    "cuFuncSetAttribute failed: invalid value (kernel %s: %d bytes of dynamic "
                    "shared memory; at most %d with its %d bytes of static shared memory on "
                    "compute capability %d.%d)" % ((self.name, value, limit,
                                                    self.shared_size_bytes)
                                                   + driver.compute_capability()))
            self._max_dynamic_shared = value
        elif attr == driver.function_attribute.PREFERRED_SHARED_MEMORY_CARVEOUT:
            pass  # a hint for the hardware's L1/shared split: nothing to simulate
        else:
            raise driver.LogicError("cuFuncSetAttribute: attribute %r cannot be set" % (attr,))

    def blocks_per_sm(self, threads, dynamic_shared):
        """Resident blocks per SM for this kernel (the occupancy calculator's rule: threads,
        blocks, registers in 256-register warp allocations, shared memory with 1 KiB reserved per
        block)."""
        lim = driver.device_limits()
        warps = -(-threads // 32)
        n = min(lim["blocks_sm"], lim["threads_sm"] // (warps * 32))
        if self.num_regs:
            per_warp = -(-self.num_regs * 32 // 256) * 256
            n = min(n, (lim["regs_sm"] // per_warp) // warps)
        smem = self.shared_size_bytes + dynamic_shared
        if smem:
            n = min(n, lim["smem_sm"] // (smem + lim["smem_reserved"]))
        return max(0, n)

    def _pack(self, args):
        if len(args) != len(self.params):
            raise TypeError("kernel %s takes %d parameters, %d given"
                            % (self.name, len(self.params), len(args)))
        size = 0
        for kind, psize, align in self.params:
            size = -(-size // align) * align + psize
        buf = bytearray(max(size, 8))
        off = 0
        for i, (arg, (kind, psize, align)) in enumerate(zip(args, self.params)):
            off = -(-off // align) * align
            data = self._encode(i, arg, kind, psize)
            buf[off:off + psize] = data
            off += psize
        return buf

    def _encode(self, i, arg, kind, psize):
        where = "kernel %s parameter #%d (%s, %d bytes)" % (self.name, i, _KIND_NAMES[kind], psize)
        if isinstance(arg, np.generic):
            dt = arg.dtype
            if kind == "p":
                ok = dt.kind in "iu" and dt.itemsize == psize
            elif kind in "iu":
                ok = dt.kind in "iub" and dt.itemsize == psize
            elif kind == "f":
                ok = dt.kind == "f" and dt.itemsize == psize
            elif kind == "h":
                ok = dt.itemsize == psize and dt.kind in "fV"
            else:
                ok = dt.itemsize == psize and dt.kind == "V"
            if not ok:
                raise TypeError("%s got numpy.%s (%d bytes): pycuda packs arguments by their numpy "
                                "type, so this launch would pass a garbled value" % (
                                    where, dt.name, dt.itemsize))
            data = arg.tobytes()
            if kind == "p":
                self._check_pointer(i, int(np.frombuffer(data, np.uint64)[0]))
            return data
        if _is_pointerish(arg):
            if kind != "p":
                raise TypeError("%s got a device pointer" % where)
            gpudata = getattr(arg, "gpudata", arg)
            addr = int(gpudata)
            self._check_pointer(i, addr)
            return np.uint64(addr).tobytes()
        raise TypeError("invalid type on parameter #%d (0-based): %s; pass numpy scalars "
                        "(np.int32, np.float32, np.uintp, ...) as pycuda requires"
                        % (i, type(arg).__name__))

    def _launcher(self, build):
        if build.path not in self._launchers:
            fn = getattr(build.lib, "__cudasim_launch_" + self.name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p]
            self._launchers[build.path] = fn
        return self._launchers[build.path]

    def _check_pointer(self, i, addr):
        self._pointers.append(addr)
        if addr != 0 and driver.registry.find(addr) is None:
            raise driver.LaunchError(
                "kernel %s parameter #%d: 0x%x is not inside any live device allocation (freed, "
                "or not device memory)" % (self.name, i, addr))

    def _dims(self, value, what, limits):
        try:
            dims = tuple(int(v) for v in value)
        except TypeError:
            raise TypeError("%s must be a tuple of 1 to 3 ints, got %r" % (what, value))
        if not 1 <= len(dims) <= 3:
            raise driver.LogicError("cuLaunchKernel failed: too many %s dimensions (%r)"
                                    % (what, value))
        dims = dims + (1,) * (3 - len(dims))
        for d, lim, axis in zip(dims, limits, "xyz"):
            if not 1 <= d <= lim:
                raise driver.LogicError(
                    "cuLaunchKernel failed: invalid argument (kernel %s: %s.%s = %d, must be 1 to "
                    "%d)" % (self.name, what, axis, d, lim))
        return dims

    def __call__(self, *args, **kwargs):
        grid = kwargs.pop("grid", (1, 1))
        block = kwargs.pop("block", None)
        if block is None:
            raise ValueError("must specify block size")
        shared = int(kwargs.pop("shared", 0))
        kwargs.pop("stream", None)
        kwargs.pop("texrefs", None)
        time_kernel = kwargs.pop("time_kernel", False)
        cooperative = bool(kwargs.pop("cooperative", False))
        if kwargs:
            raise ValueError("extra keyword arguments: %s" % (",".join(kwargs.keys())))
        return self._run(args, grid, block, shared, time_kernel, cooperative)

    def _run(self, args, grid, block, shared, time_kernel=False, cooperative=False):
        block = self._dims(block, "block", driver.MAX_BLOCK_DIM)
        grid = self._dims(grid, "grid", driver.MAX_GRID_DIM)
        threads = block[0] * block[1] * block[2]
        if threads > driver.MAX_THREADS_PER_BLOCK:
            raise driver.LogicError(
                "cuLaunchKernel failed: invalid argument (kernel %s: block %s has %d threads, at "
                "most %d)" % (self.name, block, threads, driver.MAX_THREADS_PER_BLOCK))
        if threads > self.max_threads_per_block:
            raise driver.LaunchError(
                "cuLaunchKernel failed: too many resources requested for launch (kernel %s: block "
                "of %d threads exceeds its __launch_bounds__ of %d)"
                % (self.name, threads, self.max_threads_per_block))
        if shared < 0 or shared > self.max_dynamic_shared_size_bytes:
            raise driver.LogicError(
                "cuLaunchKernel failed: invalid argument (kernel %s: %d bytes of dynamic shared "
                "memory with %d bytes static; at most %d dynamic unless raised with "
                "set_attribute(function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, n))"
                % (self.name, shared, self.shared_size_bytes, self.max_dynamic_shared_size_bytes))
        if self.num_regs:
            per_warp = -(-self.num_regs * 32 // 256) * 256
            regs = per_warp * -(-threads // 32)
            if regs > driver.device_limits()["regs_block"]:
                raise driver.LaunchError(
                    "cuLaunchKernel failed: too many resources requested for launch (kernel %s: "
                    "%d threads x %d registers need %d registers, a block has %d)"
                    % (self.name, threads, self.num_regs, regs,
                       driver.device_limits()["regs_block"]))
        resident = driver.device_limits()["sms"] * self.blocks_per_sm(threads, shared)
        blocks = grid[0] * grid[1] * grid[2]
        if cooperative and blocks > resident:
            raise driver.LaunchError(
                "cuLaunchCooperativeKernel failed: cooperative launch is too large (kernel %s: %d "
                "blocks, at most %d resident at once: %d SMs x %d blocks of %d threads each)"
                % (self.name, blocks, resident, driver.device_limits()["sms"],
                   self.blocks_per_sm(threads, shared), threads))
        self._pointers = []
        buf = self._pack(args)
        cbuf = (ctypes.c_ubyte * len(buf)).from_buffer(buf)
        sanitize, profile = instrument.sanitizing(), instrument.profiling()
        build = self.module._load(sanitize or profile)
        with _launch_lock:
            _launch_count[0] += 1
            count = _launch_count[0]
            launch_counts[self.name] = launch_counts.get(self.name, 0) + 1
            seed = (_base_seed() * 1000003 + count) & ((1 << 64) - 1)
            cfg = _LaunchConfig((ctypes.c_uint32 * 3)(*grid), (ctypes.c_uint32 * 3)(*block),
                                shared, seed, _stack_bytes())
            checked = instrument.Launch(build.lib, sanitize, profile, shared) \
                if build.instrumented else None
            build.lib.cudasim_set_grid(max(1, min(resident, blocks)), int(cooperative),
                                       _watchdog_seconds())
            start = time.perf_counter()
            try:
                rc = self._launcher(build)(ctypes.byref(cfg), ctypes.addressof(cbuf))
            finally:
                elapsed = time.perf_counter() - start
                if checked is not None:
                    checked.end(self._pointers)
            if not sanitize:
                for addr in self._pointers:
                    instrument.mark_allocation_written(addr)
            if checked is not None and profile:
                instrument.record(self.name, grid, block, shared, checked.counters)
            found, more = instrument.findings(build.lib)
            if found:
                where = checked.allocation_of if checked else driver.registry.find
                lines = [instrument.describe(self.name, f, where, build)
                         for f in found]
                if more:
                    lines.append("(and %d more findings)" % more)
                raise driver.LaunchError(
                    "%s [launch #%d of this process, %s=%s]"
                    % ("\n".join(lines), count, SEED_ENV, _base_seed()))
            if rc != 0:
                msg = build.lib.cudasim_error().decode("utf-8", "replace")
                raise driver.LaunchError(
                    "kernel %s<<<%s, %s, %d>>> failed: %s [launch #%d of this process, %s=%s]"
                    % (self.name, grid, block, shared, msg, count, SEED_ENV, _base_seed()))
        return elapsed if time_kernel else None

    # pycuda's prepared-call interface
    _FORMAT = {"P": np.uintp, "i": np.int32, "I": np.uint32, "l": np.int64, "L": np.uint64,
               "q": np.int64, "Q": np.uint64, "f": np.float32, "d": np.float64, "h": np.int16,
               "H": np.uint16, "b": np.int8, "B": np.uint8}

    def prepare(self, arg_types):
        if isinstance(arg_types, str):
            arg_types = list(arg_types)
        self._prepared = [self._FORMAT[t] if isinstance(t, str) else np.dtype(t).type
                          for t in arg_types]
        return self

    def prepared_call(self, grid, block, *args, **kwargs):
        if self._prepared is None:
            raise driver.LogicError("prepared_call before prepare")
        shared = int(kwargs.pop("shared_size", 0))
        conv = []
        for t, a in zip(self._prepared, args):
            if t is np.uintp and not isinstance(a, (int, np.integer)):
                a = int(getattr(a, "gpudata", a))
            conv.append(t(a))
        return self._run(conv, grid, block, shared)
