"""Cost: PuzzleLib's cost lifecycle.

``error, grad = cost(pred, target)`` returns the error of the batch (a Python float, normalized as
PuzzleLib's costs normalize it) and the *negative* gradient of the loss with respect to ``pred``
(an array of the active backend, same shape): PuzzleLib's convention, so ``net.backward(grad)``
followed by ``optimizer.update()`` or ``net.updateParams(+learnRate)`` descends.
``cost(pred, target, queryError=False)`` returns only the gradient.

The last error is ``cost.error`` (``getError()``), the mean over every sample since
``resetAccumulator`` is ``getMeanError()``; ``validate(pred, target)`` scores a batch without a
gradient and keeps the result in ``cost.valError`` (``getValError()``).
"""

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import ModuleError


def _contiguous(ary):
    # the kernels index dense buffers: a strided view is copied once
    return ary if ary.flags.c_contiguous else ary.copy()


class CostError(ModuleError):
    """Raised for every refused cost call (wrong shapes, dtypes or label values)."""


class Cost:
    def __init__(self):
        self.error = None
        self.valError = None
        self.grad = None
        self.batchsize = 0
        self.numOfSamples = 0
        self.accumErr = 0.0

    def __call__(self, pred, target, queryError=True):
        self._checkArray(pred, "pred")
        self._checkArray(target, "target")
        self.checkDataShape(pred, target)
        pred, target = _contiguous(pred), _contiguous(target)
        error, grad = self.calcGrad(pred, target)
        self.reset()
        self.error, self.grad = error, grad
        self.batchsize = pred.shape[0]
        self.numOfSamples += pred.shape[0]
        self.accumErr += error * pred.shape[0]
        return (error, grad) if queryError else grad

    def validate(self, pred, target):
        """Score ``pred`` against ``target`` without a gradient (no accumulation); the result is
        also kept in ``valError``."""
        self._checkArray(pred, "pred")
        self._checkArray(target, "target")
        self.checkValDataShape(pred, target)
        pred, target = _contiguous(pred), _contiguous(target)
        self.valError = self.calcVal(pred, target)
        return self.valError

    def getError(self):
        """Error of the last batch."""
        return self.error

    def getValError(self):
        """Result of the last ``validate``."""
        return self.valError

    def getMeanError(self):
        """Mean error per sample since the last ``resetAccumulator``."""
        return self.accumErr / self.numOfSamples if self.numOfSamples else 0.0

    @property
    def accumCount(self):
        return self.numOfSamples

    def resetAccumulator(self):
        self.accumErr, self.batchsize, self.numOfSamples = 0.0, 0, 0

    def reset(self):
        self.error = self.valError = self.grad = None

    def calcGrad(self, pred, target):
        """``(error, negative gradient)`` of one batch."""
        raise NotImplementedError

    def calcVal(self, pred, target):
        raise NotImplementedError

    def checkDataShape(self, pred, target):
        pass

    def checkValDataShape(self, pred, target):
        self.checkDataShape(pred, target)

    def _checkArray(self, ary, what):
        if not gpuarray.is_array(ary):
            raise CostError("%s: %s must be an array of the active %r backend (make one with "
                            "gpuarray.to_gpu), got %s"
                            % (self, what, config.get_backend(), type(ary).__name__))

    def __str__(self):
        return type(self).__name__
