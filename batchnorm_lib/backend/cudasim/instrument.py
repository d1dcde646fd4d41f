"""The simulator's sanitizer and memory-traffic counters (host side).

``BATCHNORM_LIB_CUDASIM_SANITIZE=1`` (read at every launch) runs launches in the instrumented
build of their module (see ``cudasim_instrument.h``), which checks every load and store for races,
uninitialized reads and out-of-bounds accesses; misaligned accesses are checked in every build.
A finding raises ``driver.LaunchError`` when the launch ends. ``profile()`` runs launches in the
same instrumented build and counts their global-memory traffic. See docs/cudasim.md.
"""

import bisect
import contextlib
import ctypes
import os
import re
import shutil
import subprocess

import numpy as np

from batchnorm_lib.backend.cudasim import driver

SANITIZE_ENV = "BATCHNORM_LIB_CUDASIM_SANITIZE"

__all__ = ["profile", "LaunchProfile", "Profile", "sanitizing", "SANITIZE_ENV"]


def sanitizing():
    return os.environ.get(SANITIZE_ENV, "") not in ("", "0")


# -- which bytes of device memory were written ----------------------------------------------------
# allocation start -> True (every byte written) or a uint8 array (1 = written); absent = fresh
_written = {}


def mark_fresh(start):
    _written.pop(start, None)


def mark_written(addr, nbytes):
    """Host copies, memsets and fills write device memory: later loads of it are initialized."""
    if nbytes <= 0:
        return
    found = driver.registry.find(addr)
    if found is None:
        return
    start, size = found
    state = _written.get(start)
    if state is True:
        return
    off = addr - start
    if off == 0 and nbytes >= size:
        _written[start] = True
        return
    if state is None:
        state = _written[start] = np.zeros(size, np.uint8)
    state[off:off + nbytes] = 1


def mark_allocation_written(addr):
    """After a launch that was not checked: whatever it wrote is unknown, so count as written the
    allocations it was given (no false reports; a later check may miss an uninitialized byte)."""
    found = driver.registry.find(addr)
    if found is not None:
        _written[found[0]] = True


# -- the launch's view of memory -------------------------------------------------------------------
class _Alloc(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("size", ctypes.c_uint64), ("lo", ctypes.c_uint64),
                ("hi", ctypes.c_uint64), ("init", ctypes.c_void_p)]


COUNTER_NAMES = ("load_bytes", "store_bytes", "load_requests", "store_requests", "load_sectors",
                 "store_sectors", "unique_load_sectors", "unique_store_sectors",
                 "ideal_load_sectors", "ideal_store_sectors")


class _Counters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in COUNTER_NAMES]


class _Finding(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("space", ctypes.c_int32), ("addr", ctypes.c_uint64),
                ("size", ctypes.c_uint32), ("is_write", ctypes.c_uint32),
                ("block", ctypes.c_uint32 * 3), ("thread", ctypes.c_uint32 * 3),
                ("other_block", ctypes.c_uint32 * 3), ("other_thread", ctypes.c_uint32 * 3),
                ("other_is_write", ctypes.c_uint32), ("has_other", ctypes.c_uint32),
                ("pc", ctypes.c_uint64), ("other_pc", ctypes.c_uint64),
                ("file", ctypes.c_char_p), ("line", ctypes.c_uint32), ("dynamic", ctypes.c_uint32),
                ("offset", ctypes.c_int64)]


_KIND_WORDS = {1: "race", 2: "uninitialized", 3: "misaligned", 4: "out of bounds"}
_SPACE_WORDS = {1: "global", 2: "shared"}


def allocation_table():
    """(ctypes array of the live allocations sorted by address, the init arrays it points into)."""
    reg = driver.registry
    with reg.lock:
        entries = [(s, reg.sizes[s]) for s in reg.starts]
    table = (_Alloc * max(1, len(entries)))()
    keep = []
    page = driver.PAGE
    for i, (start, size) in enumerate(entries):
        rounded = max(driver.ALIGNMENT, -(-size // driver.ALIGNMENT) * driver.ALIGNMENT)
        state = _written.get(start)
        if state is None:
            state = _written[start] = np.zeros(max(size, 1), np.uint8)
        init = None
        if state is not True:
            keep.append(state)
            init = state.ctypes.data
        table[i] = _Alloc(start, size, (start // page) * page - page, start + rounded + page, init)
    return table, len(entries), keep


class Launch:
    """One instrumented launch: set up before it, read the results after it."""

    def __init__(self, lib, sanitize, profile, shared):
        self.lib = lib
        self.sanitize = sanitize
        self.profile = profile
        self.table, self.n, self._keep = allocation_table()
        self.counters = _Counters()
        lib.cudasim_instr_begin.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64]
        lib.cudasim_instr_begin(int(sanitize), int(profile), ctypes.addressof(self.table), self.n,
                                ctypes.addressof(self.counters), shared)

    def end(self, pointers):
        self.lib.cudasim_instr_end()
        for addr in pointers:  # an argument now fully written needs no per-byte state any more
            found = driver.registry.find(addr)
            state = _written.get(found[0]) if found else None
            if state is not True and state is not None and state.all():
                _written[found[0]] = True

    def allocation_of(self, addr):
        starts = [self.table[i].lo for i in range(self.n)]
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < self.table[i].hi:
            return self.table[i].start, self.table[i].size
        return None


def findings(lib):
    """The launch's findings (a list of _Finding) and how many more were left out."""
    lib.cudasim_findings.restype = ctypes.c_int
    lib.cudasim_findings.argtypes = [ctypes.POINTER(ctypes.POINTER(_Finding)),
                                     ctypes.POINTER(ctypes.c_int)]
    ptr = ctypes.POINTER(_Finding)()
    more = ctypes.c_int()
    n = lib.cudasim_findings(ctypes.byref(ptr), ctypes.byref(more))
    result = [_copy(ptr[i]) for i in range(n)]
    lib.cudasim_clear_findings()
    return result, more.value


def _copy(f):
    c = _Finding()
    ctypes.pointer(c)[0] = f
    return c


_lines = {}


def source_line(so_path, base, pc):
    """file:line of the instruction before return address pc in the build at so_path, or None."""
    if not pc or base is None:
        return None
    key = (so_path, pc - base)
    if key not in _lines:
        _lines[key] = None
        tool = shutil.which("addr2line")
        if tool:
            try:
                out = subprocess.run([tool, "-e", so_path, "-i", "0x%x" % (pc - base - 1)],
                                     capture_output=True, text=True, timeout=60).stdout
                first = out.splitlines()[0].split(" (discriminator")[0] if out else ""
                if first and not first.startswith("??"):
                    path, _, line = first.rpartition(":")
                    _lines[key] = "%s:%s" % (path, line)
            except (OSError, subprocess.SubprocessError, IndexError):
                pass
    return _lines[key]


def _triple(v):
    return "(%d,%d,%d)" % (v[0], v[1], v[2])


def _shared_name(symbol):
    """`s` from a function-local static's mangled name (_ZZ10kernelE1s), else the name."""
    m = re.match(r"_ZZ.*E(\d+)(\w+)$", symbol)
    if m and len(m.group(2)) >= int(m.group(1)):
        return m.group(2)[:int(m.group(1))]
    return symbol


def _shared_place(f, build):
    if f.dynamic:
        return "byte offset %d of dynamic shared memory" % f.offset
    if build.base is not None:
        rel = f.addr - build.base
        for name, addr, size in build.symbols:
            if addr <= rel < addr + size:
                return "byte offset %d of __shared__ %s" % (rel - addr, _shared_name(name))
    return "byte offset %d of shared memory" % f.offset


def describe(kernel, f, where, build):
    """The message for one finding. where(addr) -> (start, size) of its allocation or None."""
    so_path, base = build.path, build.base
    word = _KIND_WORDS.get(f.kind, "error")
    space = _SPACE_WORDS.get(f.space)
    located = None
    if f.space == 2:
        located = _shared_place(f, build)
    else:
        found = where(f.addr)
        if found is not None:
            space = "global"
            located = "byte offset %d in a %d-byte allocation" % (f.addr - found[0], found[1])
    space = space or "local"
    line = ("%s:%d" % (f.file.decode(), f.line)) if f.file else source_line(so_path, base, f.pc)
    access = "write" if f.is_write else "read"
    parts = ["kernel %s: %s on %s memory" % (kernel, word, space)]
    if located:
        parts.append(located)
    if f.kind == 3:
        parts.append("%d-byte access at 0x%x, not a multiple of %d (misaligned address)"
                     % (f.size, f.addr, f.size))
    elif f.kind == 1:
        other_line = source_line(so_path, base, f.other_pc)
        parts.append("%s by block %s thread %s%s and %s by block %s thread %s%s" % (
            access, _triple(f.block), _triple(f.thread), " at " + line if line else "",
            "write" if f.other_is_write else "read", _triple(f.other_block),
            _triple(f.other_thread), " at " + other_line if other_line else ""))
        line = None
    else:
        parts.append("%d-byte %s by block %s thread %s" % (f.size, access, _triple(f.block),
                                                          _triple(f.thread)))
    if line:
        parts.append("at " + line)
    return ", ".join(parts)


# -- traffic counters ------------------------------------------------------------------------------
class LaunchProfile:
    """Global-memory traffic of one launch. ``*_bytes``: bytes the threads asked for;
    ``*_requests``: warp-wide memory instructions: one per instruction and warp for the lanes that
    execute it at the same point (the same iteration of every enclosing ``for``; lanes that branch
    around it or have left the loop are not in it); ``*_sectors``: per request, the distinct
    32-byte sectors its lanes touched, summed; ``ideal_*_sectors``: per request, the sectors its
    distinct bytes would need packed from its lowest address, ceil((lowest % 32 + distinct bytes)
    / 32), summed (a warp reading one value needs 1; ``ideal / sectors`` is the sector
    efficiency); ``unique_*_sectors``: distinct sectors over the launch. Atomics count as a load
    and a store. ``shared_bytes`` is the launch's dynamic shared memory."""

    __slots__ = ("name", "grid", "block", "shared_bytes") + COUNTER_NAMES

    def __init__(self, name, grid, block, shared_bytes, counters):
        self.name, self.grid, self.block, self.shared_bytes = name, grid, block, shared_bytes
        for n in COUNTER_NAMES:
            setattr(self, n, int(getattr(counters, n)))

    def __repr__(self):
        return "LaunchProfile(%s)" % ", ".join("%s=%r" % (n, getattr(self, n))
                                               for n in self.__slots__)


class Profile:
    def __init__(self):
        self.launches = []


_profiles = []


def profiling():
    return bool(_profiles)


def record(name, grid, block, shared, counters):
    entry = LaunchProfile(name, tuple(grid), tuple(block), int(shared), counters)
    for p in _profiles:
        p.launches.append(entry)


@contextlib.contextmanager
def profile():
    """``with profile() as prof:`` records every cudasim launch inside it in ``prof.launches``."""
    p = Profile()
    _profiles.append(p)
    try:
        yield p
    finally:
        _profiles.remove(p)
