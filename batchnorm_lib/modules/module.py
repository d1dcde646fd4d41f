"""Module: parameters, attributes, train/eval mode and the forward/backward lifecycle.

Subclasses implement ``updateData(data) -> output`` and ``updateGrad(grad) -> input gradient``
(both return instead of assigning, so a refused call leaves the module as it was), and may
override ``accGradParams``, ``checkDataShape``, ``checkGradShape``.
"""

import functools
import inspect
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
        """The dtype of data and gradients: one of ``gpuarray.dtypesSupported()`` (float32; float16
        on the CUDA backends, with parameters and arithmetic kept in float32)."""
        T = np.dtype(T)
        if T not in [np.dtype(d) for d, _ in gpuarray.dtypesSupported()]:
            raise ModuleError("%s: unsupported dtype %s on the %r backend (see "
                              "gpuarray.dtypesSupported())" % (self, T, config.get_backend()))
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

    def save(self, hdf=None, name=None, compress="gzip", withBlueprint=False):
        """Write parameters, attributes and counters as HDF5 in PuzzleLib's layout (see
        :mod:`batchnorm_lib.modules.hdf5`) to a path or an open h5py File/Group; with no argument,
        return the file's bytes. ``name`` replaces the module's own name in the file's keys. An
        unwritable path raises the operating system's OSError. ``withBlueprint=True`` also stores
        ``getBlueprint()``, so ``batchnorm_lib.blueprint.load(file)`` rebuilds the module."""
        if withBlueprint:
            from batchnorm_lib import blueprint

            return blueprint.save(self, hdf, name, compress)
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

    # == PuzzleLib's Module API: blueprints, sizes, variable tables, shape and dtype queries =======
    def __init_subclass__(cls, **kwargs):
        """Record the constructor arguments of every module (its blueprint) as PuzzleLib's modules
        do with ``registerBlueprint(locals())``, without each class having to: the outermost
        ``__init__`` of an instance binds its arguments once."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_recordsBlueprint", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording(self, *args, **kw):
            if "blueprint" not in self.__dict__:
                try:
                    bound = signature.bind(self, *args, **kw)
                except TypeError:
                    bound = None  # init raises the TypeError itself below
                if bound is not None:
                    bound.apply_defaults()
                    scheme = {}
                    for pname, value in list(bound.arguments.items())[1:]:
                        kind = signature.parameters[pname].kind
                        if kind is inspect.Parameter.VAR_KEYWORD:
                            scheme.update(value)
                        elif kind is not inspect.Parameter.VAR_POSITIONAL:
                            scheme[pname] = value
                    self.blueprint = scheme
            init(self, *args, **kw)

        recording._recordsBlueprint = True
        cls.__init__ = recording

    def registerBlueprint(self, args, exclude=None):
        """PuzzleLib's explicit form: ``self.registerBlueprint(locals())`` in a constructor; names
        in ``exclude`` are stored as None."""
        exclude = set() if exclude is None else set(exclude)
        self.blueprint = {key: None if key in exclude else value for key, value in args.items()
                          if key not in ("self", "__class__")}

    def getBlueprint(self):
        """``{"classname": ..., "scheme": {constructor arguments}}``."""
        scheme = dict(getattr(self, "blueprint", {}))
        if "name" in scheme:
            scheme["name"] = self.name  # a container may have named the module since
        return {"classname": type(self).__name__, "scheme": scheme}

    def paramSize(self, unit=None):
        """Bytes of every parameter's data; ``unit`` "kb" or "mb" divides by 1024 or 1024**2."""
        size = sum(var.data.nbytes for var in self.vars.values())
        return size if unit is None else self.convertUnit(size, unit)

    def convertUnit(self, size, unit):
        divider = {"kb": 1024, "mb": 1024 ** 2}.get(str(getattr(unit, "value", unit)).lower())
        if divider is None:
            raise ModuleError("%s: paramSize unit must be 'kb' or 'mb', got %r" % (self, unit))
        return size / divider

    def getVarTable(self, vartable=None, name=None, root=True):
        """``{Variable: [names]}``: every variable with the names it is known by (PuzzleLib's
        naming: the module's name followed directly by the variable's)."""
        if root and name is None:
            name = self.name if self.name is not None else ""
        vartable = {} if vartable is None else vartable
        for paramName, var in self.vars.items():
            vartable.setdefault(var, []).append("%s%s" % (name, paramName))
        return vartable

    def dataShapeFrom(self, shape):
        """The output shape for input ``shape`` (elementwise modules keep it)."""
        return tuple(shape)

    def gradShapeFrom(self, shape):
        """The input-gradient shape for an output gradient of ``shape``."""
        return tuple(shape)

    def checkDataType(self, dtype):
        """ModuleError unless ``dtype`` (or each of a tuple/list) is the module's ``calctype``."""
        for d in dtype if isinstance(dtype, (tuple, list)) else (dtype,):
            if np.dtype(d) != self.calctype:
                raise ModuleError("%s: expected dtype %s, got %s" % (self, self.calctype,
                                                                    np.dtype(d)))

    def checkGradType(self, dtype):
        self.checkDataType(dtype)

    def optimizeForShape(self, shape, memlimit=None):
        """Accepted for PuzzleLib compatibility; the kernels here need no per-shape tuning."""
