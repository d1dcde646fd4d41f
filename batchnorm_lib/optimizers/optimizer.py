"""Optimizer: the PuzzleLib-style update lifecycle.

::

    opt = SGD(learnRate=0.1)
    opt.setupOn(net, useGlobalState=True)
    for batch ...:
        error, grad = cost(net(data), labels)
        opt.zeroGradParams()
        net.backward(grad)
        opt.update()

Gradients follow PuzzleLib's sign convention: costs return the negative gradient of the loss,
modules pass it back linearly, and every optimizer *adds* its step (``w += lr * g`` for SGD), so a
positive rate descends. Each variable's
``learnRate`` factor scales the step (0 freezes the variable) and ``momRate`` scales the momentum.
"""

import math

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import Module, ModuleError


class OptimizerError(ModuleError):
    """Raised for a bad hyperparameter or an update before ``setupOn``."""


def check_rate(owner, name, value, low=0.0, high=None, open_high=False, open_low=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptimizerError("%s: %s must be a real number, got %r"
                             % (owner, name, value)) from None
    bad = not math.isfinite(value) or value < low or (open_low and value == low)
    if high is not None:
        bad = bad or value > high or (open_high and value == high)
    if bad:
        lo = "(" if open_low else "["
        hi = (")" if open_high else "]") if high is not None else ")"
        raise OptimizerError("%s: %s must be finite and in %s%s, %s%s, got %r"
                             % (owner, name, lo, low, "inf" if high is None else high, hi, value))
    return value


class Optimizer:
    def __init__(self):
        self.t = 0
        self.learnRate = 0.0
        self.module = None
        self.globalState = False
        self.variables = {}
        self.states = {}

    def setupOn(self, mod, useGlobalState=False):
        """Attach to ``mod`` and create a state for each of its variables.

        ``useGlobalState`` is accepted for PuzzleLib compatibility; states are kept per variable
        either way (a Variable shared under two names gets one state)."""
        if not isinstance(mod, Module):
            raise OptimizerError("%s: setupOn needs a Module, got %s" % (self, type(mod).__name__))
        self.module = mod
        self.globalState = bool(useGlobalState)
        self.variables, self.states, seen = {}, {}, set()
        for name, var in mod.vars.items():
            if id(var) in seen or var.grad is None:
                continue
            seen.add(id(var))
            self.variables[name] = var
            self.states[name] = self.setupState(var)
        self.t = 0

    def setupState(self, var):
        return {}

    def _zeros_like(self, var):
        return gpuarray.zeros(var.data.shape, dtype=np.float32)

    def zeroGradParams(self):
        self._checkSetup()
        for var in self.variables.values():
            var.grad.fill(0)

    def update(self):
        """One step on every variable from its accumulated gradient."""
        self._checkSetup()
        self.t += 1
        self.prepareStep()
        for name, var in self.variables.items():
            if var.learnRate > 0.0:
                self.updateVar(var, self.states[name])

    def prepareStep(self):
        pass

    def updateVar(self, var, state):
        raise NotImplementedError

    def _checkSetup(self):
        if self.module is None:
            raise OptimizerError("%s: call setupOn(module) first" % self)

    def __str__(self):
        return type(self).__name__
