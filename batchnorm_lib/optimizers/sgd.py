"""SGD and MomentumSGD."""

from batchnorm_lib.kernels import dense
from batchnorm_lib.optimizers.optimizer import Optimizer, check_rate


class SGD(Optimizer):
    """``param += learnRate * grad`` (grad is the negative gradient, as the costs return it)."""

    def __init__(self, learnRate=1e-3):
        super().__init__()
        self.learnRate = check_rate(self, "learnRate", learnRate)

    def updateVar(self, var, state):
        dense.ops().sgd_update(var.data, var.grad, self.learnRate * var.learnRate)


class MomentumSGD(SGD):
    """Classical momentum: ``mom = momRate * mom + learnRate * grad``; ``param += mom``."""

    def __init__(self, learnRate=1e-3, momRate=0.9):
        super().__init__(learnRate)
        self.momRate = check_rate(self, "momRate", momRate, high=1.0, open_high=True)

    def setupState(self, var):
        return {"mom": self._zeros_like(var)}

    def updateVar(self, var, state):
        dense.ops().momentum_update(var.data, var.grad, state["mom"],
                                    self.learnRate * var.learnRate, self.momRate * var.momRate)
