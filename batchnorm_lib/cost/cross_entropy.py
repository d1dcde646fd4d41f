"""CrossEntropy: softmax over the classes followed by the negative log-likelihood."""

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost.cost import Cost, CostError
from batchnorm_lib.kernels import dense


class CrossEntropy(Cost):
    """Softmax cross-entropy of (N, C, *spatial) float32 ``scores`` against (N, *spatial) int32
    class ``labels``, as PuzzleLib computes it: the error is the mean over every (sample, position)
    of ``-w[label] * log softmax(scores)[label]``, the gradient ``w[c] * (onehot - softmax) / N``
    (the negative gradient; divided by the batch size only). ``weights`` (optional, C values, a
    numpy array or a gpuarray) weight the classes; without them w = 1.

    ``maxlabels`` (optional) fixes the number of classes; ``verify`` checks that every label lies in
    [0, C) (one small device-to-host copy per call). ``validate`` returns the error rate (the
    fraction of positions whose most probable class is not the label) and keeps the predicted
    classes in ``mostProb`` (labels' shape, int32).
    """

    def __init__(self, maxlabels=None, weights=None, verify=True):
        super().__init__()
        self.maxlabels = maxlabels
        self.verify = bool(verify)
        self.mostProb = None
        if weights is not None:
            if not gpuarray.is_array(weights):
                host = np.asarray(weights)
                if host.dtype.kind != "f":
                    raise CostError("%s: weights must be floating point, got %s"
                                    % (self, host.dtype))
                weights = gpuarray.to_gpu(np.ascontiguousarray(host, dtype=np.float32))
            if weights.dtype != np.float32 or len(weights.shape) != 1:
                raise CostError("%s: weights must be a 1-D float32 array, got %s %s"
                                % (self, weights.dtype, tuple(weights.shape)))
            if maxlabels is not None and weights.shape[0] != maxlabels:
                raise CostError("%s: %d weights for %d classes"
                                % (self, weights.shape[0], maxlabels))
        self.weights = weights

    def checkValDataShape(self, scores, labels):
        shape, lshape = tuple(scores.shape), tuple(labels.shape)
        if len(shape) < 2 or 0 in shape:
            raise CostError("%s: expects scores of shape (batchsize, classes, *spatial), got %s"
                            % (self, shape))
        if scores.dtype != np.float32:
            raise CostError("%s: scores must be float32, got %s" % (self, scores.dtype))
        if lshape != shape[:1] + shape[2:]:
            raise CostError("%s: labels must have shape %s to match the scores %s, got %s"
                            % (self, shape[:1] + shape[2:], shape, lshape))
        if labels.dtype != np.int32:
            raise CostError("%s: labels must be int32, got %s" % (self, labels.dtype))
        if self.maxlabels is not None and shape[1] != self.maxlabels:
            raise CostError("%s: expects %d classes, scores have %d"
                            % (self, self.maxlabels, shape[1]))
        if self.verify:
            host = labels.get()
            lo, hi = int(host.min()), int(host.max())
            if lo < 0 or hi >= shape[1]:
                raise CostError("%s: labels must lie in [0, %d), found %d"
                                % (self, shape[1], lo if lo < 0 else hi))

    def checkDataShape(self, scores, labels):
        self.checkValDataShape(scores, labels)
        if self.weights is not None and self.weights.shape[0] != scores.shape[1]:
            raise CostError("%s: %d weights for %d classes"
                            % (self, self.weights.shape[0], scores.shape[1]))

    def calcGrad(self, scores, labels):
        grad = gpuarray.empty(scores.shape, np.float32)
        losses = gpuarray.empty(labels.shape, np.float32)
        dense.ops().softmax_cross_entropy(scores, labels, grad, losses, self.weights)
        # the mean is taken on the host in float64: a fixed order, the same result on every backend
        return float(losses.get().astype(np.float64).mean()), grad

    def calcVal(self, scores, labels):
        pred = np.argmax(scores.get(), axis=1).astype(np.int32)
        self.mostProb = gpuarray.to_gpu(pred)
        return float(np.mean(pred != labels.get()))

    def accuracy(self, scores, labels):
        return 1.0 - self.validate(scores, labels)

    def reset(self):
        super().reset()
        self.mostProb = None
