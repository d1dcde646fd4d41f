"""Dense-network operations on the CPU backend (numpy; GEMM goes to numpy's BLAS).

The contract is in :mod:`batchnorm_lib.kernels.dense`.
"""

import numpy as np

from batchnorm_lib.backend.cpu import as_ndarray

_f32 = np.float32


def gemm_status():
    return True, ""


def gemm(a, b, out, transA=False, transB=False, alpha=1.0, beta=0.0):
    A, B, C = as_ndarray(a), as_ndarray(b), as_ndarray(out)
    if transA:
        A = A.T
    if transB:
        B = B.T
    if A.shape[1] != B.shape[0] or C.shape != (A.shape[0], B.shape[1]):
        raise ValueError("gemm: shapes %s x %s -> %s do not match" % (A.shape, B.shape, C.shape))
    if beta == 0:
        np.matmul(A, B, out=C)
        if alpha != 1:
            C *= _f32(alpha)
        return
    prod = np.matmul(A, B)
    C *= _f32(beta)
    if alpha != 1:
        prod *= _f32(alpha)
    C += prod


def add_bias(out, bias):
    C = as_ndarray(out)
    C += as_ndarray(bias).reshape(1, -1)


def bias_grad(grad, out, alpha, beta):
    s = as_ndarray(grad).sum(axis=0, dtype=np.float32)
    o = as_ndarray(out).reshape(-1)
    if beta == 0:
        np.multiply(s, _f32(alpha), out=o)
        return
    o *= _f32(beta)
    o += _f32(alpha) * s


def activation_forward(kind, x, out, a=0.0, b=0.0):
    X, Y = as_ndarray(x), as_ndarray(out)
    a, b = _f32(a), _f32(b)
    with np.errstate(over="ignore"):
        if kind == "relu":
            np.maximum(X, _f32(0), out=Y)
        elif kind == "sigmoid":
            # 1 / (1 + exp(-x)) overflows exp for very negative x; the tanh form does not
            np.multiply(X, _f32(0.5), out=Y)
            np.tanh(Y, out=Y)
            Y *= _f32(0.5)
            Y += _f32(0.5)
        elif kind == "tanh":
            np.tanh(X, out=Y)
        elif kind == "leakyRelu":
            np.copyto(Y, np.where(X > 0, X, a * X))
        elif kind == "elu":
            np.copyto(Y, np.where(X > 0, X, a * np.expm1(np.minimum(X, _f32(0)))))
        elif kind == "softPlus":
            # max(x, 0) + log1p(e^-|x|): no overflow for large x
            np.copyto(Y, np.maximum(X, _f32(0)) + np.log1p(np.exp(-np.abs(X))))
        elif kind == "clip":
            np.copyto(Y, np.minimum(np.maximum(X, a), b))
        else:
            raise ValueError("unknown activation %r" % (kind,))


def activation_backward(kind, grad, y, dx, a=0.0, b=0.0):
    G, Y, D = as_ndarray(grad), as_ndarray(y), as_ndarray(dx)
    a, b = _f32(a), _f32(b)
    if kind == "relu":
        np.multiply(G, ~(Y <= 0), out=D, casting="unsafe")  # a NaN output passes its gradient
    elif kind == "sigmoid":
        np.multiply(G, Y * (_f32(1) - Y), out=D)
    elif kind == "tanh":
        np.multiply(G, _f32(1) - Y * Y, out=D)
    elif kind == "leakyRelu":
        np.multiply(G, np.where(Y > 0, _f32(1), a), out=D)
    elif kind == "elu":
        np.multiply(G, np.where(Y > 0, _f32(1), Y + a), out=D)
    elif kind == "softPlus":
        np.multiply(G, -np.expm1(-Y), out=D)
    elif kind == "clip":
        np.multiply(G, (Y > a) & (Y < b), out=D, casting="unsafe")
    else:
        raise ValueError("unknown activation %r" % (kind,))


def softmax_cross_entropy(scores, labels, grad, losses, weights=None):
    S = as_ndarray(scores)
    n, c = S.shape[0], S.shape[1]
    S = S.reshape(n, c, -1)
    L = as_ndarray(labels).reshape(n, -1)
    shifted = S - S.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=1, keepdims=True)
    picked = np.take_along_axis(shifted, L[:, None, :], axis=1)[:, 0, :]
    loss = np.log(z[:, 0, :]) - picked
    W = None if weights is None else as_ndarray(weights).reshape(-1)
    if W is not None:
        loss *= W[L]
    as_ndarray(losses).reshape(n, -1)[...] = loss
    G = as_ndarray(grad).reshape(n, c, -1)
    # p / n - onehot / n, then negated: the same float32 roundings as the true gradient had
    np.divide(e, z * _f32(n), out=G)
    np.put_along_axis(G, L[:, None, :],
                      np.take_along_axis(G, L[:, None, :], axis=1) - _f32(1.0 / n), axis=1)
    np.negative(G, out=G)
    if W is not None:
        G *= W[None, :, None]


def mse(pred, target, grad, scale):
    d = as_ndarray(target) - as_ndarray(pred)
    np.multiply(d, _f32(scale), out=as_ndarray(grad))
    return float(np.dot(d.ravel().astype(np.float64), d.ravel().astype(np.float64)))


def sgd_update(param, grad, lr):
    P = as_ndarray(param)
    P += _f32(lr) * as_ndarray(grad)


def momentum_update(param, grad, mom, lr, momRate):
    M = as_ndarray(mom)
    M *= _f32(momRate)
    M += _f32(lr) * as_ndarray(grad)
    as_ndarray(param)[...] += M


def adam_update(param, grad, mg, ms, lr, beta1, beta2, epsilon):
    G, MG, MS = as_ndarray(grad), as_ndarray(mg), as_ndarray(ms)
    MG *= _f32(beta1)
    MG += _f32(1 - beta1) * G
    MS *= _f32(beta2)
    MS += _f32(1 - beta2) * (G * G)
    as_ndarray(param)[...] += _f32(lr) * MG / (np.sqrt(MS) + _f32(epsilon))
