"""Simulated ``pycuda.tools``: ``DeviceMemoryPool``.

Freed blocks are kept for reuse by exact size (pycuda bins sizes coarsely; exact sizes keep the
guard page right behind every array, so overruns still fault).
"""

import threading

from batchnorm_lib.backend.cudasim import driver


class PooledDeviceAllocation:
    __slots__ = ("_pool", "_alloc", "_size", "__weakref__")

    def __init__(self, pool, alloc, size):
        self._pool, self._alloc, self._size = pool, alloc, size

    def __int__(self):
        if self._alloc is None:
            raise driver.LogicError("the pooled allocation was freed")
        return int(self._alloc)

    __index__ = __int__

    @property
    def size(self):
        return self._size

    def free(self):
        alloc, self._alloc = self._alloc, None
        if alloc is not None:
            self._pool._give_back(self._size, alloc)

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class DeviceMemoryPool:
    def __init__(self, allocator=None):
        self._allocator = allocator or driver.mem_alloc
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
            alloc = bin_.pop() if bin_ else None
            self.active_blocks += 1
        if alloc is None:
            alloc = self._allocator(nbytes)
        else:  # a reused block reads as uninitialised memory, as a fresh one does
            driver.memset_d8(alloc, 0xFF, nbytes)
        return PooledDeviceAllocation(self, alloc, nbytes)

    def _give_back(self, nbytes, alloc):
        with self._lock:
            self.active_blocks -= 1
            if self._holding:
                self._held.setdefault(nbytes, []).append(alloc)
                return
        alloc.free()

    def free_held(self):
        with self._lock:
            held, self._held = self._held, {}
        for blocks in held.values():
            for alloc in blocks:
                alloc.free()

    def stop_holding(self):
        self._holding = False
        self.free_held()
