"""Costs: ``error, grad = CrossEntropy()(scores, labels)``."""

from batchnorm_lib.cost.cost import Cost, CostError
from batchnorm_lib.cost.cross_entropy import CrossEntropy

__all__ = ["Cost", "CostError", "CrossEntropy"]
