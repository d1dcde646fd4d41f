"""A memory pool for the CPU backend's large arrays.

A fresh multi-megabyte numpy buffer comes from the operating system untouched, and the first write
to each of its pages costs a page fault: for a memory-bound pass such as inference that doubles the
time. Like the memory pool of the CUDA backend, this keeps released blocks and hands them out
again. A block returns to the pool when the last array viewing it is gone: each allocation is a
lease object that numpy keeps as the base of every view, and its finalizer gives the block back.
"""

import math
import threading

import numpy as np

MIN_POOLED_BYTES = 1 << 16   # smaller arrays come straight from numpy
ALIGN = 64


class _Lease:
    """Exposes one pooled block to numpy as an array of ``shape`` and ``dtype``; returns the block
    to the pool when the last view dies."""

    __slots__ = ("__array_interface__", "_block", "_pool")

    def __init__(self, pool, block, shape, dtype):
        self._pool, self._block = pool, block  # block: (uint8 ndarray, aligned address)
        self.__array_interface__ = {"data": (block[1], False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}

    def __del__(self):
        pool = self._pool
        if pool is not None:
            pool._release(self._block)


def _new_block(cap):
    """(buffer, its first ALIGN-aligned address) for a block of ``cap`` bytes."""
    buf = np.empty(cap + ALIGN, np.uint8)
    addr = buf.ctypes.data
    return buf, addr + (-addr) % ALIGN


class MemoryPool:
    def __init__(self, max_held_bytes=1 << 30):
        self.max_held_bytes = max_held_bytes
        self._free = {}       # capacity -> [blocks]
        self._held = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _capacity(nbytes):
        # round up to 1/8 of the next power of two: sizes a few percent apart share blocks
        step = max(ALIGN, 1 << max(0, int(nbytes - 1).bit_length() - 3))
        return -(-nbytes // step) * step

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = math.prod(shape)  # (exact Python ints; np.prod costs more than a small kernel)
        nbytes = count * dtype.itemsize
        if nbytes < MIN_POOLED_BYTES:
            return np.empty(shape, dtype)
        cap = self._capacity(nbytes)
        with self._lock:
            blocks = self._free.get(cap)
            block = blocks.pop() if blocks else None
            if block is not None:
                self._held -= block[0].nbytes
                self.hits += 1
            else:
                self.misses += 1
        if block is None:
            block = _new_block(cap)
        return np.asarray(_Lease(self, block, shape, dtype))

    def _release(self, block):
        with self._lock:
            nbytes = block[0].nbytes
            if self._held + nbytes > self.max_held_bytes:
                return  # over the cap: let numpy free it
            self._free.setdefault(nbytes - ALIGN, []).append(block)
            self._held += nbytes

    def free_held(self):
        with self._lock:
            self._free.clear()
            self._held = 0

    @property
    def held_bytes(self):
        return self._held


POOL = MemoryPool()
