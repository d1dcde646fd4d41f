"""Cast: convert data between float32 and float16 (forward) and the gradient back (backward)."""

import numpy as np

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import elementwise
from batchnorm_lib.modules.module import Module, ModuleError

TYPES = (np.dtype(np.float32), np.dtype(np.float16))


class Cast(Module):
    """``Cast(intype, outtype)``: the forward pass converts ``intype`` data to ``outtype``, the
    backward pass converts the ``outtype`` gradient back to ``intype`` (round to nearest even);
    the identity, passing the same arrays through, when the two types are equal."""

    def __init__(self, intype, outtype, name=None):
        super().__init__(name)
        self.intype, self.outtype = self._dtype(intype), self._dtype(outtype)

    def _dtype(self, T):
        try:
            T = np.dtype(getattr(T, "value", T))
        except TypeError:
            raise ModuleError("%s: dtype must be float32 or float16, got %r" % (self, T)) from None
        if T not in TYPES:
            raise ModuleError("%s: dtype must be float32 or float16, got %s" % (self, T))
        return T

    def _checkArray(self, ary, what):
        if not gpuarray.is_array(ary):
            raise ModuleError("%s: %s must be an array of the active %r backend, got %s"
                              % (self, what, config.get_backend(), type(ary).__name__))
        expected = self.intype if what == "data" else self.outtype
        if ary.dtype != expected:
            raise ModuleError("%s: expected %s dtype %s, got %s" % (self, what, expected, ary.dtype))

    def checkDataType(self, dtype):
        if np.dtype(dtype) != self.intype:
            raise ModuleError("%s: expected dtype %s, got %s" % (self, self.intype, dtype))

    def checkGradType(self, dtype):
        if np.dtype(dtype) != self.outtype:
            raise ModuleError("%s: expected dtype %s, got %s" % (self, self.outtype, dtype))

    def calcMode(self, T):
        """Accepted (a network switches every module): a Cast's types are fixed at construction."""
        if np.dtype(T) not in [np.dtype(d) for d, _ in gpuarray.dtypesSupported()]:
            raise ModuleError("%s: unsupported dtype %s on the %r backend"
                              % (self, np.dtype(T), config.get_backend()))

    def updateData(self, data):
        return elementwise.to_dtype(data, self.outtype)

    def updateGrad(self, grad):
        return elementwise.to_dtype(grad, self.intype)

    def getBlueprint(self):
        blueprint = super().getBlueprint()
        blueprint["scheme"].update(intype=str(self.intype), outtype=str(self.outtype))
        return blueprint

    def __str__(self):
        if hasattr(self, "outtype"):
            return "Cast %s -> %s (name: %s)" % (self.intype, self.outtype, self.name)
        return "Cast (name: %s)" % (self.name,)
