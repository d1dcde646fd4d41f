"""Elementwise arithmetic and reductions behind the gpuarray shim's operators.

The shim's arrays (``backend/cpu/array.py``, ``backend/cudasim/gpuarray.py``) resolve pycuda's
semantics (result dtype, scalars, shapes, contiguity) in :mod:`batchnorm_lib.backend.arraymath`
and call the functions below with operands already converted to one dtype ``T`` in ``DTYPES``,
contiguous and of equal shapes; ``z`` is written. ``ops(ary)`` returns the implementation for the
array's backend: numpy on ``cpu`` (``cpu.py``), ``elementwise.cu`` through the runtime's
``functions_of`` on ``cudasim`` (``cuda.py``; on ``cuda`` pycuda's own GPUArray does all this).

``axpbyz(a, x, b, y, z)``    ``z = a*x + b*y``
``axpbz(a, x, b, z)``        ``z = a*x + b``
``mul(x, y, z)``, ``div(x, y, z)``, ``rdiv(a, x, z)`` (``z = a / x``)
``pow(x, y, z)``             ``z = x ** y``, ``y`` an array or a scalar (float32 only)
``rpow(a, x, z)``            ``z = a ** x`` (float32 only)
``abs(x, z)``
``compare(op, x, y, z)``     ``z = 1 if x <op> y else 0`` (in T); ``op`` in ``COMPARISONS``, ``y``
                             an array or a scalar
``maxmin(isMax, x, y, z)``   elementwise maximum / minimum (float: a NaN yields the other operand)
``if_positive(c, a, b, z)``  ``z = a if c > 0 else b``
``fill(z, v)``, ``arange(z, start, step)`` (``z[i] = start + i*step``)
``reduce(op, x, y, out)``    ``op`` in ``REDUCTIONS``: sum of x, sum of x*y, max, min into the 0-d
                             ``out``
``convert(x, z)``            ``z = x`` converted to z's dtype (float32, int32, float16; float to int
                             truncates toward zero)
"""

import numpy as np

DTYPES = (np.dtype(np.float32), np.dtype(np.int32))
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
REDUCTIONS = ("sum", "dot", "max", "min")


def ops(ary):
    """The implementation module for ``ary``'s backend (the active one for pycuda's arrays)."""
    from batchnorm_lib.kernels import implementation

    return implementation("elementwise", getattr(ary, "backend_name", None))


def to_dtype(ary, dtype):
    """``ary`` converted to ``dtype`` (float32, int32, float16) in a new array, or ``ary`` itself
    when it has that dtype already. Runs ``convert`` on every backend, pycuda's arrays included
    (whose own ``astype`` has no float16 kernel)."""
    dtype = np.dtype(dtype)
    if ary.dtype == dtype:
        return ary
    from batchnorm_lib.backend import gpuarray

    out = gpuarray.empty(ary.shape, dtype)
    ops(ary).convert(ary, out)
    return out
