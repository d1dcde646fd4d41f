"""Modules: ``from batchnorm_lib.modules import BatchNorm2D``."""

from batchnorm_lib.modules.batchnorm import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D,
                                             BatchNormND)
from batchnorm_lib.modules.module import Module, ModuleError

__all__ = ["Module", "ModuleError", "BatchNormND", "BatchNorm", "BatchNorm1D", "BatchNorm2D",
           "BatchNorm3D"]
