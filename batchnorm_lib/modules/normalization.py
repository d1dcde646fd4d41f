"""What every normalization module shares: a per-channel affine (``scale``, ``bias``) that is
trainable or fixed, the saved statistics of the last training forward, parameter gradients
computed at most once per backward (and restored when a backward is refused), and calcMode."""

import numbers

import numpy as np

from batchnorm_lib import config, kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import Module, ModuleError
from batchnorm_lib.variable import Variable


def positive_int(owner, name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ModuleError("%s: %s must be an integer >= %d, got %r" % (owner, name, low, value))
    return int(value)


def check_grad_dtype(module, grad):
    """calcMode may change the dtype after a forward: the kernels take data and grad of one dtype,
    so a grad in the new one is refused until a forward in it ran."""
    data = module.inData
    if data is not None and gpuarray.is_array(grad) and grad.dtype != data.dtype:
        raise ModuleError("%s: grad dtype %s differs from the dtype %s of the last forward's data "
                          "(run a forward after calcMode)" % (module, grad.dtype, data.dtype))


class Normalization(Module):
    """Base of the normalization modules. Subclasses call ``initAffine`` and implement
    ``paramGrads(grad, dx=None)``: the parameter gradients of this backward into ``scalegrad`` and
    ``biasgrad`` (and, unless ``dx`` is None, the input gradient into ``dx``)."""

    def initAffine(self, affine, scale, bias):
        """``scale``/``bias`` (host arrays) as trainable variables, or as fixed attributes that the
        kernels take like any other when ``affine`` is False."""
        self.affine = bool(affine)
        self.savemean = self.saveinvvar = None
        self.scalegrad = self.biasgrad = None
        if self.affine:
            self.setVar("scale", Variable(gpuarray.to_gpu(scale)))
            self.setVar("bias", Variable(gpuarray.to_gpu(bias)))
        else:
            self.setAttr("scale", gpuarray.to_gpu(scale))
            self.setAttr("bias", gpuarray.to_gpu(bias))

    def paramGrads(self, grad, dx=None):
        raise NotImplementedError

    def hasParamGrads(self):
        """Whether the last forward gives parameter gradients to accumulate."""
        return self.affine

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        if not self.hasParamGrads():
            return
        if self.scalegrad is None:  # backward ran with updGrad=False
            self.paramGrads(grad)
        ops = kernels.norm.ops()
        # (same shapes: axpby works elementwise over arrays of one size)
        ops.axpby(self.scalegrad, self.vars["scale"].grad, scale, momentum)
        ops.axpby(self.biasgrad, self.vars["bias"].grad, scale, momentum)

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        check_grad_dtype(self, grad)
        previous = self.scalegrad, self.biasgrad
        self.scalegrad = self.biasgrad = None  # this pass's gradients, computed at most once
        try:
            return super().backward(grad, updParamGrads, updGrad, scale, momentum)
        except ModuleError:
            self.scalegrad, self.biasgrad = previous
            raise

    def reset(self):
        super().reset()
        self.savemean = self.saveinvvar = None
        self.scalegrad = self.biasgrad = None

    def calcMode(self, T):
        T = np.dtype(T)
        if T not in config.backend_module().supported_dtypes():
            raise ModuleError("%s: dtype %s is not supported on the %r backend" %
                              (self, T, config.get_backend()))
        self.calctype = T
