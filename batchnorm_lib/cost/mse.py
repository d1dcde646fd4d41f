"""MSE: the mean squared error, normalized as PuzzleLib's."""

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost.cost import Cost, CostError
from batchnorm_lib.kernels import dense


class MSE(Cost):
    """``error = sum((target - pred)**2) / (2 * size)`` over every element; the gradient is
    ``(target - pred) / size`` (the negative gradient of the error). ``validate`` returns the
    same error without a gradient."""

    def checkDataShape(self, pred, target):
        if len(pred.shape) < 1 or pred.size == 0:
            raise CostError("%s: pred has no elements, shape %s" % (self, tuple(pred.shape)))
        if tuple(pred.shape) != tuple(target.shape):
            raise CostError("%s: pred %s and target %s must have the same shape"
                            % (self, tuple(pred.shape), tuple(target.shape)))
        for what, ary in (("pred", pred), ("target", target)):
            if ary.dtype != np.float32:
                raise CostError("%s: %s must be float32, got %s" % (self, what, ary.dtype))

    def _run(self, pred, target):
        grad = gpuarray.empty(pred.shape, np.float32)
        squared = dense.ops().mse(pred, target, grad, 1.0 / pred.size)
        return squared / (2.0 * pred.size), grad

    def calcGrad(self, pred, target):
        return self._run(pred, target)

    def calcVal(self, pred, target):
        return self._run(pred, target)[0]
