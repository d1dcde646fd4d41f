"""Modules: ``from batchnorm_lib.modules import BatchNorm2D``."""

from batchnorm_lib.modules.batchnorm import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D,
                                             BatchNormND)
from batchnorm_lib.modules.module import Module, ModuleError
from batchnorm_lib.modules.norm import GroupNorm, InstanceNorm2D, LayerNorm
from batchnorm_lib.modules.activation import (Activation, ActivationType, clip, elu, leakyRelu,
                                              relu, sigmoid, softPlus, tanh)
from batchnorm_lib.modules.cast import Cast
from batchnorm_lib.modules.linear import Linear
from batchnorm_lib.modules.sequential import Sequential

__all__ = ["Module", "ModuleError", "BatchNormND", "BatchNorm", "BatchNorm1D", "BatchNorm2D",
           "BatchNorm3D", "Linear", "Activation", "ActivationType", "relu", "sigmoid", "tanh",
           "leakyRelu", "elu", "softPlus", "clip", "Cast", "Sequential", "InstanceNorm2D",
           "LayerNorm", "GroupNorm"]
