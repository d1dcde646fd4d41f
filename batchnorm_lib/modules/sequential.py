"""Sequential: a chain of modules, each feeding the next; it behaves as one Module."""

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import Module, ModuleError, check_finite
from batchnorm_lib.variable import Variable


class Sequential(Module):
    """``seq = Sequential(); seq.append(Linear(64, 32)); seq.append(Activation(relu))``.

    ``seq(data)`` runs the children in order, ``seq.backward(grad)`` in reverse. Parameters are the
    children's: ``seq.vars`` maps ``"<index>.<name>"`` (``"0.W"``, ``"1.scale"``, ...) to the
    children's own Variable objects, so optimizers set up on the Sequential update the children in
    place.
    """

    def __init__(self, modules=None, name=None):
        super().__init__(name)
        self.modules = []
        for mod in modules or ():
            self.append(mod)

    # Module.__init__ assigns an empty dict; the table itself is always derived from the children
    @property
    def vars(self):
        table = {}
        for i, mod in enumerate(self.modules):
            for n, var in mod.vars.items():
                table["%d.%s" % (i, n)] = var
        return table

    @vars.setter
    def vars(self, value):
        if value:
            raise ModuleError("%s: variables belong to the children; set them there" % self)

    def append(self, module):
        if not isinstance(module, Module):
            raise ModuleError("%s: can only append Modules, got %s" % (self, type(module).__name__))
        if module is self or any(m is module for m in self.modules):
            raise ModuleError("%s: %s is already in this Sequential" % (self, module))
        self.modules.append(module)

    def extend(self, modules):
        for mod in modules:
            self.append(mod)

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, index):
        return self.modules[index]

    def __iter__(self):
        return iter(self.modules)

    def setVar(self, name, var):
        index, _, sub = name.partition(".")
        self.modules[int(index)].setVar(sub, var)

    def numOfParams(self):
        return sum(mod.numOfParams() for mod in self.modules)

    # -- forward / backward ----------------------------------------------------------------------
    def __call__(self, data):
        if not self.modules:
            raise ModuleError("%s: is empty; append modules first" % self)
        out = data
        for mod in self.modules:
            out = mod(out)
        self.inData, self.data, self.grad = data, out, None
        return out

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        if self.inData is None:
            raise ModuleError("%s: backward called before any forward pass" % self)
        scale = check_finite(self, "scale", scale)
        momentum = check_finite(self, "momentum", momentum)
        last = len(self.modules) - 1
        for i in range(last, -1, -1):
            # the first module's input gradient is only needed when the caller asks for it
            grad = self.modules[i].backward(grad, updParamGrads=updParamGrads,
                                            updGrad=updGrad or i > 0, scale=scale,
                                            momentum=momentum)
        self.grad = grad
        return grad

    # -- delegation ------------------------------------------------------------------------------
    def zeroGradParams(self):
        for mod in self.modules:
            mod.zeroGradParams()

    def updateParams(self, learnRate):
        learnRate = check_finite(self, "learnRate", learnRate)
        for mod in self.modules:
            mod.updateParams(learnRate)

    def trainMode(self):
        self.train = True
        for mod in self.modules:
            mod.trainMode()
        self.reset()

    def evalMode(self):
        self.train = False
        for mod in self.modules:
            mod.evalMode()
        self.reset()

    def calcMode(self, T):
        for mod in self.modules:
            mod.calcMode(T)
        self.calctype = np.dtype(T)

    def reset(self):
        super().reset()
        for mod in self.modules:
            mod.reset()

    # -- persistence: one .npz, keys "<index>.<child key>" ----------------------------------------
    def stateSpec(self):
        spec = {}
        for i, mod in enumerate(self.modules):
            spec.update({"%d.%s" % (i, k): v for k, v in mod.stateSpec().items()})
        return spec

    def stateArrays(self):
        arrays = {}
        for i, mod in enumerate(self.modules):
            arrays.update({"%d.%s" % (i, k): v for k, v in _arrays_of(mod).items()})
        return arrays

    def save(self, path):
        """Write every child's parameters, attributes and metadata to ``path`` (.npz)."""
        with open(path, "wb") as f:
            np.savez(f, **self.stateArrays())

    def load(self, path):
        """Read what ``save`` wrote; the whole file is checked before any child is changed."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                contents = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as e:
            raise ModuleError("%s: cannot read %s: %s" % (self, path, e)) from None
        apply = _stage(self, contents, "", path)
        for step in apply:
            step()

    def __str__(self):
        count = len(getattr(self, "modules", ()))
        return "Sequential of %d modules (name: %s)" % (count, self.name)


def _arrays_of(mod):
    if isinstance(mod, Sequential):
        return mod.stateArrays()
    arrays = {"vars." + n: v.data.get() for n, v in mod.vars.items()}
    arrays.update({"attrs." + n: a.get() for n, a in mod.attrs.items() if a is not None})
    arrays.update({"meta." + k: np.asarray(v) for k, v in mod.saveMeta().items()})
    return arrays


def _stage(mod, contents, prefix, path):
    """Check ``mod``'s part of ``contents`` (keys under ``prefix``); return steps that apply it."""
    if isinstance(mod, Sequential):
        steps = []
        for i, child in enumerate(mod.modules):
            steps += _stage(child, contents, "%s%d." % (prefix, i), path)
        return steps

    spec = mod.stateSpec()
    missing = sorted(prefix + k for k in spec if prefix + k not in contents)
    if missing:
        raise ModuleError("%s: %s lacks %s" % (mod, path, ", ".join(missing)))
    staged = {}
    for key, (shape, dtype) in spec.items():
        value = contents[prefix + key]
        if tuple(value.shape) != tuple(shape):
            raise ModuleError("%s: %s in %s has shape %s, expected %s"
                              % (mod, prefix + key, path, value.shape, tuple(shape)))
        if not np.can_cast(value.dtype, dtype, casting="same_kind"):
            raise ModuleError("%s: %s in %s has dtype %s, expected %s"
                              % (mod, prefix + key, path, value.dtype, dtype))
        staged[key] = np.ascontiguousarray(value, dtype=dtype)
    meta = {k[len(prefix) + len("meta."):]: v for k, v in contents.items()
            if k.startswith(prefix + "meta.")}
    mod.loadMeta(meta, check=True)

    def apply():
        for key, value in staged.items():
            kind, name = key.split(".", 1)
            current = mod.vars[name].data if kind == "vars" and name in mod.vars else \
                mod.attrs.get(name)
            if current is not None:
                current.set(value)
            elif kind == "vars":
                mod.setVar(name, Variable(gpuarray.to_gpu(value)))
            else:
                mod.setAttr(name, gpuarray.to_gpu(value))
        mod.loadMeta(meta, check=False)

    return [apply]
