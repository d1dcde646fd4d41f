"""A small training loop: an MLP with or without BatchNorm, trained on a Dataset."""

import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost import CrossEntropy
from batchnorm_lib.modules import Activation, BatchNorm, Linear, Sequential, relu
from batchnorm_lib.optimizers import SGD, Adam, MomentumSGD

OPTIMIZERS = ("momentum", "sgd", "adam")


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float  # wall time since the run started


@dataclass
class RunResult:
    name: str
    batchnorm: bool
    history: List[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    net: object = None  # the trained Sequential

    @property
    def test_acc(self):
        return self.history[-1].test_acc if self.history else float("nan")

    @property
    def test_loss(self):
        return self.history[-1].test_loss if self.history else float("nan")


def build_mlp(insize, classes, hidden=(128, 128), batchnorm=True):
    """``Linear -> [BatchNorm] -> relu`` per hidden layer, then a Linear to the class scores.

    Weights come from numpy's global random state: seed it first for a repeatable network."""
    net = Sequential(name="mlp-bn" if batchnorm else "mlp")
    size = insize
    for width in hidden:
        net.append(Linear(size, width, initscheme="he"))
        if batchnorm:
            net.append(BatchNorm(width))
        net.append(Activation(relu))
        size = width
    net.append(Linear(size, classes))
    return net


def make_optimizer(kind, lr):
    if kind == "momentum":
        return MomentumSGD(learnRate=lr, momRate=0.9)
    if kind == "sgd":
        return SGD(learnRate=lr)
    if kind == "adam":
        return Adam(alpha=lr)
    raise ValueError("optimizer must be one of %s, got %r" % (", ".join(OPTIMIZERS), kind))


def evaluate(net, x, y, batch_size=512):
    """(mean loss, accuracy) of ``net`` in evaluation mode on host arrays ``x``, ``y``; the
    module's mode is restored afterwards."""
    was_training = net.train
    net.evalMode()
    cost = CrossEntropy()
    correct = 0
    for i in range(0, len(y), batch_size):
        scores = net(gpuarray.to_gpu(x[i:i + batch_size]))
        labels = gpuarray.to_gpu(y[i:i + batch_size])
        cost(scores, labels)
        correct += int(np.sum(np.argmax(scores.get(), axis=1) == y[i:i + batch_size]))
    if was_training:
        net.trainMode()
    return cost.getMeanError(), correct / len(y)


def batches(n, batch_size, rng):
    """Shuffled index batches; a final batch of one sample is dropped (batch statistics need
    two)."""
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        if len(idx) >= 2:
            yield idx


def warm_up(data, hidden, batchnorm, optimizer):
    """One training step of a throwaway network, so one-time costs of the backend (loading or
    compiling kernels, first allocations) are not timed as training. numpy's global random state
    is left as it was."""
    state = np.random.get_state()
    try:
        net = build_mlp(data.features, data.classes, hidden, batchnorm)
        opt = make_optimizer(optimizer, 1e-3)
        opt.setupOn(net)
        cost = CrossEntropy()
        _, grad = cost(net(gpuarray.to_gpu(data.xtrain[:4])), gpuarray.to_gpu(data.ytrain[:4]))
        opt.zeroGradParams()
        net.backward(grad, updGrad=False)
        opt.update()
        evaluate(net, data.xtest[:4], data.ytest[:4])
    finally:
        np.random.set_state(state)


def shard(idx, comm):
    """This rank's part of a batch: consecutive slices in rank order, sizes differing by at most
    one (``comm=None``: the whole batch)."""
    if comm is None:
        return idx
    return np.array_split(idx, comm.Get_size())[comm.Get_rank()]


def _global_sums(comm, *values):
    """``values`` summed over the ranks in rank order (the same on every rank)."""
    if comm is None:
        return values
    gathered = comm.allgather(values)
    return tuple(sum(g[i] for g in gathered) for i in range(len(values)))


def train_run(data, batchnorm=True, epochs=20, batch_size=32, lr=0.05, seed=0, hidden=(128, 128),
              optimizer="momentum", progress=None, on_epoch=None, warmup=True, comm=None):
    """Train ``build_mlp`` on ``data`` and return a RunResult with per-epoch statistics.

    The same ``seed`` gives the same initial Linear weights and the same batch order with and
    without BatchNorm. ``progress(total, desc)`` may return a tqdm-like bar (``update``,
    ``set_postfix``, ``close``); ``on_epoch(EpochStats)`` is called after each epoch. The timing
    (``RunResult.seconds``, ``EpochStats.seconds``) covers training and the per-epoch evaluation,
    after a ``warm_up`` step when ``warmup`` is set.

    With ``comm`` (an mpi4py communicator) the run is data-parallel: every rank draws the same
    batches and trains on its ``shard`` of each, the BatchNorm layers are synchronized, the
    gradients (each rank's scaled by its share of the batch) are summed over the ranks, and the
    statistics are the whole batches'. A batch with fewer samples than ranks is skipped.
    """
    if warmup:
        warm_up(data, hidden, batchnorm, optimizer)
    np.random.seed(seed)
    net = build_mlp(data.features, data.classes, hidden, batchnorm)
    if comm is not None:
        from batchnorm_lib import distributed

        distributed.broadcast_params(net, comm)
        distributed.convert_sync(net, comm)
    opt = make_optimizer(optimizer, lr)
    opt.setupOn(net, useGlobalState=True)
    cost = CrossEntropy(maxlabels=data.classes)
    rng = np.random.default_rng(seed)

    name = "BatchNorm" if batchnorm else "no BatchNorm"
    result = RunResult(name, batchnorm)
    nbatches = sum(1 for _ in batches(len(data.ytrain), batch_size, np.random.default_rng(0)))
    bar = progress(epochs * nbatches, name) if progress else None
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            cost.resetAccumulator()
            correct = seen = 0
            for idx in batches(len(data.ytrain), batch_size, rng):
                if comm is not None and len(idx) < comm.Get_size():
                    continue
                whole, idx = len(idx), shard(idx, comm)
                x = gpuarray.to_gpu(data.xtrain[idx])
                y = gpuarray.to_gpu(data.ytrain[idx])
                scores = net(x)
                error, grad = cost(scores, y)
                if comm is not None:  # the gradient of the whole batch's mean loss
                    grad = gpuarray.to_gpu(grad.get() * np.float32(len(idx) / whole))
                opt.zeroGradParams()
                net.backward(grad, updGrad=False)
                if comm is not None:
                    distributed.allreduce_grads(net, comm, average=False)
                opt.update()
                correct += int(np.sum(np.argmax(scores.get(), axis=1) == data.ytrain[idx]))
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss="%.4f" % error, refresh=False)
            test_loss, test_acc = evaluate(net, data.xtest, data.ytest)
            loss_sum, count, correct, seen = _global_sums(comm, cost.accumErr, cost.accumCount,
                                                          correct, seen)
            stats = EpochStats(epoch, loss_sum / max(count, 1), correct / max(seen, 1), test_loss,
                               test_acc, time.perf_counter() - start)
            result.history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if not np.isfinite(stats.train_loss):
                break  # diverged: later epochs cannot recover, and NaN would only repeat
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    result.net = net
    return result
