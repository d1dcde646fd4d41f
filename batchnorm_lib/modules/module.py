"""Module: parameters, attributes, train/eval mode and the forward/backward lifecycle.

Subclasses implement ``updateData(data) -> output`` and ``updateGrad(grad) -> input gradient``
(both return instead of assigning, so a refused call leaves the module as it was), and may
override ``accGradParams``, ``checkDataShape``, ``checkGradShape``.
"""

import math

import numpy as np

from batchnorm_lib import config, kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.variable import Variable


class ModuleError(Exception):
    """Raised for every refused module call; the module's state is left as it was."""


def check_finite(owner, name, value, low=None, high=None):
    """Validate a real-valued hyperparameter, raising ModuleError with a message that names it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ModuleError("%s: %s must be a real number, got %r" % (owner, name, value)) from None
    if not math.isfinite(value):
        raise ModuleError("%s: %s must be finite, got %r" % (owner, name, value))
    if low is not None and value < low:
        raise ModuleError("%s: %s must be >= %s, got %r" % (owner, name, low, value))
    if high is not None and value > high:
        raise ModuleError("%s: %s must be <= %s, got %r" % (owner, name, high, value))
    return value


class Module:
    def __init__(self, name=None):
        self.name = name
        self.vars = {}
        self.attrs = {}
        self.inData = None
        self.data = None
        self.grad = None
        self.train = True
        self.calctype = np.dtype(np.float32)

    # -- parameters and attributes ---------------------------------------------------------------
    def setVar(self, name, var):
        setattr(self, name, var.data)
        self.vars[name] = var

    def getVar(self, name):
        return self.vars[name]

    def setAttr(self, name, attr):
        setattr(self, name, attr)
        self.attrs[name] = attr

    def hasAttr(self, name):
        return name in self.attrs

    def numOfParams(self):
        return sum(var.data.size for var in self.vars.values())

    # -- forward / backward ----------------------------------------------------------------------
    def __call__(self, data):
        self._checkArray(data, "data")
        self.checkDataShape(data.shape)
        data = self._contiguous(data, "data")
        # the checks passed: drop the last results first, so their memory can serve this pass
        self.data = self.grad = None
        out = self.updateData(data)
        self.inData, self.data = data, out
        return out

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        if self.inData is None:
            raise ModuleError("%s: backward called before any forward pass (trainMode, evalMode "
                              "and reset forget the last one)" % self)
        self._checkArray(grad, "grad")
        self.checkGradShape(grad.shape)
        scale = check_finite(self, "scale", scale)
        momentum = check_finite(self, "momentum", momentum)
        grad = self._contiguous(grad, "grad")

        self.grad = None
        newgrad = self.updateGrad(grad) if updGrad else None
        if updParamGrads and self.train:
            self.accGradParams(grad, scale=scale, momentum=momentum)
        self.grad = newgrad
        return newgrad

    def updateData(self, data):
        raise NotImplementedError

    def updateGrad(self, grad):
        raise NotImplementedError

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        pass

    def checkDataShape(self, shape):
        pass

    def checkGradShape(self, shape):
        if self.inData is not None and tuple(shape) != tuple(self.inData.shape):
            raise ModuleError("%s: grad shape %s differs from the data shape %s"
                              % (self, tuple(shape), tuple(self.inData.shape)))

    def _checkArray(self, ary, what):
        if not gpuarray.is_array(ary):
            raise ModuleError(
                "%s: %s must be an array of the active %r backend (make one with gpuarray.to_gpu), "
                "got %s" % (self, what, config.get_backend(), type(ary).__name__)
            )
        if ary.dtype != self.calctype:
            raise ModuleError("%s: expected %s dtype %s, got %s (see calcMode)"
                              % (self, what, self.calctype, ary.dtype))

    def _contiguous(self, ary, what):
        """A strided view (``x[:, ::2]``, ``x.T``) is copied once into a contiguous array: every
        kernel indexes its operands as dense C-ordered buffers. An in-place module cannot write
        its output into a view's memory that way, so it refuses one."""
        if ary.flags.c_contiguous:
            return ary
        if getattr(self, "inplace", False):
            raise ModuleError("%s: inplace=True needs a contiguous %s; got a strided view of shape "
                              "%s (pass view.copy())" % (self, what, tuple(ary.shape)))
        return ary.copy()

    # -- parameter updates -----------------------------------------------------------------------
    def zeroGradParams(self):
        for var in self.vars.values():
            if var.grad is not None:
                var.grad.fill(0)

    def updateParams(self, learnRate):
        """``data += learnRate * grad`` for every variable. With PuzzleLib's convention (the costs
        return the negative gradient) a positive rate descends."""
        learnRate = check_finite(self, "learnRate", learnRate)
        for var in self.vars.values():
            if var.grad is not None:
                kernels.norm.ops().axpby(var.grad.ravel(), var.data.ravel(), learnRate, 1.0)

    # -- modes -----------------------------------------------------------------------------------
    def trainMode(self):
        self.train = True
        self.reset()

    def evalMode(self):
        self.train = False
        self.reset()

    def calcMode(self, T):
        T = np.dtype(T)
        if T != np.float32:
            raise ModuleError("%s: unsupported dtype %s" % (self, T))
        self.calctype = T

    def reset(self):
        self.inData, self.data, self.grad = None, None, None

    # -- persistence -----------------------------------------------------------------------------
    def stateSpec(self):
        """``{key: (shape, dtype)}`` of everything ``save`` writes and ``load`` expects."""
        spec = {"vars." + n: (tuple(v.data.shape), v.data.dtype) for n, v in self.vars.items()}
        spec.update({"attrs." + n: (tuple(a.shape), a.dtype) for n, a in self.attrs.items()
                     if a is not None})
        return spec

    def stateArrays(self):
        """Host copies of everything ``save`` writes, by key."""
        arrays = {"vars." + n: v.data.get() for n, v in self.vars.items()}
        arrays.update({"attrs." + n: a.get() for n, a in self.attrs.items() if a is not None})
        arrays.update({"meta." + k: np.asarray(v) for k, v in self.saveMeta().items()})
        return arrays

    def save(self, path):
        """Write parameters and attributes (running statistics) to ``path`` as an .npz archive."""
        with open(path, "wb") as f:
            np.savez(f, **self.stateArrays())

    def load(self, path):
        """Read what ``save`` wrote; the file is checked whole before anything is changed."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                contents = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as e:
            raise ModuleError("%s: cannot read %s: %s" % (self, path, e)) from None
        for apply in self.stageState(contents, "", path):
            apply()

    def stageState(self, contents, prefix, path):
        """Check this module's entries of ``contents`` (keys under ``prefix``) against
        ``stateSpec``, raising ModuleError on any mismatch; return the steps that apply them."""
        spec = self.stateSpec()
        missing = sorted(prefix + k for k in spec if prefix + k not in contents)
        if missing:
            raise ModuleError("%s: %s lacks %s" % (self, path, ", ".join(missing)))
        staged = {}
        for key, (shape, dtype) in spec.items():
            value = contents[prefix + key]
            if tuple(value.shape) != tuple(shape):
                raise ModuleError("%s: %s in %s has shape %s, expected %s"
                                  % (self, prefix + key, path, value.shape, tuple(shape)))
            if not np.can_cast(value.dtype, dtype, casting="same_kind"):
                raise ModuleError("%s: %s in %s has dtype %s, expected %s"
                                  % (self, prefix + key, path, value.dtype, dtype))
            staged[key] = np.ascontiguousarray(value, dtype=dtype)
        meta = {k[len(prefix) + len("meta."):]: v for k, v in contents.items()
                if k.startswith(prefix + "meta.")}
        self.loadMeta(meta, check=True)

        def apply():
            for key, value in staged.items():
                kind, name = key.split(".", 1)
                current = self.vars[name].data if kind == "vars" and name in self.vars else \
                    self.attrs.get(name)
                if current is not None:
                    current.set(value)
                elif kind == "vars":
                    self.setVar(name, Variable(gpuarray.to_gpu(value)))
                else:
                    self.setAttr(name, gpuarray.to_gpu(value))
            self.loadMeta(meta, check=False)

        return [apply]

    def saveMeta(self):
        return {}

    def loadMeta(self, meta, check):
        pass

    def __str__(self):
        return "%s (name: %s)" % (type(self).__name__, self.name)
