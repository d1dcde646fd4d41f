"""Sequential: a chain of modules, each feeding the next; it behaves as one Module."""

import numpy as np

from batchnorm_lib.modules.module import Module, ModuleError, check_finite


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

    def append(self, module, acquire=True):
        """Add ``module`` at the end and return this Sequential (so appends chain). As in
        PuzzleLib's containers, an unnamed module is named by its position (``"0"``, ``"1"``, ...);
        a module whose name is taken is renamed so with ``acquire=True``, refused without."""
        if not isinstance(module, Module):
            raise ModuleError("%s: can only append Modules, got %s" % (self, type(module).__name__))
        if module is self or any(m is module for m in self.modules):
            raise ModuleError("%s: %s is already in this Sequential" % (self, module))
        taken = {m.name for m in self.modules}
        name = module.name
        if name is None or name in taken:
            if name is not None and not acquire:
                raise ModuleError("%s: a module named %r is already in this Sequential"
                                  % (self, name))
            name = str(len(self.modules))
            if name in taken:
                raise ModuleError("%s: cannot name %s %r by its position: a child has that name"
                                  % (self, module, name))
        module.name = name
        self.modules.append(module)
        return self

    def extend(self, modules, acquire=True):
        for mod in list(modules.modules if isinstance(modules, Sequential) else modules):
            self.append(mod, acquire)
        return self

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, index):
        """``seq[i]`` a child, ``seq["name"]`` the child of that name, ``seq[i:j]`` a new
        Sequential of the same (shared, not copied) children."""
        if isinstance(index, slice):
            part = Sequential()
            part.modules = self.modules[index]
            return part
        if isinstance(index, str):
            for mod in self.modules:
                if mod.name == index:
                    return mod
            raise KeyError(index)
        return self.modules[index]

    def getByName(self, name):
        """The module called ``name`` among the children or, recursively, their children; None
        if there is none."""
        for mod in self.modules:
            if mod.name == name:
                return mod
        for mod in self.modules:
            found = mod.getByName(name) if isinstance(mod, Sequential) else None
            if found is not None:
                return found
        return None

    def getBlueprint(self):
        blueprint = super().getBlueprint()
        blueprint["scheme"] = {"name": self.name}
        blueprint["modules"] = {mod.name: mod.getBlueprint() for mod in self.modules}
        blueprint["graph"] = [mod.name for mod in self.modules]
        return blueprint

    def getVarTable(self, vartable=None, name=None, root=True):
        name = "" if root else name
        vartable = {} if vartable is None else vartable
        for mod in self.modules:
            mod.getVarTable(vartable, "%s%s." % (name, mod.name), root=False)
        return vartable

    def dataShapeFrom(self, shape):
        for mod in self.modules:
            shape = mod.dataShapeFrom(shape)
        return tuple(shape)

    def gradShapeFrom(self, shape):
        for mod in reversed(self.modules):
            shape = mod.gradShapeFrom(shape)
        return tuple(shape)

    def checkDataType(self, dtype):
        if self.modules:
            self.modules[0].checkDataType(dtype)

    def optimizeForShape(self, shape, memlimit=None):
        for mod in self.modules:
            mod.optimizeForShape(shape, memlimit)
            shape = mod.dataShapeFrom(shape)

    def paramSize(self, unit=None):
        # a variable shared by two children counts once
        seen, size = set(), 0
        for var in self.vars.values():
            if id(var) not in seen:
                seen.add(id(var))
                size += var.data.nbytes
        return size if unit is None else self.convertUnit(size, unit)

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
            raise ModuleError("%s: backward called before any forward pass (trainMode, evalMode "
                              "and reset forget the last one)" % self)
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
        # all or nothing: a child that refuses T puts back the ones already switched
        previous = [mod.calctype for mod in self.modules]
        try:
            for mod in self.modules:
                mod.calcMode(T)
        except Exception:
            for mod, old in zip(self.modules, previous):
                mod.calctype = old
            raise
        self.calctype = np.dtype(T)

    def reset(self):
        super().reset()
        for mod in self.modules:
            mod.reset()

    # -- persistence: keys "<index>.<child key>"; in HDF5 files a child is "<name>.<child name>" --
    def childNames(self):
        """The children's names in files: their own, or their index when unnamed (as PuzzleLib's
        containers name them); two children with one name could not be told apart."""
        names = [mod.name if mod.name is not None else str(i) for i, mod in enumerate(self.modules)]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ModuleError("%s: several children are named %s; names must be unique to save "
                              "or load" % (self, ", ".join(repr(n) for n in clashes)))
        return names

    def stateEntries(self, name, prefix=""):
        for i, (mod, child) in enumerate(zip(self.modules, self.childNames())):
            yield from mod.stateEntries("%s.%s" % (name, child), "%s%d." % (prefix, i))

    def stateSpec(self):
        spec = {}
        for i, mod in enumerate(self.modules):
            spec.update({"%d.%s" % (i, k): v for k, v in mod.stateSpec().items()})
        return spec

    def stateArrays(self):
        arrays = {}
        for i, mod in enumerate(self.modules):
            arrays.update({"%d.%s" % (i, k): v for k, v in mod.stateArrays().items()})
        return arrays

    def stageState(self, contents, prefix, path):
        steps = []
        for i, mod in enumerate(self.modules):
            steps += mod.stageState(contents, "%s%d." % (prefix, i), path)
        return steps

    def __str__(self):
        count = len(getattr(self, "modules", ()))
        return "Sequential of %d modules (name: %s)" % (count, self.name)


