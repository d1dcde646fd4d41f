"""Dense-network operations on the CUDA backends (``cuda`` and ``cudasim``).

The contract is in :mod:`batchnorm_lib.kernels.dense`. Elementwise work, the bias gradient,
softmax cross-entropy and the optimizer updates run in ``kernels/dense/dense.cu``, compiled once per
backend runtime through the runtime's ``functions_of`` (the compiler and options the batch-norm
kernels use) and launched with BLOCK threads per block.

GEMM goes to cuBLAS through :mod:`batchnorm_lib.backend.cublas` on ``cuda``. The simulator has no
cuBLAS: there GEMM is a host matmul on the arrays (simulated device memory is host memory), which
keeps Linear usable and testable on ``cudasim``; its results are compared with the CPU backend's.
"""

import numpy as np

from batchnorm_lib import config
from batchnorm_lib.backend.cuda.core import BLOCK
from batchnorm_lib.kernels.dense import ACTIVATIONS

SOURCE = "dense/dense.cu"
ELEMENTWISE_BLOCKS = 4096
MAX_GRID_X = 65535  # softmax rows per launch stride (grid-stride over rows above this)
COL_TILE = 32  # columns per block of dense_bias_grad (dense::kColTile)



def _runtime():
    return config.backend_module().runtime()


def _is_simulator(rt):
    return rt.name == "cudasim"


def _functions(rt):
    """dense.cu's entries for runtime ``rt``, compiled on first use."""
    return rt.functions_of(SOURCE)


def _launch(name, grid, args):
    rt = _runtime()
    fn = _functions(rt)[name]
    fn(*args, block=(BLOCK, 1, 1), grid=tuple(grid) + (1,) * (3 - len(grid)), shared=0)
    if rt.sync_each_launch:
        rt.api.driver.Context.synchronize()


def _ptr(a):
    # the kernels index dense C-ordered buffers; modules copy strided views before they get here
    if not a.flags.c_contiguous:
        raise ValueError("dense kernels take C-contiguous arrays, got strides %s for shape %s"
                         % (a.strides, a.shape))
    return np.uintp(int(a.ptr))


def _check_f32(*arrays):
    for a in arrays:
        if np.dtype(a.dtype) != np.float32:
            raise TypeError("dense kernels take float32 arrays, got %s" % (a.dtype,))


def _grid(n):
    return (max(1, min(-(-int(n) // BLOCK), ELEMENTWISE_BLOCKS)),)


# -- GEMM ------------------------------------------------------------------------------------------
def gemm_status():
    rt = _runtime()
    if _is_simulator(rt):
        return True, "host matmul on the simulator's memory (no cuBLAS in the simulator)"
    from batchnorm_lib.backend import cublas

    return cublas.status()


def gemm(a, b, out, transA=False, transB=False, alpha=1.0, beta=0.0):
    _check_f32(a, b, out)
    m, k = (a.shape[1], a.shape[0]) if transA else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if transB else (b.shape[0], b.shape[1])
    if k != kb or tuple(out.shape) != (m, n):
        raise ValueError("gemm: shapes %s%s x %s%s -> %s do not match"
                         % (tuple(a.shape), ".T" if transA else "", tuple(b.shape),
                            ".T" if transB else "", tuple(out.shape)))
    rt = _runtime()
    if _is_simulator(rt):
        A, B = a.get(), b.get()
        prod = np.matmul(A.T if transA else A, B.T if transB else B)
        if alpha != 1:
            prod *= np.float32(alpha)
        if beta != 0:
            prod += np.float32(beta) * out.get()
        out.set(np.ascontiguousarray(prod, dtype=np.float32))
        return
    from batchnorm_lib.backend import cublas

    rt.start()
    cublas.gemm_ptrs(m, n, k, int(a.ptr), int(b.ptr), int(out.ptr), transA, transB, alpha, beta)
    if rt.sync_each_launch:
        rt.api.driver.Context.synchronize()


# -- kernels ---------------------------------------------------------------------------------------
def add_bias(out, bias):
    _check_f32(out, bias)
    rows, cols = out.shape
    _launch("dense_add_bias", _grid(rows * cols),
            (_ptr(out), _ptr(bias), np.int64(rows), np.int32(cols)))


def bias_grad(grad, out, alpha, beta):
    _check_f32(grad, out)
    rows, cols = grad.shape
    _launch("dense_bias_grad", (-(-cols // COL_TILE),),
            (_ptr(grad), _ptr(out), np.int64(rows), np.int32(cols), np.float32(alpha),
             np.float32(beta)))


def _kind(kind):
    try:
        return np.int32(ACTIVATIONS.index(kind))
    except ValueError:
        raise ValueError("unknown activation %r" % (kind,)) from None


def activation_forward(kind, x, out, a=0.0, b=0.0):
    _check_f32(x, out)
    k = _kind(kind)
    _launch("dense_activation_forward", _grid(x.size),
            (_ptr(x), _ptr(out), np.int64(x.size), k, np.float32(a), np.float32(b)))


def activation_backward(kind, grad, y, dx, a=0.0, b=0.0):
    _check_f32(grad, y, dx)
    k = _kind(kind)
    _launch("dense_activation_backward", _grid(grad.size),
            (_ptr(grad), _ptr(y), _ptr(dx), np.int64(grad.size), k, np.float32(a), np.float32(b)))


def softmax_cross_entropy(scores, labels, grad, losses, weights=None):
    _check_f32(scores, grad, losses)
    if weights is not None:
        _check_f32(weights)
    if np.dtype(labels.dtype) != np.int32:
        raise TypeError("labels must be int32, got %s" % (labels.dtype,))
    batch, cols = scores.shape[0], scores.shape[1]
    spatial = scores.size // max(batch * cols, 1)
    rows = batch * spatial
    _launch("dense_softmax_cross_entropy", (max(1, min(rows, MAX_GRID_X)),),
            (_ptr(scores), _ptr(labels), np.uintp(0) if weights is None else _ptr(weights),
             _ptr(grad), _ptr(losses), np.int64(rows), np.int32(cols), np.int64(spatial),
             np.int64(batch)))


def mse(pred, target, grad, scale):
    _check_f32(pred, target, grad)
    grid = _grid(pred.size)
    partial = config.backend_module().empty((grid[0],), np.float32)
    _launch("dense_mse", grid, (_ptr(pred), _ptr(target), _ptr(grad), _ptr(partial),
                                np.int64(pred.size), np.float32(scale)))
    # the block partials are added on the host in float64, in block order
    return float(partial.get().astype(np.float64).sum())


def sgd_update(param, grad, lr):
    _check_f32(param, grad)
    _launch("dense_sgd_update", _grid(param.size),
            (_ptr(param), _ptr(grad), np.int64(param.size), np.float32(lr)))


def momentum_update(param, grad, mom, lr, momRate):
    _check_f32(param, grad, mom)
    _launch("dense_momentum_update", _grid(param.size),
            (_ptr(param), _ptr(grad), _ptr(mom), np.int64(param.size), np.float32(lr),
             np.float32(momRate)))


def adam_update(param, grad, mg, ms, lr, beta1, beta2, epsilon):
    _check_f32(param, grad, mg, ms)
    _launch("dense_adam_update", _grid(param.size),
            (_ptr(param), _ptr(grad), _ptr(mg), _ptr(ms), np.int64(param.size), np.float32(lr),
             np.float32(beta1), np.float32(beta2), np.float32(epsilon)))
