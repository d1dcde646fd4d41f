"""Costs: ``error, grad = CrossEntropy()(scores, labels)``; ``grad`` is the negative gradient."""

from batchnorm_lib.cost.cost import Cost, CostError
from batchnorm_lib.cost.cross_entropy import CrossEntropy
from batchnorm_lib.cost.mse import MSE

__all__ = ["Cost", "CostError", "CrossEntropy", "MSE"]
