"""Linear: the fully connected layer ``y = x @ W + b`` (PuzzleLib's layout: W is (insize,
outsize))."""

import math
import numbers

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import dense, elementwise
from batchnorm_lib.modules.module import Module, ModuleError, check_finite
from batchnorm_lib.variable import Variable

# scheme -> (distribution, its default fan factor); the factor is "in" (insize), "out" (outsize)
# or "avg" ((insize + outsize) / 2). camelCase names are PuzzleLib's, with its defaults.
INIT_SCHEMES = {
    "xavier": ("uniform3", "avg"), "xavier_uniform": ("uniform3", "avg"),
    "xavier_normal": ("normal1", "avg"), "he": ("normal2", "in"), "he_normal": ("normal2", "in"),
    "xavierUniform": ("uniform3", "in"), "xavierNormal": ("normal1", "in"),
    "gaussian": ("gaussian", "in"), "uniform": ("uniform", "in"), "none": ("zeros", "in"),
}
FACTORS = ("in", "out", "avg")


def _size(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ModuleError("%s: %s must be an integer >= 1, got %r" % (owner, name, value))
    return int(value)


def parse_initscheme(owner, initscheme):
    """``(scheme, factor)`` from a name or a PuzzleLib ``(name, "in"|"out"|"avg")`` pair."""
    factor = None
    if isinstance(initscheme, (tuple, list)):
        if len(initscheme) != 2:
            raise ModuleError("%s: initscheme pair must be (name, factor), got %r"
                              % (owner, initscheme))
        initscheme, factor = initscheme
        factor = str(getattr(factor, "value", factor))
        if factor not in FACTORS:
            raise ModuleError("%s: initscheme factor must be one of %s, got %r"
                              % (owner, ", ".join(FACTORS), factor))
    name = "xavier" if initscheme is None else str(getattr(initscheme, "value", initscheme))
    scheme = name if name in INIT_SCHEMES else name.lower()
    if scheme not in INIT_SCHEMES:
        raise ModuleError("%s: initscheme must be one of %s, got %r"
                          % (owner, ", ".join(INIT_SCHEMES), initscheme))
    return scheme, factor or INIT_SCHEMES[scheme][1]


def init_weights(insize, outsize, scheme, wscale, factor=None):
    """Initial W of shape (insize, outsize) from numpy's global random state (seed it for repeatable
    runs). With n the fan factor (insize, outsize or their mean, by ``factor``): ``xavier`` (the
    default, factor avg): uniform in +-wscale*sqrt(3 / n), Glorot's uniform; ``xavier_normal``:
    normal with std wscale*sqrt(1 / n); ``he`` (factor in): normal with std wscale*sqrt(2 / n)
    (suits relu); ``gaussian``: normal with std wscale; ``uniform``: uniform in +-wscale; ``none``:
    zeros."""
    shape = (insize, outsize)
    kind, default = INIT_SCHEMES[scheme]
    factor = factor or default
    n = {"in": insize, "out": outsize, "avg": (insize + outsize) / 2.0}[factor]
    if kind == "uniform3":
        a = wscale * math.sqrt(3.0 / n)
        w = np.random.uniform(-a, a, shape)
    elif kind == "normal1":
        w = np.random.normal(0.0, wscale * math.sqrt(1.0 / n), shape)
    elif kind == "normal2":
        w = np.random.normal(0.0, wscale * math.sqrt(2.0 / n), shape)
    elif kind == "gaussian":
        w = np.random.normal(0.0, wscale, shape)
    elif kind == "uniform":
        w = np.random.uniform(-wscale, wscale, shape)
    else:
        w = np.zeros(shape)
    return w.astype(np.float32)


class Linear(Module):
    """Fully connected layer on (batchsize, insize) data: ``y = x @ W + b``.

    ``W`` has shape (insize, outsize) and ``b`` (outsize,). The matrix products go through
    ``kernels.dense.ops().gemm``: numpy's BLAS on the CPU, cuBLAS on CUDA.
    """

    def __init__(self, insize, outsize, wscale=1.0, useBias=True, initscheme=None, name=None,
                 empty=False):
        super().__init__(name)
        self.insize = _size(self, "insize", insize)
        self.outsize = _size(self, "outsize", outsize)
        self.wscale = check_finite(self, "wscale", wscale, low=0.0)
        self.useBias = bool(useBias)
        scheme, factor = parse_initscheme(self, initscheme)
        self.initscheme = scheme
        self.initfactor = factor

        ok, reason = dense.ops().gemm_status()
        if not ok:
            raise ModuleError("%s: matrix products are unavailable on this backend: %s"
                              % (self, reason))

        self.W = self.b = None
        if empty:
            return
        self.setVar("W", Variable(gpuarray.to_gpu(init_weights(self.insize, self.outsize, scheme,
                                                                self.wscale, factor))))
        if self.useBias:
            self.setVar("b", Variable(gpuarray.zeros((self.outsize,), dtype=np.float32)))

    def checkDataShape(self, shape):
        if len(shape) != 2 or shape[1] != self.insize:
            raise ModuleError("%s: expects 2-D data (batchsize, %d), got shape %s"
                              % (self, self.insize, tuple(shape)))
        if shape[0] == 0:
            raise ModuleError("%s: data has no rows" % self)
        if self.W is None:
            raise ModuleError("%s: parameters are not initialized (built with empty=True); "
                              "load() them first" % self)

    def dataShapeFrom(self, shape):
        return (shape[0], self.outsize)

    def gradShapeFrom(self, shape):
        return (shape[0], self.insize)

    def checkGradShape(self, shape):
        expected = (self.inData.shape[0], self.outsize)
        if tuple(shape) != expected:
            raise ModuleError("%s: grad shape %s, expected %s" % (self, tuple(shape), expected))

    # float16 data (calcMode) is converted to float32 at the boundaries: parameters, products and
    # accumulation stay float32, as the batch norms keep theirs
    def updateData(self, data):
        ops = dense.ops()
        out = gpuarray.empty((data.shape[0], self.outsize), np.float32)
        ops.gemm(elementwise.to_dtype(data, np.float32), self.W, out)
        if self.useBias:
            ops.add_bias(out, self.b)
        return elementwise.to_dtype(out, data.dtype)

    def updateGrad(self, grad):
        dx = gpuarray.empty(self.inData.shape, np.float32)
        dense.ops().gemm(elementwise.to_dtype(grad, np.float32), self.W, dx, transB=True)
        return elementwise.to_dtype(dx, grad.dtype)

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        ops = dense.ops()
        grad = elementwise.to_dtype(grad, np.float32)
        ops.gemm(elementwise.to_dtype(self.inData, np.float32), grad, self.vars["W"].grad,
                 transA=True, alpha=scale, beta=momentum)
        if self.useBias:
            ops.bias_grad(grad, self.vars["b"].grad, scale, momentum)

    def stateSpec(self):
        spec = {"vars.W": ((self.insize, self.outsize), np.dtype(np.float32))}
        if self.useBias:
            spec["vars.b"] = ((self.outsize,), np.dtype(np.float32))
        return spec

    def __str__(self):
        if hasattr(self, "outsize"):
            return "Linear %d -> %d (name: %s)" % (self.insize, self.outsize, self.name)
        return "Linear (name: %s)" % (self.name,)
