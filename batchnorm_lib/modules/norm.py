"""Normalization with per-sample statistics: InstanceNorm2D, LayerNorm, GroupNorm.

All three are one computation, the engine's row pattern: the data is read as rows of contiguous
values (a sample's group, channel or trailing axes), each row is normalized by its own mean and
biased variance, then a per-channel affine applies. RowNorm carries the state and the logic; the
subclasses only say which shapes they accept and how a shape splits into rows, groups and
positions. There are no running statistics: training and evaluation compute the same thing.
"""

import numbers

import numpy as np

from batchnorm_lib import kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import Module, ModuleError, check_finite
from batchnorm_lib.modules.normalization import Normalization, positive_int


def _prod(shape):
    p = 1
    for d in shape:
        p *= int(d)
    return p


class RowNorm(Normalization):
    """Statistics per row, then a per-channel affine. Subclasses set ``paramShape`` and implement
    ``checkDataShape`` and ``rowPlan``."""

    paramShape = None

    def _initParams(self, epsilon, affine):
        """Called by subclasses once ``Module.__init__`` ran and ``paramShape`` is known."""
        self.epsilon = check_finite(self, "epsilon", epsilon, low=0.0)
        self.initAffine(affine, np.ones(self.paramShape, dtype=np.float32),
                        np.zeros(self.paramShape, dtype=np.float32))

    def rowPlan(self, shape):
        """``(rows, groups, spatial)`` of data of ``shape`` (see kernels.norm, pattern (a))."""
        raise NotImplementedError

    def _checkNotEmpty(self, shape):
        if any(s == 0 for s in shape):
            raise ModuleError("%s: data has no elements, shape %s" % (self, tuple(shape)))

    # -- forward and backward --------------------------------------------------------------------
    def updateData(self, data):
        rows, groups, spatial = self.rowPlan(data.shape)
        out = gpuarray.empty(data.shape, data.dtype)
        savemean = gpuarray.empty((rows,), np.float32)
        saveinvvar = gpuarray.empty((rows,), np.float32)
        kernels.norm.ops().per_row_forward(data, self.scale, self.bias, groups, spatial,
                                           self.epsilon, out, savemean, saveinvvar)
        self.savemean, self.saveinvvar = savemean, saveinvvar
        return out

    def updateGrad(self, grad):
        dx = gpuarray.empty(grad.shape, grad.dtype)
        self.paramGrads(grad, dx)
        return dx

    def paramGrads(self, grad, dx=None):
        rows, groups, spatial = self.rowPlan(grad.shape)
        dscale = gpuarray.empty(self.paramShape, np.float32)
        dbias = gpuarray.empty(self.paramShape, np.float32)
        kernels.norm.ops().per_row_backward(self.inData, grad, self.scale, self.savemean,
                                            self.saveinvvar, groups, spatial, dx, dscale, dbias)
        self.scalegrad, self.biasgrad = dscale, dbias


class InstanceNorm2D(RowNorm):
    """Instance normalization of (N, C, H, W) images: statistics per (sample, channel) over H x W,
    per-channel scale and bias of shape (1, C, 1, 1)."""

    def __init__(self, maps, epsilon=1e-5, affine=True, name=None):
        Module.__init__(self, name)
        self.maps = positive_int(self, "maps", maps)
        self.paramShape = (1, self.maps, 1, 1)
        self._initParams(epsilon, affine)

    def checkDataShape(self, shape):
        if len(shape) != 4:
            raise ModuleError("%s: expects 4-D data (N, C, H, W), got shape %s"
                              % (self, tuple(shape)))
        if shape[1] != self.maps:
            raise ModuleError("%s: expects %d channels on axis 1, got shape %s"
                              % (self, self.maps, tuple(shape)))
        self._checkNotEmpty(shape)
        if shape[2] * shape[3] < 2:
            raise ModuleError("%s: needs more than one value per (sample, channel), got shape %s"
                              % (self, tuple(shape)))

    def rowPlan(self, shape):
        return shape[0] * shape[1], shape[1], shape[2] * shape[3]


class LayerNorm(RowNorm):
    """Layer normalization over the trailing axes named by ``shape`` (an int or a tuple), as
    ``torch.nn.LayerNorm(shape, eps, elementwise_affine)``; scale and bias have exactly ``shape``.
    """

    def __init__(self, shape, epsilon=1e-5, affine=True, name=None):
        Module.__init__(self, name)
        dims = (shape,) if isinstance(shape, numbers.Integral) else shape
        try:
            dims = tuple(dims)
        except TypeError:
            raise ModuleError("%s: shape must be an int or a tuple of ints, got %r"
                              % (self, shape)) from None
        if not dims:
            raise ModuleError("%s: shape must name at least one axis" % self)
        self.shape = tuple(positive_int(self, "shape", d) for d in dims)
        self.paramShape = self.shape
        self._initParams(epsilon, affine)

    def checkDataShape(self, shape):
        k = len(self.shape)
        if len(shape) < k + 1 or tuple(shape[-k:]) != self.shape:
            raise ModuleError("%s: expects data of shape (N, ...) + %s with at least one leading "
                              "axis, got shape %s" % (self, self.shape, tuple(shape)))
        self._checkNotEmpty(shape)

    def rowPlan(self, shape):
        return _prod(shape[:-len(self.shape)]), 1, 1


class GroupNorm(RowNorm):
    """Group normalization of (N, C, *spatial) data, as ``torch.nn.GroupNorm(groups, maps, eps,
    affine)``: statistics per (sample, group of C / groups channels), per-channel scale and bias
    of shape (1, C, 1, 1)."""

    def __init__(self, groups, maps, epsilon=1e-5, affine=True, name=None):
        Module.__init__(self, name)
        self.groups = positive_int(self, "groups", groups)
        self.maps = positive_int(self, "maps", maps)
        if self.maps % self.groups != 0:
            raise ModuleError("%s: maps (%d) must be divisible by groups (%d)"
                              % (self, self.maps, self.groups))
        self.paramShape = (1, self.maps, 1, 1)
        self._initParams(epsilon, affine)

    def checkDataShape(self, shape):
        if len(shape) < 2:
            raise ModuleError("%s: expects data (N, C, *spatial), got shape %s"
                              % (self, tuple(shape)))
        if shape[1] != self.maps:
            raise ModuleError("%s: expects %d channels on axis 1, got shape %s"
                              % (self, self.maps, tuple(shape)))
        self._checkNotEmpty(shape)

    def rowPlan(self, shape):
        return shape[0] * self.groups, self.groups, _prod(shape[2:])
