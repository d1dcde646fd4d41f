"""CrossEntropy: softmax followed by the negative log-likelihood, averaged over the batch."""

import numpy as np

from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost.cost import Cost, CostError
from batchnorm_lib.kernels import dense


class CrossEntropy(Cost):
    """Softmax cross-entropy of (batchsize, classes) float32 ``scores`` against (batchsize,) int32
    class ``labels``. The loss is ``mean_i(-log softmax(scores)[i, labels[i]])``; the gradient is
    ``(softmax(scores) - onehot(labels)) / batchsize``.

    ``maxlabels`` (optional) fixes the number of classes; ``verify`` checks that every label lies in
    [0, classes) (one small device-to-host copy per call).
    """

    def __init__(self, maxlabels=None, verify=True):
        super().__init__()
        self.maxlabels = maxlabels
        self.verify = bool(verify)
        self.mostProb = None

    def checkDataShape(self, scores, labels):
        if len(scores.shape) != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
            raise CostError("%s: expects scores of shape (batchsize, classes), got %s"
                            % (self, tuple(scores.shape)))
        if scores.dtype != np.float32:
            raise CostError("%s: scores must be float32, got %s" % (self, scores.dtype))
        if tuple(labels.shape) != (scores.shape[0],):
            raise CostError("%s: labels must have shape (%d,) to match the scores %s, got %s"
                            % (self, scores.shape[0], tuple(scores.shape), tuple(labels.shape)))
        if labels.dtype != np.int32:
            raise CostError("%s: labels must be int32, got %s" % (self, labels.dtype))
        if self.maxlabels is not None and scores.shape[1] != self.maxlabels:
            raise CostError("%s: expects %d classes, scores have %d"
                            % (self, self.maxlabels, scores.shape[1]))
        if self.verify:
            host = labels.get()
            lo, hi = int(host.min()), int(host.max())
            if lo < 0 or hi >= scores.shape[1]:
                raise CostError("%s: labels must lie in [0, %d), found %d"
                                % (self, scores.shape[1], lo if lo < 0 else hi))

    def calcGrad(self, scores, labels):
        grad = gpuarray.empty(scores.shape, np.float32)
        losses = gpuarray.empty((scores.shape[0],), np.float32)
        dense.ops().softmax_cross_entropy(scores, labels, grad, losses)
        # the mean is taken on the host in float64: a fixed order, the same result on every backend
        return float(losses.get().astype(np.float64).mean()), grad

    def calcVal(self, scores, labels):
        pred = np.argmax(scores.get(), axis=1).astype(np.int32)
        self.mostProb = gpuarray.to_gpu(pred)
        return float(np.mean(pred != labels.get()))
