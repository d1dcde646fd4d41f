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


def check_state_entry(owner, label, value, shape, dtype, where):
    """``value`` as a contiguous array of ``dtype`` if its shape and dtype fit, else ModuleError
    naming ``label`` and ``where`` (the file)."""
    value = np.asarray(value)
    if tuple(value.shape) != tuple(shape):
        raise ModuleError("%s: %s in %s has shape %s, expected %s"
                          % (owner, label, where, tuple(value.shape), tuple(shape)))
    if value.dtype.kind not in "biuf" or not np.can_cast(value.dtype, dtype, casting="same_kind"):
        raise ModuleError("%s: %s in %s has dtype %s, expected %s"
                          % (owner, label, where, value.dtype, dtype))
    return np.ascontiguousarray(value, dtype=dtype)


class Module:
    # attributes that PuzzleLib keeps as variables (e.g. a fixed scale and bias): in HDF5 files
    # they go under params/links, where PuzzleLib's loader looks for them
    hdfVars = ()

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

    # -- parameter updates -----------------------------------------------------------------------
    def zeroGradParams(self):
        for var in self.vars.values():
            if var.grad is not None:
                var.grad.fill(0)

    def updateParams(self, learnRate):
        """``data += learnRate * grad`` for every variable (PuzzleLib's convention: a descent step
        passes a negative rate)."""
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

    def stateEntries(self, name, prefix=""):
        """Where ``save`` puts each entry in an HDF5 file: ``(key, kind, entry, variable)`` with
        ``key`` as in ``stateSpec``/``stateArrays`` (after ``prefix``), ``kind`` one of ``vars``
        (``params``/``links``), ``attrs`` or ``meta``, ``entry`` = ``"<name>.<item>"``, and the
        Variable object for ``vars`` (so a shared one is stored once)."""
        for key in self.stateSpec():
            kind, item = key.split(".", 1)
            if kind == "attrs" and item in self.hdfVars:
                kind = "vars"
            yield prefix + key, kind, "%s.%s" % (name, item), self.vars.get(item)
        for item in self.saveMeta():
            yield prefix + "meta." + item, "meta", "%s.%s" % (name, item), None

    def save(self, hdf=None, name=None, compress="gzip"):
        """Write parameters, attributes and counters as HDF5 in PuzzleLib's layout (see
        :mod:`batchnorm_lib.modules.hdf5`) to a path or an open h5py File/Group; with no argument,
        return the file's bytes. ``name`` replaces the module's own name in the file's keys. An
        unwritable path raises the operating system's OSError."""
        from batchnorm_lib.modules import hdf5

        return hdf5.save(self, hdf, name, compress)

    def load(self, hdf, name=None):
        """Read a path, the bytes ``save()`` returned, or an open h5py File/Group (or a legacy
        ``.npz`` archive); ``name`` is the module's name in the file when it differs from its own.
        The file is checked whole before anything is changed, and every problem is a ModuleError
        naming the file."""
        from batchnorm_lib.modules import hdf5

        hdf5.load(self, hdf, name)

    def stageState(self, contents, prefix, path):
        """Check this module's entries of ``contents`` (keys under ``prefix``) against
        ``stateSpec``, raising ModuleError on any mismatch; return the steps that apply them."""
        spec = self.stateSpec()
        missing = sorted(prefix + k for k in spec if prefix + k not in contents)
        if missing:
            raise ModuleError("%s: %s lacks %s" % (self, path, ", ".join(missing)))
        staged = {}
        for key, (shape, dtype) in spec.items():
            staged[key] = check_state_entry(self, prefix + key, contents[prefix + key], shape,
                                            dtype, path)
        self.checkState(staged, path)
        meta = {k[len(prefix) + len("meta."):]: v for k, v in contents.items()
                if k.startswith(prefix + "meta.")}
        try:
            self.loadMeta(meta, check=True)
        except ModuleError as e:
            raise ModuleError("%s (in %s)" % (e, path)) from None

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

    def checkState(self, staged, path):
        """Refuse (ModuleError) values that fit the spec but not this module; nothing changed yet."""

    def saveMeta(self):
        return {}

    def loadMeta(self, meta, check):
        pass

    def __str__(self):
        return "%s (name: %s)" % (type(self).__name__, self.name)
