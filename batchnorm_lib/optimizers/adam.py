"""Adam (Kingma and Ba), with the bias correction folded into the step size."""

import math

from batchnorm_lib.kernels import dense
from batchnorm_lib.optimizers.optimizer import Optimizer, check_rate


class Adam(Optimizer):
    """``mg = beta1 mg + (1 - beta1) g``; ``ms = beta2 ms + (1 - beta2) g^2``;
    ``param += alpha * sqrt(1 - beta2^t) / (1 - beta1^t) * mg / (sqrt(ms) + epsilon)``."""

    def __init__(self, alpha=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8):
        super().__init__()
        self.alpha = check_rate(self, "alpha", alpha)
        self.beta1 = check_rate(self, "beta1", beta1, high=1.0, open_high=True)
        self.beta2 = check_rate(self, "beta2", beta2, high=1.0, open_high=True)
        self.epsilon = check_rate(self, "epsilon", epsilon, open_low=True)

    def setupState(self, var):
        return {"mg": self._zeros_like(var), "ms": self._zeros_like(var)}

    def prepareStep(self):
        self.learnRate = (self.alpha * math.sqrt(1.0 - self.beta2 ** self.t)
                          / (1.0 - self.beta1 ** self.t))

    def updateVar(self, var, state):
        dense.ops().adam_update(var.data, var.grad, state["mg"], state["ms"],
                                self.learnRate * var.learnRate, self.beta1, self.beta2,
                                self.epsilon)
