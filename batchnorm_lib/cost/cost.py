"""Cost: the PuzzleLib-style cost lifecycle.

``error, grad = cost(scores, labels)`` returns the mean loss of the batch (a Python float) and its
true gradient with respect to ``scores`` (an array of the active backend, same shape). The cost also
accumulates the loss over batches (``getMeanError``, ``resetAccumulator``) and scores batches
without a gradient (``validate`` returns the error rate, ``accuracy`` its complement).
"""

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import ModuleError


class CostError(ModuleError):
    """Raised for every refused cost call (wrong shapes, dtypes or label values)."""


class Cost:
    def __init__(self):
        self.accumErr = 0.0
        self.accumCount = 0
        self.devErr = None
        self.grad = None

    def __call__(self, scores, labels):
        self._checkArray(scores, "scores")
        self._checkArray(labels, "labels")
        self.checkDataShape(scores, labels)
        error, grad = self.calcGrad(scores, labels)
        self.devErr, self.grad = error, grad
        self.accumErr += error * scores.shape[0]
        self.accumCount += scores.shape[0]
        return error, grad

    def validate(self, scores, labels):
        """Error rate of ``scores`` against ``labels`` (no gradient, no accumulation)."""
        self._checkArray(scores, "scores")
        self._checkArray(labels, "labels")
        self.checkDataShape(scores, labels)
        return self.calcVal(scores, labels)

    def accuracy(self, scores, labels):
        return 1.0 - self.validate(scores, labels)

    def getError(self):
        """Mean loss of the last batch."""
        return self.devErr

    def getMeanError(self):
        """Mean loss over every sample since the last ``resetAccumulator``."""
        return self.accumErr / self.accumCount if self.accumCount else 0.0

    def resetAccumulator(self):
        self.accumErr, self.accumCount = 0.0, 0

    def reset(self):
        self.resetAccumulator()
        self.devErr = self.grad = None

    def calcGrad(self, scores, labels):
        raise NotImplementedError

    def calcVal(self, scores, labels):
        raise NotImplementedError

    def checkDataShape(self, scores, labels):
        pass

    def _checkArray(self, ary, what):
        if not gpuarray.is_array(ary):
            raise CostError("%s: %s must be an array of the active %r backend (make one with "
                            "gpuarray.to_gpu), got %s"
                            % (self, what, config.get_backend(), type(ary).__name__))

    def __str__(self):
        return type(self).__name__
