"""Batch normalization: BatchNormND carries all state and logic; the other classes only say which
data shapes they accept."""

import math

import numpy as np

from batchnorm_lib import kernels
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules.module import ModuleError, check_finite
from batchnorm_lib.modules.normalization import Normalization, check_grad_dtype, positive_int


LAYOUTS = ("channels_first", "channels_last")
ACTIVATIONS = (None, "relu")


class BatchNormND(Normalization):
    """Batch normalization over every axis but axis 1 of (N, C, *spatial) data with ``nd`` spatial
    axes. Parameters and statistics have shape (1, C, 1, 1) for nd <= 2 and (1, C) + (1,) * nd above.
    ``layout="channels_last"`` takes (N, *spatial, C) data instead; nothing else depends on it.
    ``activation="relu"`` applies relu to the output in the same pass (and masks the gradient by
    the output in the same backward pass): ``relu(batchnorm(x))`` without a second module.
    """

    axes = None  # what subclasses call the axes (channels first), for error messages
    hdfVars = ("scale", "bias")  # variables in PuzzleLib even when affine=False

    def __init__(self, nd, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01,
                 affine=True, name=None, empty=False, inplace=False, layout="channels_first",
                 comm=None, activation=None):
        super().__init__(name)
        if layout not in LAYOUTS:
            raise ModuleError("%s: layout must be one of %s, got %r"
                              % (self, ", ".join(map(repr, LAYOUTS)), layout))
        if not (activation is None or isinstance(activation, str) and activation in ACTIVATIONS):
            raise ModuleError("%s: activation must be one of %s, got %r"
                              % (self, ", ".join(map(repr, ACTIVATIONS)), activation))
        self.layout = layout
        self.activation = activation
        self.nd = positive_int(self, "nd", nd, low=0)
        self.maps = positive_int(self, "maps", maps)
        self.epsilon = check_finite(self, "epsilon", epsilon, low=0.0)
        self.initFactor = check_finite(self, "initFactor", initFactor, low=0.0, high=1.0)
        self.minFactor = check_finite(self, "minFactor", minFactor, low=0.0, high=1.0)
        sscale = check_finite(self, "sscale", sscale, low=0.0)
        self.affine = bool(affine)
        self.inplace = bool(inplace)
        self.numOfProps = 0

        self.scale = self.bias = self.mean = self.var = None
        self.savemean = self.saveinvvar = None
        self.scalegrad = self.biasgrad = None
        self._fwdTrain = None
        self.comm = None
        self._synced = None  # merged statistics of this training pass (with comm)
        self.syncedCount = None  # values per channel in the whole batch of the last synced pass
        self.shardMean = None  # this rank's own batch mean in that pass (float64)
        if comm is not None:
            from batchnorm_lib import distributed

            self.comm = distributed.check_comm(self, comm)

        if empty:
            return

        shape = self.paramShape
        scale = np.random.normal(1.0, sscale if affine else 0.0, shape).astype(np.float32)
        self.initAffine(affine, scale, np.zeros(shape, dtype=np.float32))
        self.setAttr("mean", gpuarray.zeros(shape, dtype=np.float32))
        self.setAttr("var", gpuarray.to_gpu(np.ones(shape, dtype=np.float32)))

    @property
    def paramShape(self):
        return (1, self.maps) + (1,) * max(self.nd, 2)

    # -- checks ----------------------------------------------------------------------------------
    @property
    def rowsLayout(self):
        """Whether the data is rows x channels (channels on the last axis): (N, C) data, or any
        channels-last layout."""
        return self.nd == 0 or self.layout == "channels_last"

    def axesName(self):
        """The expected data axes: '(N, C, H, W)', '(N, H, W, C), layout='channels_last'', ..."""
        axes = self.axes or "(N, C%s)" % "".join(", S%d" % i for i in range(self.nd))
        if self.layout == "channels_last":
            names = axes.strip("()").split(", ")
            axes = "(%s), layout=%r" % (", ".join([names[0]] + names[2:] + names[1:2]), self.layout)
        return axes

    def checkDataShape(self, shape):
        ndim = self.nd + 2
        if len(shape) != ndim:
            raise ModuleError("%s: expects %d-D data %s, got shape %s"
                              % (self, ndim, self.axesName(), tuple(shape)))
        axis = -1 if self.rowsLayout else 1
        if shape[axis] != self.maps:
            raise ModuleError("%s: expects %d channels on axis %d%s, got shape %s"
                              % (self, self.maps, axis % ndim, " (%s)" % self.axesName()
                                 if self.layout == "channels_last" else "", tuple(shape)))
        if self.scale is None:
            raise ModuleError("%s: parameters are not initialized (built with empty=True); "
                              "load() them first" % self)
        if self.train:
            if self.inplace:
                raise ModuleError("%s: inplace=True is allowed only in evaluation mode" % self)
            if self.comm is not None and self.calctype != np.float32:
                raise ModuleError("%s: synchronized training (comm) runs in float32, not %s"
                                  % (self, self.calctype))
            # an empty batch (a zero-length axis) is allowed: it has no statistics to take; with
            # comm, the count that matters is the whole batch's (checked once it is known)
            if self.comm is None and math.prod(shape) // self.maps == 1:
                raise ModuleError("%s: training needs more than one value per channel, got shape %s"
                                  % (self, tuple(shape)))

    @property
    def relu(self):
        """Whether relu is fused into this module's passes."""
        return self.activation == "relu"

    @property
    def reluOutput(self):
        """The forward's output, which masks the gradient when relu is fused (else None)."""
        return self.data if self.relu else None

    # -- forward ---------------------------------------------------------------------------------
    def _op(self, name):
        """The kernel ``name`` for this module's layout: the rows x channels family for (N, C) and
        channels-last data."""
        return getattr(kernels.norm.ops(), ("rows_" if self.rowsLayout else "") + name)

    def __call__(self, data):
        if self.comm is None or not self.train:
            return super().__call__(data)
        from batchnorm_lib.distributed import sync_forward_statistics

        if gpuarray.is_array(data):  # the statistics exchange reads the data too: no views
            data = self._contiguous(data, "data")
        # every rank checks its shard, then all exchange partials (or a refusal) in one collective
        self._synced = sync_forward_statistics(self, data)
        try:
            return super().__call__(data)
        finally:
            self._synced = None

    def updateData(self, data):
        if self._synced is not None:
            return self._syncedForward(data)
        self.syncedCount = None
        if data.size == 0:
            # nothing to normalize and no statistics: no kernel runs, running statistics and
            # numOfProps stay; the backward gives an empty dx and zero parameter gradients
            self._fwdTrain = self.train
            return data if self.inplace and not self.train else gpuarray.empty(data.shape,
                                                                                data.dtype)
        if self.train:
            factor = max(self.initFactor / (self.numOfProps + 1), self.minFactor)
            out = gpuarray.empty(data.shape, data.dtype)
            savemean = gpuarray.empty(self.paramShape, np.float32)
            saveinvvar = gpuarray.empty(self.paramShape, np.float32)
            self._op("forward_train")(data, self.scale, self.bias, self.mean, self.var,
                                      self.epsilon, factor, out, savemean, saveinvvar,
                                      relu=self.relu)
            self.numOfProps += 1
            self.savemean, self.saveinvvar = savemean, saveinvvar
            self._fwdTrain = True
        else:
            out = data if self.inplace else gpuarray.empty(data.shape, data.dtype)
            self._op("forward_infer")(data, self.scale, self.bias, self.mean, self.var,
                                      self.epsilon, out, relu=self.relu)
            self._fwdTrain = False
        return out

    def _syncedForward(self, data):
        """Training forward with the whole batch's statistics (``self._synced``)."""
        count, mean, m2, shardMean = self._synced
        var = m2 / count
        factor = max(self.initFactor / (self.numOfProps + 1), self.minFactor)
        shape = self.paramShape
        savemean = gpuarray.to_gpu(mean.astype(np.float32).reshape(shape))
        batchvar = gpuarray.to_gpu(var.astype(np.float32).reshape(shape))
        saveinvvar = gpuarray.to_gpu((1.0 / np.sqrt(var + self.epsilon)).astype(np.float32)
                                     .reshape(shape))
        out = gpuarray.empty(data.shape, data.dtype)
        if data.size:
            self._op("forward_infer")(data, self.scale, self.bias, savemean, batchvar,
                                      self.epsilon, out, relu=self.relu)
        runmean = self.mean.get().astype(np.float64).reshape(shape)
        runvar = self.var.get().astype(np.float64).reshape(shape)
        self.mean.set(((1 - factor) * runmean + factor * mean.reshape(shape)).astype(np.float32))
        self.var.set(((1 - factor) * runvar + factor * (m2 / (count - 1)).reshape(shape))
                     .astype(np.float32))
        self.numOfProps += 1
        self.savemean, self.saveinvvar = savemean, saveinvvar
        self._fwdTrain = True
        self.syncedCount, self.shardMean = count, shardMean
        return out

    # -- backward --------------------------------------------------------------------------------
    def updateGrad(self, grad):
        dx = gpuarray.empty(grad.shape, grad.dtype)
        if grad.size == 0:
            if self._fwdTrain:
                self.paramGrads(grad)
        elif self._fwdTrain:
            self.paramGrads(grad, dx)
        else:
            self._op("backward_infer")(grad, self.scale, self.var, self.epsilon, dx,
                                       y=self.reluOutput)
        return dx

    def paramGrads(self, grad, dx=None):
        if self.syncedCount is not None:
            from batchnorm_lib.distributed import sync_backward

            sync_backward(self, grad, dx)
            return
        if grad.size == 0:  # an empty batch contributes nothing
            self.scalegrad = gpuarray.zeros(self.paramShape, np.float32)
            self.biasgrad = gpuarray.zeros(self.paramShape, np.float32)
            return
        dscale = gpuarray.empty(self.paramShape, np.float32)
        dbias = gpuarray.empty(self.paramShape, np.float32)
        self._op("backward_train")(self.inData, grad, self.scale, self.savemean, self.saveinvvar,
                                   dx, dscale, dbias, y=self.reluOutput)
        self.scalegrad, self.biasgrad = dscale, dbias

    def hasParamGrads(self):
        return self.affine and bool(self._fwdTrain)

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        if self.syncedCount is not None and (updGrad or (updParamGrads and self.affine)):
            # the other ranks are about to exchange sums: a refusal here must reach them
            try:
                check_grad_dtype(self, grad)
                self._checkArray(grad, "grad")
                self.checkGradShape(grad.shape)
                check_finite(self, "scale", scale)
                check_finite(self, "momentum", momentum)
            except ModuleError as e:
                from batchnorm_lib.distributed import refuse_everywhere

                refuse_everywhere(self, "the backward", e)
        return super().backward(grad, updParamGrads, updGrad, scale, momentum)

    # -- modes and state -------------------------------------------------------------------------
    def reset(self):
        super().reset()
        self._fwdTrain = None
        self.syncedCount = self.shardMean = None

    def stateSpec(self):
        shape, f32 = self.paramShape, np.dtype(np.float32)
        kind = "vars" if self.affine else "attrs"
        return {kind + ".scale": (shape, f32), kind + ".bias": (shape, f32),
                "attrs.mean": (shape, f32), "attrs.var": (shape, f32)}

    def checkState(self, staged, path):
        # without affine, scale and bias are the identity; other values belong to an affine model
        if not self.affine and not (np.all(staged["attrs.scale"] == 1)
                                    and np.all(staged["attrs.bias"] == 0)):
            raise ModuleError("%s: %s holds a trained scale/bias, which affine=False cannot take"
                              % (self, path))

    def saveMeta(self):
        return {"numOfProps": self.numOfProps}

    def loadMeta(self, meta, check):
        if "numOfProps" not in meta:
            return
        value = meta["numOfProps"]
        if check:
            if value.shape != () or value.dtype.kind not in "iu" or int(value) < 0:
                raise ModuleError("%s: meta.numOfProps must be a non-negative integer" % self)
        else:
            self.numOfProps = int(value)


class BatchNorm(BatchNormND):
    """Batch normalization of (batchsize, size) data, e.g. after a fully connected layer."""

    axes = "(N, size)"

    def __init__(self, size, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False, inplace=False, layout="channels_first", comm=None,
                 activation=None):
        super().__init__(0, size, epsilon, initFactor, minFactor, sscale, affine, name, empty,
                         inplace, layout=layout, comm=comm, activation=activation)


class BatchNorm1D(BatchNormND):
    """Batch normalization of (N, C, L) sequences."""

    axes = "(N, C, L)"

    def __init__(self, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False, inplace=False, layout="channels_first", comm=None,
                 activation=None):
        super().__init__(1, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty,
                         inplace, layout=layout, comm=comm, activation=activation)


class BatchNorm2D(BatchNormND):
    """Batch normalization of (N, C, H, W) images."""

    axes = "(N, C, H, W)"

    def __init__(self, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False, inplace=False, layout="channels_first", comm=None,
                 activation=None):
        super().__init__(2, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty,
                         inplace, layout=layout, comm=comm, activation=activation)


class BatchNorm3D(BatchNormND):
    """Batch normalization of (N, C, D, H, W) volumes."""

    axes = "(N, C, D, H, W)"

    def __init__(self, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False, inplace=False, layout="channels_first", comm=None,
                 activation=None):
        super().__init__(3, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty,
                         inplace, layout=layout, comm=comm, activation=activation)
