"""The shim's elementwise arithmetic on the CPU backend (numpy, float32/int32 throughout).

The contract is in :mod:`batchnorm_lib.kernels.elementwise`.
"""

import operator

import numpy as np

from batchnorm_lib.backend.cpu import as_ndarray
from batchnorm_lib.kernels.elementwise import COMPARISONS

_CMP = dict(zip(COMPARISONS, (operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
                              operator.ge)))


def _a(x):
    return as_ndarray(x) if hasattr(x, "backend_name") else x



def _s(z, v):
    """A scalar as z's dtype, so numpy computes in T as the kernels do."""
    return as_ndarray(z).dtype.type(v)


def axpbyz(a, x, b, y, z):
    Z = as_ndarray(z)
    with np.errstate(all="ignore"):
        np.add(_s(z, a) * _a(x), _s(z, b) * _a(y), out=Z)


def axpbz(a, x, b, z):
    with np.errstate(all="ignore"):
        np.add(_s(z, a) * _a(x), _s(z, b), out=as_ndarray(z))


def mul(x, y, z):
    with np.errstate(all="ignore"):
        np.multiply(_a(x), _a(y), out=as_ndarray(z))


def _int_div(x, y):
    # C's integer division truncates toward zero (numpy's floor_divide rounds down)
    with np.errstate(all="ignore"):
        q = np.abs(x) // np.where(y == 0, 1, np.abs(y))
        return np.where(y == 0, 0, np.where((x < 0) != (y < 0), -q, q))


def div(x, y, z):
    Z = as_ndarray(z)
    X, Y = _a(x), _a(y)
    if Z.dtype.kind == "i":
        np.copyto(Z, _int_div(X, Y), casting="unsafe")
    else:
        with np.errstate(all="ignore"):
            np.divide(X, Y, out=Z)


def rdiv(a, x, z):
    div(np.full(as_ndarray(z).shape, _s(z, a)), x, z)


def pow(x, y, z):
    with np.errstate(all="ignore"):
        np.power(_a(x), _a(y) if hasattr(y, "backend_name") else _s(z, y), out=as_ndarray(z))


def rpow(a, x, z):
    with np.errstate(all="ignore"):
        np.power(_s(z, a), _a(x), out=as_ndarray(z))


def abs(x, z):
    np.abs(_a(x), out=as_ndarray(z))


def compare(op, x, y, z):
    Y = _a(y) if hasattr(y, "backend_name") else _s(z, y)
    np.copyto(as_ndarray(z), _CMP[op](_a(x), Y), casting="unsafe")


def maxmin(isMax, x, y, z):
    Z = as_ndarray(z)
    if Z.dtype.kind == "f":
        (np.fmax if isMax else np.fmin)(_a(x), _a(y), out=Z)
    else:
        (np.maximum if isMax else np.minimum)(_a(x), _a(y), out=Z)


def if_positive(c, a, b, z):
    np.copyto(as_ndarray(z), np.where(_a(c) > 0, _a(a), _a(b)))


def fill(z, v):
    as_ndarray(z).fill(v)


def arange(z, start, step):
    Z = as_ndarray(z)
    with np.errstate(all="ignore"):
        np.add(_s(z, start), np.arange(Z.size).astype(Z.dtype) * _s(z, step), out=Z)


def reduce(op, x, y, out):
    X = _a(x).ravel()
    O = as_ndarray(out)
    with np.errstate(all="ignore"):
        if op == "sum":
            O[...] = X.sum(dtype=O.dtype)
        elif op == "dot":
            O[...] = (X * _a(y).ravel()).sum(dtype=O.dtype)
        elif O.dtype.kind == "f":
            # fmax/fmin ignore NaN, as the kernel's fmaxf/fminf
            O[...] = (np.fmax if op == "max" else np.fmin).reduce(X)
        else:
            O[...] = X.max() if op == "max" else X.min()


def convert(x, z):
    with np.errstate(all="ignore"):
        np.copyto(as_ndarray(z), _a(x), casting="unsafe")
