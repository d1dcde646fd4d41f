"""Simulated ``pycuda.tools``: ``DeviceMemoryPool``.

Freed blocks are kept for reuse by exact size (pycuda bins sizes coarsely; exact sizes keep the
guard page right behind every array, so overruns still fault). The pool holds raw blocks without
finalizers: an allocation dropped inside a reference cycle returns its block to the pool, and the
garbage collector cannot free a block the pool still holds.
"""

import threading

from batchnorm_lib.backend.cudasim import driver, instrument


class PooledDeviceAllocation:
    __slots__ = ("_pool", "_block", "_size", "__weakref__")

    def __init__(self, pool, block, size):
        self._pool, self._block, self._size = pool, block, size

    def __int__(self):
        if self._block is None or self._block.ptr is None:
            raise driver.LogicError("the pooled allocation was freed")
        return self._block.ptr

    __index__ = __int__

    @property
    def size(self):
        return self._size

    def free(self):
        block, self._block = self._block, None
        if block is not None:
            self._pool._give_back(self._size, block)

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class DeviceMemoryPool:
    def __init__(self, allocator=None):
        self._held = {}
        self._lock = threading.Lock()
        self._holding = True
        self.active_blocks = 0

    @property
    def held_blocks(self):
        with self._lock:
            return sum(len(v) for v in self._held.values())

    def allocate(self, nbytes):
        nbytes = int(nbytes)
        with self._lock:
            bin_ = self._held.get(nbytes)
            block = bin_.pop() if bin_ else None
            self.active_blocks += 1
        if block is None:
            block = driver._Block(nbytes)
        else:  # a reused block reads as uninitialised memory, as a fresh one does
            driver.memset_d8(block.ptr, 0xFF, nbytes)
            instrument.mark_fresh(block.ptr)
        return PooledDeviceAllocation(self, block, nbytes)

    def _give_back(self, nbytes, block):
        with self._lock:
            self.active_blocks -= 1
            if self._holding:
                self._held.setdefault(nbytes, []).append(block)
                return
        block.release()

    def free_held(self):
        with self._lock:
            held, self._held = self._held, {}
        for blocks in held.values():
            for block in blocks:
                block.release()

    def stop_holding(self):
        self._holding = False
        self.free_held()
