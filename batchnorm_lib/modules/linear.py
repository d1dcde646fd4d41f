"""Linear: the fully connected layer ``y = x @ W + b`` (PuzzleLib's layout: W is (insize,
outsize))."""

import math
import numbers

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import dense
from batchnorm_lib.modules.module import Module, ModuleError, check_finite
from batchnorm_lib.variable import Variable

INIT_SCHEMES = ("xavier", "xavier_uniform", "xavier_normal", "he", "he_normal", "gaussian", "none")


def _size(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ModuleError("%s: %s must be an integer >= 1, got %r" % (owner, name, value))
    return int(value)


def init_weights(insize, outsize, scheme, wscale):
    """Initial W of shape (insize, outsize) from numpy's global random state (seed it for repeatable
    runs). ``xavier`` (the default): uniform in +-wscale*sqrt(6 / (insize + outsize));
    ``xavier_normal``: normal with std wscale*sqrt(2 / (insize + outsize)); ``he``: normal with std
    wscale*sqrt(2 / insize) (suits relu); ``gaussian``: normal with std wscale; ``none``: zeros."""
    shape = (insize, outsize)
    if scheme in ("xavier", "xavier_uniform"):
        a = wscale * math.sqrt(6.0 / (insize + outsize))
        w = np.random.uniform(-a, a, shape)
    elif scheme == "xavier_normal":
        w = np.random.normal(0.0, wscale * math.sqrt(2.0 / (insize + outsize)), shape)
    elif scheme in ("he", "he_normal"):
        w = np.random.normal(0.0, wscale * math.sqrt(2.0 / insize), shape)
    elif scheme == "gaussian":
        w = np.random.normal(0.0, wscale, shape)
    elif scheme == "none":
        w = np.zeros(shape)
    else:
        raise ValueError(scheme)
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
        scheme = "xavier" if initscheme is None else str(initscheme).lower()
        if scheme not in INIT_SCHEMES:
            raise ModuleError("%s: initscheme must be one of %s, got %r"
                              % (self, ", ".join(INIT_SCHEMES), initscheme))
        self.initscheme = scheme

        ok, reason = dense.ops().gemm_status()
        if not ok:
            raise ModuleError("%s: matrix products are unavailable on this backend: %s"
                              % (self, reason))

        self.W = self.b = None
        if empty:
            return
        self.setVar("W", Variable(gpuarray.to_gpu(init_weights(self.insize, self.outsize, scheme,
                                                                self.wscale))))
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

    def checkGradShape(self, shape):
        expected = (self.inData.shape[0], self.outsize)
        if tuple(shape) != expected:
            raise ModuleError("%s: grad shape %s, expected %s" % (self, tuple(shape), expected))

    def updateData(self, data):
        ops = dense.ops()
        out = gpuarray.empty((data.shape[0], self.outsize), np.float32)
        ops.gemm(data, self.W, out)
        if self.useBias:
            ops.add_bias(out, self.b)
        return out

    def updateGrad(self, grad):
        dx = gpuarray.empty(self.inData.shape, np.float32)
        dense.ops().gemm(grad, self.W, dx, transB=True)
        return dx

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        ops = dense.ops()
        ops.gemm(self.inData, grad, self.vars["W"].grad, transA=True, alpha=scale, beta=momentum)
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
