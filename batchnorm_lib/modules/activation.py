"""Activation: an elementwise nonlinearity on data of any shape (PuzzleLib's kinds)."""

from enum import Enum

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels import dense, elementwise
from batchnorm_lib.modules.module import Module, ModuleError, check_finite


class ActivationType(str, Enum):
    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    leakyRelu = "leakyRelu"
    elu = "elu"
    softPlus = "softPlus"
    clip = "clip"


sigmoid, tanh, relu = ActivationType.sigmoid, ActivationType.tanh, ActivationType.relu
leakyRelu, elu, softPlus = ActivationType.leakyRelu, ActivationType.elu, ActivationType.softPlus
clip = ActivationType.clip

# PuzzleLib's default parameters: leakyRelu's slope, elu's alpha, clip's bounds
DEFAULT_ARGS = {"leakyRelu": (0.01,), "elu": (1.0,), "clip": (0.0, 6.0)}


class Activation(Module):
    """``y = f(x)`` elementwise: relu, sigmoid, tanh, leakyRelu (``x`` or ``slope * x``), elu
    (``x`` or ``alpha * (e^x - 1)``), softPlus (``log(1 + e^x)``), clip (into ``[min, max]``).
    ``args`` overrides the parameters (``(slope,)``, ``(alpha,)``, ``(min, max)``). The backward
    pass uses the saved output ``y``, as PuzzleLib's does (every derivative is a function of it).
    ``inplace=True`` writes the output over the input and the input gradient over the output
    gradient."""

    def __init__(self, activation=relu, slc=None, inplace=False, name=None, args=()):
        super().__init__(name)
        try:
            kind = ActivationType(activation).value
        except ValueError:
            lowered = {k.lower(): k for k in dense.ACTIVATIONS}
            kind = lowered.get(str(activation).lower())
            if kind is None:
                raise ModuleError("%s: activation must be one of %s, got %r"
                                  % (self, ", ".join(dense.ACTIVATIONS), activation)) from None
        if slc is not None:
            raise ModuleError("%s: slc (activating a slice of the data) is not supported; slice "
                              "the data instead" % self)
        args = tuple(args) if len(args) > 0 else DEFAULT_ARGS.get(kind, ())
        if len(args) != len(DEFAULT_ARGS.get(kind, ())):
            raise ModuleError("%s: %s takes %d args, got %r"
                              % (self, kind, len(DEFAULT_ARGS.get(kind, ())), args))
        args = tuple(check_finite(self, "args[%d]" % i, a) for i, a in enumerate(args))
        if kind == "clip" and not args[0] < args[1]:
            raise ModuleError("%s: clip needs min < max, got %r" % (self, args))
        self.activation = ActivationType(kind)
        self.actArgs = args
        self.slc = slc
        self.inplace = bool(inplace)

    def checkDataShape(self, shape):
        if any(s == 0 for s in shape):
            raise ModuleError("%s: data has no elements, shape %s" % (self, tuple(shape)))

    def _params(self):
        return (self.actArgs + (0.0, 0.0))[:2]

    # float16 (calcMode): the kernels compute in float32 between conversions at the boundaries,
    # which is what a half kernel does per element (load, compute in float, round once)
    def _elementwise(self, kernel, src, *others):
        """``kernel(x32, *others32, out32)`` on float32 copies of float16 operands, the result
        back in ``src``'s dtype: written over ``src`` when in place."""
        x = elementwise.to_dtype(src, np.float32)
        out = x if self.inplace or x is not src else gpuarray.empty(x.shape, np.float32)
        kernel(self.activation.value, x,
               *[elementwise.to_dtype(o, np.float32) for o in others], out, *self._params())
        if x is src:
            return out
        if self.inplace:
            elementwise.ops(src).convert(out, src)
            return src
        return elementwise.to_dtype(out, src.dtype)

    def updateData(self, data):
        return self._elementwise(dense.ops().activation_forward, data)

    def updateGrad(self, grad):
        return self._elementwise(dense.ops().activation_backward, grad, self.data)

    def __str__(self):
        act = getattr(self, "activation", None)
        return "Activation %s (name: %s)" % (act.value if act is not None else "?", self.name)
