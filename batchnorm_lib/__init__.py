"""batchnorm_lib: PuzzleLib-style batch normalization on the GPU (CUDA) and the CPU."""

__version__ = "0.1.0"

from batchnorm_lib.modules import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D,  # noqa: E402
                                   BatchNormND, Module, ModuleError)
from batchnorm_lib.modules import GroupNorm, InstanceNorm2D, LayerNorm  # noqa: E402
from batchnorm_lib.variable import Variable  # noqa: E402

__all__ = ["BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "BatchNormND", "Module",
           "ModuleError", "Variable", "__version__",
           "InstanceNorm2D", "LayerNorm", "GroupNorm"]
