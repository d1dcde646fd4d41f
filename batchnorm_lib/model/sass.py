"""What the compiler says about a kernel: ptxas resource usage and the sm_90 SASS.

``compile_cubin`` runs nvcc (``-cubin -Xptxas -v``) and returns each entry's registers, static
shared memory and spills; ``disassemble`` runs nvdisasm from the ``nvidia-cuda-nvdisasm`` wheel
(the ``[gpu-tools]`` extra; a CUDA toolkit's on PATH works too) and returns each function's
instructions with their scheduling control bits; ``loads_in_flight`` reads the main loop.

Loads in flight. On Volta and later every SASS instruction carries, in the top 23 bits of its
128-bit encoding, a stall count, a yield bit, a write scoreboard (one of six, 7 = none) that a
variable-latency instruction such as a global load signals when its result arrives, a read
scoreboard, and a wait mask of scoreboards the instruction waits on before it issues (the layout
published in "Dissecting the NVIDIA Turing T4 GPU via Microbenchmarking", Jia et al., 2019). So a
load stays in flight from its issue until the first instruction whose wait mask names its write
scoreboard (or a ``DEPBAR.LE SBn, k`` that lets at most k of that scoreboard's loads remain). The
main loop is the innermost backward branch holding the most global-load bytes (the first of
equals: a remainder loop follows its main loop); it is walked twice
in program order (the second pass sees what the back edge carries over), and its figure is the
most loads, and load bytes, outstanding at once. A forward branch inside the body is taken: the
region it skips (say, reloading a channel's parameters when the channel changes) is the rare path,
and leaving its loads out keeps the figure a lower bound. Predicated loads (the same rare paths,
if-converted) are left out too, unless the loop has no unpredicated load.
"""

import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile


class ToolError(RuntimeError):
    """nvcc or the disassembler is missing or failed."""


def find_tool(name):
    """Path of ``name`` (nvcc, nvdisasm, cuobjdump): inside an installed ``nvidia-cuda-*`` wheel
    first, then on PATH; None when neither has it."""
    try:
        import nvidia
        roots = list(nvidia.__path__)
    except ImportError:
        roots = []
    for root in roots:
        # the wheels have put their tools in nvidia/cu<major>/bin and nvidia/cuda_<tool>/bin
        for path in sorted(glob.glob(os.path.join(root, "*", "bin", name)), reverse=True):
            if os.access(path, os.X_OK):
                return path
    return shutil.which(name)


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_USED = re.compile(r"Used (\d+) registers(.*)")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PROPS = re.compile(r"Function properties for (\S+)")


def parse_ptxas(log):
    """{entry: {registers, shared_bytes, stack_bytes, spill_stores, spill_loads}} from ptxas -v."""
    out, current, props_for = {}, None, None

    def entry(name):
        return out.setdefault(name, dict.fromkeys(("registers", "shared_bytes", "stack_bytes",
                                                   "spill_stores", "spill_loads"), 0))

    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = entry(m.group(1))
            continue
        m = _PROPS.search(line)
        if m:
            props_for = entry(m.group(1))
            continue
        m = _SPILL.search(line)
        if m and props_for is not None:
            props_for.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                             spill_loads=int(m.group(3)))
            continue
        m = _USED.search(line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(m.group(2))
            current["shared_bytes"] = int(s.group(1)) if s else 0
    return out


def _run(cmd):
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
    except OSError as e:
        raise ToolError("cannot run %s: %s" % (cmd[0], e)) from None
    if proc.returncode != 0:
        lines = proc.stdout.strip().splitlines()
        raise ToolError("%s failed:\n%s" % (os.path.basename(cmd[0]), "\n".join(
            lines[:20] + (["... (%d more lines)" % (len(lines) - 20)] if len(lines) > 20 else []))))
    return proc.stdout


def _cache_dir():
    """Where compiled cubins and their ptxas logs are kept across runs (nvcc takes seconds per
    source): ``$XDG_CACHE_HOME/batchnorm_lib/model`` or ``~/.cache/batchnorm_lib/model``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "batchnorm_lib", "model")


@functools.lru_cache(maxsize=None)
def _nvcc_version(nvcc):
    return _run([nvcc, "--version"])


def _headers(source_dir):
    """(name, content) of the headers next to a source: they are part of what it compiles to."""
    out = []
    for name in sorted(os.listdir(source_dir)):
        if name.endswith((".cuh", ".h")):
            with open(os.path.join(source_dir, name), "rb") as f:
                out.append((name, f.read()))
    return out


@functools.lru_cache(maxsize=None)
def _compile_cached(source_text, source_dir, arch, options):
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise ToolError("nvcc not found on PATH")
    h = hashlib.sha256()
    for part in (source_text, source_dir, arch, _nvcc_version(nvcc)) + options:
        h.update(part.encode() + b"\0")
    for name, data in _headers(source_dir):
        h.update(name.encode() + b"\0" + data + b"\0")
    directory = _cache_dir()
    base = os.path.join(directory, h.hexdigest()[:24])
    if not (os.path.isfile(base + ".cubin") and os.path.isfile(base + ".log")):
        os.makedirs(directory, exist_ok=True)
        work = tempfile.mkdtemp(prefix="build-", dir=directory)
        try:
            src = os.path.join(work, "kernel.cu")
            with open(src, "w") as f:
                f.write(source_text)
            log = _run([nvcc, "-cubin", "-arch=" + arch, "-I" + source_dir, "-Xptxas", "-v"]
                       + list(options) + ["-o", os.path.join(work, "kernel.cubin"), src])
            with open(os.path.join(work, "kernel.log"), "w") as f:
                f.write(log)
            # the log last: a cubin without its log is rebuilt, never half-read
            os.replace(os.path.join(work, "kernel.cubin"), base + ".cubin")
            os.replace(os.path.join(work, "kernel.log"), base + ".log")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with open(base + ".log") as f:
        return base + ".cubin", parse_ptxas(f.read())


def compile_cubin(source, arch="sm_90", options=()):
    """(cubin path, {entry: ptxas figures}) for the .cu file ``source`` (its folder on the include
    path), compiled once per content of the source and its folder's headers, nvcc and options."""
    with open(source) as f:
        text = f.read()
    return _compile_cached(text, os.path.dirname(os.path.abspath(source)), arch, tuple(options))


_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_HI = re.compile(r"^\s*/\* (0x[0-9a-f]{16}) \*/")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_SECTION = re.compile(r"^\.text\.(\S+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_DEPBAR = re.compile(r"DEPBAR\.LE\s+SB(\d)\s*,\s*(0x[0-9a-f]+|\d+)")


class Instruction:
    __slots__ = ("address", "text", "opcode", "predicated", "wait_mask", "write_sb", "read_sb",
                 "target")

    def __init__(self, address, text, hi):
        self.address = address
        self.text = text
        words = text.split()
        op = words[0]
        self.predicated = op.startswith("@") and op not in ("@PT",)
        if op.startswith("@") and len(words) > 1:
            op = words[1]
        self.opcode = op
        ctrl = hi >> 41
        self.write_sb = (ctrl >> 5) & 7
        self.read_sb = (ctrl >> 8) & 7
        self.wait_mask = (ctrl >> 11) & 0x3F
        m = _TARGET.search(text)
        self.target = m.group(1) if m else None

    def load_bytes(self):
        """Bytes per thread of a global load, 0 for anything else."""
        if not self.opcode.startswith("LDG"):
            return 0
        parts = self.opcode.split(".")
        for token, size in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
            if token in parts:
                return size
        return 4


@functools.lru_cache(maxsize=None)
def _disassemble_cached(cubin):
    tool = find_tool("nvdisasm")
    if tool is None:
        raise ToolError("nvdisasm not found: pip install 'batchnorm_lib[gpu-tools]' "
                        "(the nvidia-cuda-nvdisasm wheel) or put a CUDA toolkit on PATH")
    text = _run([tool, "-hex", cubin])
    functions, labels, current, current_labels, pending = {}, {}, None, None, None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = functions.setdefault(m.group(1), [])
            current_labels = labels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = _LABEL.match(line)
        if m:
            current_labels[m.group(1)] = len(current)
            continue
        m = _INSN.search(line)
        if m:
            pending = (int(m.group(1), 16), m.group(2))
            continue
        m = _HI.match(line)
        if m and pending is not None:
            current.append(Instruction(pending[0], pending[1], int(m.group(1), 16)))
            pending = None
    return functions, labels


def disassemble(cubin, kernel):
    """(instructions, {label: index}) of ``kernel`` in ``cubin``."""
    functions, labels = _disassemble_cached(cubin)
    if kernel not in functions:
        raise ToolError("no function %r in the SASS (functions: %s)"
                        % (kernel, ", ".join(sorted(functions))))
    return functions[kernel], labels[kernel]


def _loops(insns, labels):
    """(start, end) index ranges of backward branches with a body."""
    out = []
    for i, insn in enumerate(insns):
        if insn.opcode.startswith("BRA") and insn.target in labels:
            start = labels[insn.target]
            if start < i:
                out.append((start, i))
    return out


def _counted(body, insn):
    """Bytes ``insn`` loads on the common path of ``body``: predicated loads are if-converted rare
    paths, counted only in a body without unpredicated loads."""
    size = insn.load_bytes()
    if size and insn.predicated and any(i.load_bytes() and not i.predicated for i in body):
        return 0
    return size


def main_loop(insns, labels):
    """(start, end, is_loop) of the innermost loop with the most global-load bytes (the first of
    equals); the whole function when no loop loads."""
    def load_bytes(lo, hi):
        body = insns[lo:hi + 1]
        return sum(_counted(body, i) for i in body)

    loading = [(lo, hi) for lo, hi in _loops(insns, labels) if load_bytes(lo, hi) > 0]
    innermost = [(lo, hi) for lo, hi in loading
                 if not any((a, b) != (lo, hi) and lo <= a and b <= hi for a, b in loading)]
    if not innermost:
        return 0, len(insns) - 1, False
    # ties go to the first in program order: a remainder loop follows its main loop
    return max(innermost, key=lambda r: (load_bytes(*r), -r[0])) + (True,)


def loads_in_flight(insns, labels):
    """{loads, bytes, loop_start, loop_end, max_load_bytes}: most global loads (and their bytes)
    outstanding at once per thread in the main loop."""
    lo, hi, looping = main_loop(insns, labels)
    body = insns[lo:hi + 1]
    pending = []  # (scoreboard, bytes) in issue order
    best = (0, 0)
    passes = 2 if looping else 1
    targets = {}  # forward branches inside the body: index -> index of their target
    for k, insn in enumerate(body):
        t = labels.get(insn.target, -1) - lo if insn.opcode.startswith("BRA") else -1
        if k < t < len(body):
            targets[k] = t
    for p in range(passes):
        k = 0
        while k < len(body):
            insn = body[k]
            k = targets.get(k, k + 1)
            if insn.wait_mask:
                pending = [(sb, b) for sb, b in pending if not insn.wait_mask >> sb & 1]
            m = _DEPBAR.search(insn.text)
            if m:
                sb, keep = int(m.group(1)), int(m.group(2), 0)
                mine = [k for k, (s, _) in enumerate(pending) if s == sb]
                drop = set(mine[:max(0, len(mine) - keep)])
                pending = [e for k, e in enumerate(pending) if k not in drop]
            size = _counted(body, insn)
            if size and insn.write_sb < 6:
                pending.append((insn.write_sb, size))
            if p == passes - 1:
                now = (sum(b for _, b in pending), len(pending))
                best = max(best, now)
    widths = [_counted(body, i) for i in body if _counted(body, i)]
    return {"loads": best[1], "bytes": best[0], "loop_start": body[0].address,
            "loop_end": body[-1].address, "max_load_bytes": max(widths, default=0)}
