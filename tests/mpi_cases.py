"""Synchronized batch norm checks, run on every rank by ``mpiexec -n P python tests/mpi_cases.py``
(tests/test_distributed.py launches it with 2 and 3 ranks). Every rank builds the whole batch
from one seed, trains on its shard with ``comm=COMM_WORLD``, and compares with one process on the
whole batch and with the float64 reference; exits non-zero on the first failure."""

import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402
from batchnorm_lib import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D,  # noqa: E402
                           BatchNormND, ModuleError, distributed)
from batchnorm_lib.backend import gpuarray  # noqa: E402
from batchnorm_lib.modules import Activation, Linear, Sequential, relu  # noqa: E402

comm = MPI.COMM_WORLD
RANK, SIZE = comm.Get_rank(), comm.Get_size()
RTOL, ATOL = 5e-5, 5e-5

FACTORIES = [("BatchNorm", lambda c, **k: BatchNorm(c, **k), (5,)),
             ("BatchNorm1D", lambda c, **k: BatchNorm1D(c, **k), (5, 7)),
             ("BatchNorm2D", lambda c, **k: BatchNorm2D(c, **k), (3, 5, 3)),
             ("BatchNorm3D", lambda c, **k: BatchNorm3D(c, **k), (3, 2, 3, 3)),
             ("BatchNormND", lambda c, **k: BatchNormND(4, c, **k), (3, 2, 2, 1, 3))]


def g(a):
    return gpuarray.to_gpu(np.ascontiguousarray(a, dtype=np.float32))


def close(a, b, what):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=RTOL,
                               atol=ATOL, err_msg="rank %d: %s" % (RANK, what))


def same_on_every_rank(arrays, what):
    blobs = comm.allgather(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))
    assert all(b == blobs[0] for b in blobs), "rank %d: %s differ between ranks" % (RANK, what)


def shard_sizes(total_rows):
    """Several splits of the batch over the ranks, one with an empty shard."""
    even = [len(s) for s in np.array_split(np.arange(total_rows), SIZE)]
    skewed = [total_rows - 2 * (SIZE - 1)] + [2] * (SIZE - 1)
    with_empty = [0] + [len(s) for s in np.array_split(np.arange(total_rows), SIZE - 1)]
    return [even, skewed, with_empty]


def check_class(label, factory, tail, sizes, affine, seed):
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    c = tail[0]
    kw = dict(initFactor=0.6, minFactor=0.2, affine=affine)
    np.random.seed(seed)
    local = factory(c, **kw)
    np.random.seed(seed)
    synced = factory(c, comm=comm, **kw)
    lo = sum(sizes[:RANK])
    mine = slice(lo, lo + sizes[RANK])
    batches = []
    for step in range(3):
        x = (rng.standard_normal((total,) + tail) * rng.uniform(0.5, 3) + 4 * step)
        dy = rng.standard_normal(x.shape)
        batches.append(x)
        y_one = local(g(x)).get()
        y = synced(g(x[mine])).get()
        assert y.shape == x[mine].shape
        close(y, y_one[mine], "%s y" % label)
        if step == 2:  # parameter gradients only (what a training loop's first layer asks)
            assert synced.backward(g(dy[mine]), updGrad=False) is None
            local.backward(g(dy), updGrad=False)
        else:
            dx_one = local.backward(g(dy)).get()
            dx = synced.backward(g(dy[mine])).get()
            assert dx.shape == x[mine].shape
            close(dx, dx_one[mine], "%s dx" % label)
        # the float64 reference on the whole batch
        scale = local.scale.get().ravel().astype(np.float64) if step == 0 else None
        if scale is not None:
            y_ref = ref.forward_train(x, scale, np.zeros(c), 1e-5)[0]
            close(y, y_ref[mine], "%s y vs reference" % label)
            dx_ref, dscale_ref, dbias_ref = ref.backward_train(x, dy, scale, 1e-5)
            close(dx, dx_ref[mine], "%s dx vs reference" % label)
            if affine:
                close(synced.vars["scale"].grad.get().ravel(), dscale_ref, "%s dscale" % label)
                close(synced.vars["bias"].grad.get().ravel(), dbias_ref, "%s dbias" % label)
        if affine:
            for k in ("scale", "bias"):
                close(synced.vars[k].grad.get(), local.vars[k].grad.get(), "%s d%s" % (label, k))
            synced.updateParams(0.1)
            local.updateParams(0.1)
        close(synced.mean.get(), local.mean.get(), "%s running mean" % label)
        close(synced.var.get(), local.var.get(), "%s running var" % label)
        assert synced.numOfProps == local.numOfProps == step + 1
        same_on_every_rank([synced.mean.get(), synced.var.get(), synced.scale.get(),
                            synced.bias.get(), synced.savemean.get(), synced.saveinvvar.get()],
                           "%s state" % label)
    mean_ref, var_ref = ref.running_stats(batches, 0.6, 0.2)
    close(synced.mean.get().ravel(), mean_ref, "%s running mean vs reference" % label)
    close(synced.var.get().ravel(), var_ref, "%s running var vs reference" % label)
    # evaluation: no communication, the same output as the single process
    synced.evalMode()
    local.evalMode()
    x = rng.standard_normal((3,) + tail)
    close(synced(g(x)).get(), local(g(x)).get(), "%s eval" % label)


def check_layout(sizes, seed, layout="channels_last", activation=None):
    """A BatchNorm2D of ``layout`` (and ``activation``) synchronized over the ranks against one
    process's channels-first module on the whole batch (the same values, axes moved)."""
    rng = np.random.default_rng(seed)
    total, c = sum(sizes), 4
    label = "%s%s" % (layout, " relu" if activation else "")
    np.random.seed(seed)  # the same random scales in both
    local = BatchNorm2D(c, initFactor=0.6, minFactor=0.2, activation=activation)
    np.random.seed(seed)
    synced = BatchNorm2D(c, initFactor=0.6, minFactor=0.2, layout=layout, comm=comm,
                         activation=activation)
    lo = sum(sizes[:RANK])
    mine = slice(lo, lo + sizes[RANK])
    if layout == "channels_last":
        last = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    else:
        last = lambda a: a  # noqa: E731
    for step in range(2):
        x = rng.standard_normal((total, c, 3, 5)) * 2 + step
        dy = rng.standard_normal(x.shape)
        y_one = last(local(g(x)).get())
        dx_one = last(local.backward(g(dy)).get())
        y = synced(g(last(x)[mine])).get()
        dx = synced.backward(g(last(dy)[mine])).get()
        if activation:
            assert 0 < np.mean(y_one > 0) < 1, "the relu must cut somewhere"
        close(y, y_one[mine], label + " y")
        close(dx, dx_one[mine], label + " dx")
        for k in ("scale", "bias"):
            close(synced.vars[k].grad.get(), local.vars[k].grad.get(), label + " d" + k)
        close(synced.mean.get(), local.mean.get(), label + " running mean")
        close(synced.var.get(), local.var.get(), label + " running var")
        same_on_every_rank([synced.mean.get(), synced.var.get(), synced.savemean.get(),
                            synced.saveinvvar.get()], label + " state")


def check_refusals():
    # ranks disagreeing on C: every rank raises, none hangs, nothing changes
    c = 3 + (RANK % 2)
    bn = BatchNorm2D(c, comm=comm)
    before = [bn.mean.get(), bn.var.get(), bn.numOfProps]
    try:
        bn(g(np.ones((2, c, 2, 2))))
        raise AssertionError("rank %d: channel disagreement not refused" % RANK)
    except ModuleError as e:
        assert "disagree on the number of channels" in str(e), str(e)
    np.testing.assert_array_equal(bn.mean.get(), before[0])
    np.testing.assert_array_equal(bn.var.get(), before[1])
    assert bn.numOfProps == before[2]
    # one rank's bad shard: its own ModuleError there, a ModuleError naming it elsewhere
    bn = BatchNorm2D(3, comm=comm)
    shape = (2, 4 if RANK == SIZE - 1 else 3, 2, 2)
    try:
        bn(g(np.ones(shape)))
        raise AssertionError("rank %d: bad shard not refused" % RANK)
    except ModuleError as e:
        want = "expects 3 channels" if RANK == SIZE - 1 else "refused on another rank"
        assert want in str(e), str(e)
    assert bn.numOfProps == 0 and bn.savemean is None
    # one value per channel in the whole batch
    try:
        bn(g(np.ones((1 if RANK == 0 else 0, 3, 1, 1))))
        raise AssertionError("rank %d: a single value per channel not refused" % RANK)
    except ModuleError as e:
        assert "more than one value per channel" in str(e), str(e)
    # the backward: a wrong gradient shape on one rank
    bn(g(np.random.default_rng(RANK).standard_normal((2, 3, 2, 2))))
    try:
        bn.backward(g(np.ones((2, 3, 2, 3 if RANK == 0 else 2))))
        raise AssertionError("rank %d: bad gradient not refused" % RANK)
    except ModuleError as e:
        want = "grad shape" if RANK == 0 else "the backward refused on rank 0"
        assert want in str(e), str(e)
    # every shard empty: an empty batch, as in one process
    bn = BatchNorm2D(3, comm=comm)
    y = bn(g(np.zeros((0, 3, 2, 2))))
    dx = bn.backward(g(np.zeros((0, 3, 2, 2))))
    assert y.shape == dx.shape == (0, 3, 2, 2) and bn.numOfProps == 0


def check_helpers():
    np.random.seed(100 + RANK)  # different weights on every rank ...
    net = Sequential([Linear(4, 6), BatchNorm(6), Activation(relu), Linear(6, 2)])
    net[1].mean.set(np.full((1, 6, 1, 1), RANK, np.float32))
    distributed.broadcast_params(net, comm, root=SIZE - 1)  # ... then the last rank's
    same_on_every_rank([net[0].W.get(), net[3].W.get(), net[1].mean.get()], "broadcast params")
    assert float(net[1].mean.get()[0, 0, 0, 0]) == SIZE - 1
    distributed.convert_sync(net, comm)
    assert net[1].comm is comm
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5 * SIZE, 4))
    dy = rng.standard_normal((5 * SIZE, 2))
    mine = slice(5 * RANK, 5 * RANK + 5)
    net.zeroGradParams()
    net(g(x[mine]))
    net.backward(g(dy[mine]))
    grads = {k: v.grad.get().copy() for k, v in net.vars.items()}
    distributed.allreduce_grads(net, comm, average=True)
    every = comm.allgather(grads)
    for k, v in net.vars.items():
        if k.startswith("1."):  # synchronized: the whole batch's already, left as they were
            np.testing.assert_array_equal(v.grad.get(), grads[k])
        else:
            expect = sum(e[k].astype(np.float64) for e in every) / SIZE
            close(v.grad.get(), expect, "allreduce %s" % k)
    same_on_every_rank([v.grad.get() for _, v in sorted(net.vars.items())], "reduced grads")


def main():
    seed = 0
    for label, factory, tail in FACTORIES:
        for sizes in shard_sizes(6 if label != "BatchNorm" else 9):
            for affine in (True, False):
                seed += 1
                check_class(label, factory, tail, sizes, affine, seed)
    for sizes in shard_sizes(7):
        seed += 1
        check_layout(sizes, seed)
        seed += 1
        check_layout(sizes, seed, "channels_first", "relu")
        seed += 1
        check_layout(sizes, seed, "channels_last", "relu")
    check_refusals()
    check_helpers()
    comm.Barrier()
    if RANK == 0:
        print("mpi_cases: all checks passed on %d ranks" % SIZE)


if __name__ == "__main__":
    main()
