"""Cost of synchronizing batch norm over MPI, per training step (forward + backward).

    mpiexec -n 2 python benchmarks/sync_bench.py [--repeats 30] [--threads 1]

Every rank holds a shard of (N, C, H, W); per shape, the same BatchNorm2D on the shard without
``comm`` (local statistics), with ``comm`` (the whole batch's), and the part of the synchronized
step spent inside the two allgathers. Median over repeats after warm-up; rank 0 prints the table.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

import numpy as np  # noqa: E402

SHAPES = [(16, 64, 16, 16), (64, 128, 8, 8), (256, 256, 1, 1), (32, 32, 32, 32)]


class TimedComm:
    """The communicator, with the time spent in allgather summed up."""

    def __init__(self, comm):
        self.comm, self.seconds = comm, 0.0

    def allgather(self, obj):
        t = time.perf_counter()
        out = self.comm.allgather(obj)
        self.seconds += time.perf_counter() - t
        return out

    def Allgather(self, send, recv):
        t = time.perf_counter()
        self.comm.Allgather(send, recv)
        self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self.comm, name)


def step(bn, x, dy):
    bn(x)
    bn.backward(dy)


def median_step(bn, x, dy, comm, repeats):
    for _ in range(3):
        step(bn, x, dy)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        step(bn, x, dy)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="CPU kernel threads per rank")
    args = p.parse_args()
    from mpi4py import MPI

    from batchnorm_lib import BatchNorm2D, config
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels.norm import cpu

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if config.get_backend() == "cpu":
        cpu.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES:
        rng = np.random.default_rng(rank)
        x = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
        dy = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
        local = median_step(BatchNorm2D(shape[1]), x, dy, comm, args.repeats)
        timed = TimedComm(comm)
        synced_bn = BatchNorm2D(shape[1], comm=timed)
        synced = median_step(synced_bn, x, dy, comm, args.repeats)
        timed.seconds = 0.0
        for _ in range(args.repeats):
            step(synced_bn, x, dy)
        in_comm = timed.seconds / args.repeats
        rows.append((shape, local, synced, in_comm))
    if rank == 0:
        print("ranks: %d, backend: %s, CPU kernel threads per rank: %d, median of %d steps"
              % (size, config.get_backend(), args.threads, args.repeats))
        print("| shard (N, C, H, W) | local step ms | synchronized step ms | overhead ms | "
              "of which in allgather ms |")
        print("|---|---|---|---|---|")
        for shape, local, synced, in_comm in rows:
            print("| %s | %.3f | %.3f | %.3f | %.3f |" % (shape, local * 1e3, synced * 1e3,
                                                        (synced - local) * 1e3, in_comm * 1e3))


if __name__ == "__main__":
    main()
