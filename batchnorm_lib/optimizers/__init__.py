"""Optimizers: ``opt = MomentumSGD(learnRate=0.1); opt.setupOn(net); ...; opt.update()``."""

from batchnorm_lib.optimizers.adam import Adam
from batchnorm_lib.optimizers.optimizer import Optimizer, OptimizerError
from batchnorm_lib.optimizers.sgd import SGD, MomentumSGD

__all__ = ["Optimizer", "OptimizerError", "SGD", "MomentumSGD", "Adam"]
