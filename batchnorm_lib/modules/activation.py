"""Activation: an elementwise nonlinearity (relu, sigmoid, tanh) on data of any shape."""

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import dense
from batchnorm_lib.modules.module import Module, ModuleError

# PuzzleLib-style names: Activation(relu)
relu, sigmoid, tanh = "relu", "sigmoid", "tanh"


class Activation(Module):
    """``y = f(x)`` elementwise; the backward pass uses the saved output ``y`` (all three
    derivatives are functions of it: relu ``y > 0``, sigmoid ``y (1 - y)``, tanh ``1 - y^2``)."""

    def __init__(self, activation=relu, name=None):
        super().__init__(name)
        kind = str(activation).lower() if isinstance(activation, str) else activation
        if kind not in dense.ACTIVATIONS:
            raise ModuleError("%s: activation must be one of %s, got %r"
                              % (self, ", ".join(dense.ACTIVATIONS), activation))
        self.activation = kind

    def checkDataShape(self, shape):
        if any(s == 0 for s in shape):
            raise ModuleError("%s: data has no elements, shape %s" % (self, tuple(shape)))

    def updateData(self, data):
        out = gpuarray.empty(data.shape, data.dtype)
        dense.ops().activation_forward(self.activation, data, out)
        return out

    def updateGrad(self, grad):
        dx = gpuarray.empty(grad.shape, grad.dtype)
        dense.ops().activation_backward(self.activation, grad, self.data, dx)
        return dx

    def __str__(self):
        return "Activation %s (name: %s)" % (getattr(self, "activation", "?"), self.name)
