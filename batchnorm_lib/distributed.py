"""Data-parallel training over MPI (mpi4py): synchronized batch norm and its helpers.

A BatchNorm given ``comm=`` (an mpi4py communicator) combines, in training, the per-channel
partials of every rank — (count, mean, M2) in the forward pass, (sum(dy), sum(dy * xhat)) in the
backward — gathered with one ``allgather`` per pass and merged in rank order in float64, so every
rank holds bitwise the same statistics and computes what one process would on the ranks' batches
concatenated in rank order. Only C-sized vectors travel; evaluation needs no communication.

``broadcast_params(module, comm, root=0)``, ``allreduce_grads(module, comm, average=True)`` and
``convert_sync(module, comm)`` prepare and run data-parallel training of a module tree.
mpi4py comes with the ``[mpi]`` extra: ``pip install "batchnorm_lib[mpi]"``.
"""

import numpy as np

from batchnorm_lib.modules.module import ModuleError

MPI_EXTRA = "pip install 'batchnorm_lib[mpi]'"


def require_mpi():
    """The mpi4py ``MPI`` module, or ModuleError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ModuleError("distributed training needs mpi4py and an MPI library (%s): %s"
                          % (MPI_EXTRA, e)) from None
    return MPI


def check_comm(owner, comm):
    """``comm`` if it is usable as a communicator (None passes), else ModuleError."""
    if comm is None:
        return None
    require_mpi()
    if not all(hasattr(comm, a) for a in ("allgather", "Get_rank", "Get_size")):
        raise ModuleError("%s: comm must be an mpi4py communicator, got %s"
                          % (owner, type(comm).__name__))
    return comm


def exchange(owner, comm, what, payload, error=None):
    """One collective gathering every rank's ``payload`` = ``(count, a, b)`` (a, b: C float64
    values), or this rank's refusal; returns the payloads in rank order. A refusal anywhere, or
    ranks that disagree on the channel count, raises a ModuleError on every rank (every rank has
    taken part, so none is left waiting).

    The first exchange of a module on a communicator gathers Python objects, so that ranks with
    different channel counts (buffers of different sizes) are told apart safely; once they agree,
    later ones gather one fixed-size float64 buffer per rank, several times cheaper."""
    if getattr(owner, "_syncAgreed", None) is not comm:
        parts = _exchange_objects(owner, comm, what, payload, error)
        owner._syncAgreed = comm
        return parts
    c = owner.maps
    row = np.zeros(2 + 2 * c, np.float64)
    if error is not None:
        row[0] = 1.0
    else:
        row[1] = payload[0]
        row[2:2 + c], row[2 + c:] = payload[1], payload[2]
    rows = np.empty((comm.Get_size(), row.size), np.float64)
    comm.Allgather(row, rows)
    failed = [r for r in range(len(rows)) if rows[r, 0] != 0]
    if failed:
        if error is not None:
            raise error
        raise ModuleError("%s: %s refused on rank %s" % (owner, what, ", ".join(map(str, failed))))
    return [(int(r[1]), r[2:2 + c], r[2 + c:]) for r in rows]


def _exchange_objects(owner, comm, what, payload, error):
    mine = ("error", str(error)) if error is not None else (owner.maps, payload)
    gathered = comm.allgather(mine)
    failed = ["rank %d: %s" % (r, g[1]) for r, g in enumerate(gathered) if g[0] == "error"]
    if failed:
        if error is not None:
            raise error
        raise ModuleError("%s: %s refused on another rank (%s)" % (owner, what, "; ".join(failed)))
    channels = [g[0] for g in gathered]
    if len(set(channels)) != 1:
        raise ModuleError("%s: the ranks disagree on the number of channels in %s: %s"
                          % (owner, what, ", ".join("rank %d has %d" % (r, c)
                                                     for r, c in enumerate(channels))))
    return [g[1] for g in gathered]


def merge_statistics(parts):
    """Chan's merge of ``(count, mean, m2)`` partials in the order given (float64)."""
    count, mean, m2 = 0, None, None
    for n, mu, q in parts:
        if n == 0:
            continue
        if count == 0:
            count, mean, m2 = n, np.array(mu, np.float64), np.array(q, np.float64)
            continue
        total = count + n
        delta = np.asarray(mu, np.float64) - mean
        mean = mean + delta * (n / total)
        m2 = m2 + np.asarray(q, np.float64) + delta * delta * (count * n / total)
        count = total
    return count, mean, m2


def sum_in_order(parts):
    """The float64 sum of equally shaped arrays, in the order given."""
    total = np.zeros_like(np.asarray(parts[0], np.float64))
    for p in parts:
        total = total + np.asarray(p, np.float64)
    return total


# -- the synchronized batch norm's two exchanges ----------------------------------------------------
def sync_forward_statistics(bn, data):
    """Check this rank's shard, exchange (count, mean, M2) with every rank, and return the whole
    batch's ``(count, mean, m2)`` and this shard's mean (None when every shard is empty)."""
    from batchnorm_lib.kernels.norm import partials

    error, payload = None, None
    try:
        bn._checkArray(data, "data")
        bn.checkDataShape(data.shape)
    except ModuleError as e:
        error = e
    if error is None:
        payload = partials.channel_partials(data, bn.rowsLayout)
    count, mean, m2 = merge_statistics(exchange(bn, bn.comm, "the training forward", payload,
                                                error))
    if count == 0:
        return None
    if count == 1:
        raise ModuleError("%s: training needs more than one value per channel; the ranks' "
                          "batches hold 1 together" % bn)
    return count, mean, m2, payload[1]


def sync_backward(bn, grad, dx):
    """Exchange this shard's sum(dy) and sum(dy * xhat), set the whole batch's as the module's
    parameter gradients, and (unless ``dx`` is None) write this shard's input gradient."""
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.kernels.norm import partials

    c, shape = bn.maps, bn.paramShape
    sums = (0, np.zeros(c), np.zeros(c))
    if grad.size and bn.relu:
        # the fused relu's gradient mask, applied once: everything below sees relu'(y) * dy
        grad = partials.relu_mask(grad, bn.data, bn.rowsLayout)
    if grad.size:
        dscale = gpuarray.empty(shape, np.float32)
        dbias = gpuarray.empty(shape, np.float32)
        bn._op("backward_train")(bn.inData, grad, bn.scale, bn.savemean, bn.saveinvvar, None,
                                 dscale, dbias)
        sum_dy = dbias.get().ravel().astype(np.float64)
        # backward_train corrects its sums to this shard's own exact mean (r = its offset from
        # savemean); here savemean is the whole batch's, so the correction is taken back out
        # (the shard's mean is the forward's: the data has not changed since)
        r = bn.shardMean - bn.savemean.get().ravel().astype(np.float64)
        invstd = bn.saveinvvar.get().ravel().astype(np.float64)
        sums = (grad.size // c, sum_dy,
                dscale.get().ravel().astype(np.float64) + r * sum_dy * invstd)
    parts = exchange(bn, bn.comm, "the backward", sums)
    sum_dy = sum_in_order([p[1] for p in parts])
    sum_dy_xhat = sum_in_order([p[2] for p in parts])
    bn.scalegrad = gpuarray.to_gpu(sum_dy_xhat.astype(np.float32).reshape(shape))
    bn.biasgrad = gpuarray.to_gpu(sum_dy.astype(np.float32).reshape(shape))
    if dx is not None and grad.size:
        partials.input_grad(bn.inData, grad, bn.scale, bn.savemean, bn.saveinvvar, sum_dy,
                            sum_dy_xhat, bn.syncedCount, dx, bn.rowsLayout)


def refuse_everywhere(bn, what, error):
    """Let every rank raise ``error`` (this rank's refusal) instead of waiting for this one."""
    exchange(bn, bn.comm, what, None, error)


# -- helpers for a module tree ---------------------------------------------------------------------
def _leaves(module):
    children = getattr(module, "modules", None)
    if children is None:
        yield module
    else:
        for child in children:
            yield from _leaves(child)


def _synced(mod):
    return getattr(mod, "comm", None) is not None


def convert_sync(module, comm):
    """Set ``comm`` on every batch norm of ``module`` (a module or a Sequential, nested ones too);
    returns ``module``. ``comm=None`` makes them local again."""
    from batchnorm_lib.modules.batchnorm import BatchNormND

    check_comm(module, comm)
    for mod in _leaves(module):
        if isinstance(mod, BatchNormND):
            mod.comm = comm
    return module


def broadcast_params(module, comm, root=0):
    """Every rank takes ``root``'s parameters, running statistics and counters (one collective)."""
    check_comm(module, comm)
    leaves = list(_leaves(module))
    state = None
    if comm.Get_rank() == root:
        state = [({k: v.data.get() for k, v in mod.vars.items()},
                  {k: a.get() for k, a in mod.attrs.items() if a is not None},
                  getattr(mod, "numOfProps", None)) for mod in leaves]
    state = comm.bcast(state, root=root)
    if len(state) != len(leaves):
        raise ModuleError("%s: root has %d modules, this rank %d" % (module, len(state),
                                                                      len(leaves)))
    for mod, (variables, attrs, props) in zip(leaves, state):
        for k, v in variables.items():
            mod.vars[k].data.set(np.ascontiguousarray(v, mod.vars[k].data.dtype))
        for k, a in attrs.items():
            mod.attrs[k].set(np.ascontiguousarray(a, mod.attrs[k].dtype))
        if props is not None:
            mod.numOfProps = props


def allreduce_grads(module, comm, average=True):
    """Sum (``average``: and divide by the number of ranks) every parameter gradient of
    ``module`` over the ranks: one ``Allgather`` of all of them packed in a fixed order (module
    order, then variable name), added in rank order in float64. Synchronized batch norms are left out: their gradients are the
    whole batch's already, the same on every rank."""
    check_comm(module, comm)
    grads = [var.grad for mod in _leaves(module) if not _synced(mod)
             for _, var in sorted(mod.vars.items()) if var.grad is not None]
    if not grads:
        return
    packed = np.concatenate([g.get().ravel().astype(np.float64) for g in grads])
    # gathered whole and added in rank order: the same bits on every rank, run after run
    gathered = np.empty((comm.Get_size(), packed.size), np.float64)
    comm.Allgather(packed, gathered)
    total = sum_in_order(gathered)
    if average:
        total /= comm.Get_size()
    offset = 0
    for g in grads:
        g.set(total[offset:offset + g.size].astype(g.dtype).reshape(g.shape))
        offset += g.size
