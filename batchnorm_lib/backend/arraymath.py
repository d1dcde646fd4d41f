"""pycuda's GPUArray arithmetic, shared by the ``cpu`` and ``cudasim`` arrays.

The rules are pycuda's: the result dtype of an operation is numpy's for the operands (a Python
scalar does not widen the array's dtype: float32 array * 2.5 is float32); operands must have equal
shapes (no broadcasting) and be contiguous (a strided view raises RuntimeError, as in pycuda);
division by a scalar multiplies by its reciprocal, as pycuda does; comparisons give an array of the
left operand's dtype holding 1 and 0. The shim computes in float32 and int32
(``kernels.elementwise.DTYPES``): an operation whose result would be another dtype (float64 from
int32 / 2, say) raises TypeError rather than silently change precision.

A backend's array class inherits :class:`ArrayMath` and provides ``backend_name``, ``shape``,
``dtype``, ``size``, ``flags``, ``_new(shape, dtype)`` (a fresh contiguous array beside it),
``astype`` and ``copy``; the arithmetic itself runs in ``kernels.elementwise.ops(array)``.
"""

import numbers

import numpy as np

from batchnorm_lib.kernels import elementwise

_CONTIGUOUS = "only contiguous arrays may be used as arguments to this operation"


def _ops(ary):
    return elementwise.ops(ary)


def is_scalar(value):
    return np.isscalar(value) and not isinstance(value, (str, bytes))


def check_computable(dtype, what="operation"):
    dtype = np.dtype(dtype)
    if dtype not in elementwise.DTYPES:
        raise TypeError("gpuarray %s on %s: the shim computes in %s only (astype first)"
                        % (what, dtype, " and ".join(str(d) for d in elementwise.DTYPES)))
    return dtype


def result_dtype(x, other):
    """pycuda's rule: numpy's result dtype of the operands, a Python scalar taking the array's
    kind without widening it."""
    if isinstance(other, ArrayMath):
        return np.result_type(x.dtype, other.dtype)
    return (np.zeros(1, x.dtype) + other).dtype


def check_same_shape(*arrays):
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ValueError("gpuarray operands have shapes %s: the shim does not broadcast (as "
                         "pycuda's GPUArray), reshape or copy to a common shape first"
                         % " and ".join(str(tuple(a.shape)) for a in arrays))


def check_contiguous(*arrays):
    for a in arrays:
        if not a.flags.forc:
            raise RuntimeError(_CONTIGUOUS)


def as_dtype(ary, dtype):
    return ary if ary.dtype == dtype else ary.astype(dtype)


def _operator(kind, reverse=False, out=False):
    def method(self, other):
        return self._binary(other, kind, reverse=reverse, out=self if out else None)

    return method


def _comparison(op):
    def method(self, other):
        return self._compare(other, op)

    return method


def check_basic_index(index):
    """pycuda's GPUArray takes integers, slices, Ellipsis and None only."""
    for i, entry in enumerate(index if isinstance(index, tuple) else (index,)):
        ok = (isinstance(entry, (slice, numbers.Integral)) and not isinstance(entry, bool)) \
            or entry is Ellipsis or entry is None
        if not ok:
            raise IndexError("invalid subindex in axis %d: gpuarray takes integers, slices, "
                             "'...' and None (basic indexing), got %r" % (i, entry))


class ArrayMath:
    __slots__ = ()

    # arrays compare elementwise, so they are not hashable by value; identity hashing keeps them
    # usable as dict keys and in sets, as pycuda's arrays are not
    __hash__ = object.__hash__

    def _operand(self, other):
        """Check an operand against self (shape, contiguity); False when it is neither an array
        nor a scalar (the operator then returns NotImplemented)."""
        if isinstance(other, ArrayMath):
            check_same_shape(self, other)
            check_contiguous(self, other)
        elif is_scalar(other):
            check_contiguous(self)
        else:
            return False
        return True

    def _binary(self, other, kind, reverse=False, out=None):
        """``self <kind> other`` (or ``other <kind> self`` when ``reverse``) into ``out``."""
        if not self._operand(other):
            return NotImplemented
        dtype = check_computable(result_dtype(self, other), "'%s'" % kind)
        if out is not None and out.dtype != dtype:
            raise TypeError("in-place '%s' would change the dtype %s to %s"
                            % (kind, out.dtype, dtype))
        x = as_dtype(self, dtype)
        y = as_dtype(other, dtype) if isinstance(other, ArrayMath) else other
        z = out if out is not None else self._new(self.shape, dtype)
        ops = _ops(z)
        array = isinstance(other, ArrayMath)
        if kind in ("+", "-"):
            sign = 1 if kind == "+" else -1
            if array:
                ops.axpbyz(1, x, sign, y, z)
            elif reverse:
                ops.axpbz(sign, x, y, z)  # y + x or y - x
            else:
                ops.axpbz(1, x, sign * y, z)
        elif kind == "*":
            if array:
                ops.mul(x, y, z)
            else:
                ops.axpbz(y, x, 0, z)
        elif kind == "/":
            if array:
                ops.div(y, x, z) if reverse else ops.div(x, y, z)
            elif reverse:
                ops.rdiv(y, x, z)
            elif dtype.kind == "f":
                ops.axpbz(1.0 / y, x, 0, z)  # pycuda multiplies by the reciprocal
            else:
                ops.div(x, self._full(z.shape, dtype, y), z)
        elif kind == "**":
            check_computable(dtype, "'**'") if dtype.kind == "f" else _no_int_pow()
            if reverse:
                ops.rpow(y, x, z)
            else:
                ops.pow(x, y, z)
        return z

    def _full(self, shape, dtype, value):
        full = self._new(shape, dtype)
        _ops(full).fill(full, value)
        return full

    # -- arithmetic: the operators, their reflected and in-place forms ----------------------------
    __add__, __radd__, __iadd__ = _operator("+"), _operator("+", True), _operator("+", out=True)
    __sub__, __rsub__, __isub__ = _operator("-"), _operator("-", True), _operator("-", out=True)
    __mul__, __rmul__, __imul__ = _operator("*"), _operator("*", True), _operator("*", out=True)
    __truediv__, __rtruediv__ = _operator("/"), _operator("/", True)
    __itruediv__ = _operator("/", out=True)
    __pow__, __rpow__, __ipow__ = _operator("**"), _operator("**", True), _operator("**", out=True)

    def __pos__(self):
        return self

    def __neg__(self):
        check_contiguous(self)
        check_computable(self.dtype, "negation")
        z = self._new(self.shape, self.dtype)
        _ops(z).axpbz(-1, self, 0, z)
        return z

    def __abs__(self):
        check_contiguous(self)
        check_computable(self.dtype, "abs")
        z = self._new(self.shape, self.dtype)
        _ops(z).abs(self, z)
        return z

    def mul_add(self, selffac, other, otherfac, add_timer=None, stream=None, out=None):
        """``selffac * self + otherfac * other``."""
        if not isinstance(other, ArrayMath):
            raise TypeError("mul_add: other must be an array of the same backend")
        check_same_shape(self, other)
        check_contiguous(self, other)
        dtype = check_computable(np.result_type(self.dtype, other.dtype), "mul_add")
        z = out if out is not None else self._new(self.shape, dtype)
        _ops(z).axpbyz(selffac, as_dtype(self, dtype), otherfac, as_dtype(other, dtype), z)
        return z

    # -- comparisons: an array of self's dtype holding 1 and 0, as pycuda's -------------------------
    def _compare(self, other, op):
        if not self._operand(other):
            return NotImplemented
        check_computable(self.dtype, "comparison")
        common = check_computable(result_dtype(self, other), "comparison")
        z = self._new(self.shape, common)
        y = as_dtype(other, common) if isinstance(other, ArrayMath) else other
        _ops(z).compare(op, as_dtype(self, common), y, z)
        return as_dtype(z, self.dtype)

    __eq__, __ne__ = _comparison("=="), _comparison("!=")
    __lt__, __le__ = _comparison("<"), _comparison("<=")
    __gt__, __ge__ = _comparison(">"), _comparison(">=")

    def __bool__(self):
        if self.size != 1:
            raise ValueError("the truth value of an array with more than one element is ambiguous")
        return bool(self.get().reshape(-1)[0])

    # -- views ---------------------------------------------------------------------------------------
    @property
    def T(self):
        return self.transpose()


def _no_int_pow():
    raise TypeError("gpuarray '**' computes in float32 only (astype(np.float32) first)")


# -- module-level functions of pycuda's gpuarray ------------------------------------------------------
def _pair(a, b, what):
    if not isinstance(a, ArrayMath) or not isinstance(b, ArrayMath):
        raise TypeError("%s takes two arrays of the same backend" % what)
    check_same_shape(a, b)
    check_contiguous(a, b)
    dtype = check_computable(np.result_type(a.dtype, b.dtype), what)
    return as_dtype(a, dtype), as_dtype(b, dtype), dtype


def reduction(op, a, b=None, dtype=None):
    """``sum``/``dot``/``max``/``min`` into a 0-d array of the operands' dtype (pycuda's)."""
    if b is not None:
        a, b, common = _pair(a, b, op)
    else:
        check_contiguous(a)
        common = check_computable(a.dtype if dtype is None else dtype, op)
        a = as_dtype(a, common)
    if op in ("max", "min") and a.size == 0:
        raise ValueError("gpuarray %s of an empty array" % op)
    out = a._new((), common)
    _ops(out).reduce(op, a, b, out)
    return out


def maxmin(a, b, isMax):
    x, y, dtype = _pair(a, b, "maximum" if isMax else "minimum")
    z = x._new(x.shape, dtype)
    _ops(z).maxmin(isMax, x, y, z)
    return z


def if_positive(criterion, then_, else_):
    if not all(isinstance(v, ArrayMath) for v in (criterion, then_, else_)):
        raise TypeError("if_positive takes three arrays of the same backend")
    check_same_shape(criterion, then_, else_)
    check_contiguous(criterion, then_, else_)
    a, b, dtype = _pair(then_, else_, "if_positive")
    z = a._new(a.shape, dtype)
    # the test is made in the criterion's own dtype (0.5 > 0 must hold for an int32 result too)
    _ops(z).if_positive(as_dtype(criterion > 0, dtype), a, b, z)
    return z


def arange_into(z, start, step):
    _ops(z).arange(z, start, step)
    return z
