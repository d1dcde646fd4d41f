"""Conversion to and from PyTorch: ``from_torch(torch_module)`` and ``to_torch(module)``.

Parameters, running statistics, ``eps``, the momentum schedule and the train/eval mode carry over,
so both sides give the same outputs and running statistics, also over further training steps.
PyTorch's ``momentum=m`` is ``initFactor = minFactor = m`` here; its cumulative average
(``momentum=None``) is ``initFactor=1, minFactor=0``; ``num_batches_tracked`` is ``numOfProps``.

torch is imported only by these functions (``pip install batchnorm_lib[torch]``): importing
batchnorm_lib never imports it.
"""

import importlib

import numpy as np

from batchnorm_lib import modules
from batchnorm_lib.backend import gpuarray

BN_KINDS = {"BatchNorm1d": None, "BatchNorm2d": "BatchNorm2D", "BatchNorm3d": "BatchNorm3D"}
ACTIVATIONS = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
TORCH_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm2d", "LayerNorm",
               "GroupNorm", "Linear", "ReLU", "Sigmoid", "Tanh", "Sequential")
OUR_TYPES = ("BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "BatchNormND (nd <= 3)",
             "InstanceNorm2D",
             "LayerNorm", "GroupNorm", "Linear", "Activation (relu, sigmoid, tanh)", "Sequential")


def _nn():
    try:
        import torch
    except ImportError:
        raise ImportError("batchnorm_lib.interop needs PyTorch: pip install "
                          "'batchnorm_lib[torch]'") from None
    return torch, torch.nn


def _family(name):
    """A module class that may not exist in this version (the per-sample norms), or None."""
    cls = getattr(modules, name, None)
    if cls is None:
        try:
            cls = getattr(importlib.import_module("batchnorm_lib.modules.norm"), name, None)
        except ImportError:
            return None
    return cls


def _host(tensor, shape=None):
    a = tensor.detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(a if shape is None else a.reshape(shape))


def _unsupported(obj, supported, why=""):
    return ValueError("cannot convert %s%s; supported: %s"
                      % (type(obj).__name__, why, ", ".join(supported)))


# -- PyTorch -> batchnorm_lib ----------------------------------------------------------------------
def from_torch(module, bn1d="NC"):
    """The batchnorm_lib equivalent of the torch.nn ``module`` (a copy: the two do not share memory).

    ``torch.nn.BatchNorm1d`` becomes ``BatchNorm`` ((N, C) data, as after a Linear) with
    ``bn1d="NC"`` (the default) or ``BatchNorm1D`` ((N, C, L) data) with ``bn1d="NCL"``.
    Other types raise ValueError naming the type and the supported ones.
    """
    if bn1d not in ("NC", "NCL"):
        raise ValueError("bn1d must be 'NC' or 'NCL', got %r" % (bn1d,))
    torch, nn = _nn()
    kind = type(module).__name__
    if not isinstance(module, nn.Module) or kind not in TORCH_TYPES:
        raise _unsupported(module, TORCH_TYPES)
    if kind == "Sequential":
        out = modules.Sequential([from_torch(child, bn1d) for child in module])
        out.train = bool(module.training)  # each child already has its own mode
        return out
    if kind in ACTIVATIONS:
        out = modules.Activation(ACTIVATIONS[kind])
    elif kind == "Linear":
        out = modules.Linear(module.in_features, module.out_features,
                             useBias=module.bias is not None, empty=True)
        out.setVar("W", _variable(_host(module.weight).T))
        if module.bias is not None:
            out.setVar("b", _variable(_host(module.bias)))
    elif kind in BN_KINDS:
        out = _batchnorm_from_torch(module, kind, bn1d)
    else:
        out = _rownorm_from_torch(module, kind)
    (out.trainMode if module.training else out.evalMode)()
    return out


def _variable(array):
    from batchnorm_lib.variable import Variable

    return Variable(gpuarray.to_gpu(np.ascontiguousarray(array, dtype=np.float32)))


def _batchnorm_from_torch(m, kind, bn1d):
    if not m.track_running_stats or m.running_mean is None:
        raise _unsupported(m, TORCH_TYPES, " with track_running_stats=False (batch statistics in "
                                           "evaluation too)")
    if m.affine and m.bias is None:
        raise _unsupported(m, TORCH_TYPES, " with bias=False")
    name = BN_KINDS[kind] or ("BatchNorm1D" if bn1d == "NCL" else "BatchNorm")
    if m.momentum is None:
        initFactor, minFactor = 1.0, 0.0
    else:
        initFactor = minFactor = float(m.momentum)
    bn = getattr(modules, name)(m.num_features, epsilon=m.eps, initFactor=initFactor,
                                minFactor=minFactor, affine=m.affine)
    shape = bn.paramShape
    if m.affine:
        bn.scale.set(_host(m.weight, shape))
        bn.bias.set(_host(m.bias, shape))
    bn.mean.set(_host(m.running_mean, shape))
    bn.var.set(_host(m.running_var, shape))
    bn.numOfProps = int(m.num_batches_tracked)
    return bn


def _rownorm_from_torch(m, kind):
    name = {"InstanceNorm2d": "InstanceNorm2D"}.get(kind, kind)
    cls = _family(name)
    if cls is None:
        raise _unsupported(m, [t for t in TORCH_TYPES if t != kind],
                           " (this version has no %s)" % name)
    if kind == "InstanceNorm2d":
        if m.track_running_stats:
            raise _unsupported(m, TORCH_TYPES, " with track_running_stats=True")
        out, affine = cls(m.num_features, epsilon=m.eps, affine=m.affine), m.affine
    elif kind == "LayerNorm":
        affine = m.elementwise_affine
        out = cls(tuple(m.normalized_shape), epsilon=m.eps, affine=affine)
    else:
        out, affine = cls(m.num_groups, m.num_channels, epsilon=m.eps, affine=m.affine), m.affine
    if affine and m.bias is None:
        raise _unsupported(m, TORCH_TYPES, " with bias=False")
    if affine:
        out.scale.set(_host(m.weight, out.scale.shape))
        out.bias.set(_host(m.bias, out.bias.shape))
    return out


# -- batchnorm_lib -> PyTorch ----------------------------------------------------------------------
def to_torch(module):
    """The torch.nn equivalent of ``module`` (float32 on the CPU; a copy). Types without one, and
    a factor schedule PyTorch cannot express, raise ValueError. A batch norm with
    ``activation="relu"`` becomes ``Sequential(BatchNorm*d, ReLU)``."""
    torch, nn = _nn()
    kind = type(module).__name__
    if kind == "Sequential":
        out = nn.Sequential(*[to_torch(child) for child in module])
        out.training = bool(module.train)  # each child already has its own mode
        return out
    elif kind == "Activation":
        out = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[module.activation]()
    elif kind == "Linear":
        out = nn.Linear(module.insize, module.outsize, bias=module.useBias)
        with torch.no_grad():
            out.weight.copy_(torch.from_numpy(module.W.get().T.copy()))
            if module.useBias:
                out.bias.copy_(torch.from_numpy(module.b.get()))
    elif isinstance(module, modules.BatchNormND) and module.nd <= 3:
        out = _batchnorm_to_torch(module, torch, nn)
    elif kind in ("InstanceNorm2D", "LayerNorm", "GroupNorm") and _family(kind) is not None:
        out = _rownorm_to_torch(module, kind, torch, nn)
    else:
        raise _unsupported(module, OUR_TYPES)
    out.train(bool(module.train))
    return out


def _momentum(bn):
    if bn.initFactor == bn.minFactor:
        return bn.initFactor
    if bn.initFactor == 1.0 and bn.minFactor == 0.0:
        return None
    raise ValueError("cannot convert %s: PyTorch has no factor schedule initFactor=%g, "
                     "minFactor=%g (only initFactor == minFactor, or 1 and 0)"
                     % (bn, bn.initFactor, bn.minFactor))


def _batchnorm_to_torch(bn, torch, nn):
    # (N, C) and (N, C, L) data are both BatchNorm1d's
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[bn.nd]
    out = cls(bn.maps, eps=bn.epsilon, momentum=_momentum(bn), affine=bn.affine)
    with torch.no_grad():
        if bn.affine:
            out.weight.copy_(torch.from_numpy(bn.scale.get().ravel()))
            out.bias.copy_(torch.from_numpy(bn.bias.get().ravel()))
        out.running_mean.copy_(torch.from_numpy(bn.mean.get().ravel()))
        out.running_var.copy_(torch.from_numpy(bn.var.get().ravel()))
        out.num_batches_tracked.fill_(int(bn.numOfProps))
    if bn.activation == "relu":  # PyTorch has no fused module: the same computation, in two
        out = nn.Sequential(out, nn.ReLU())
    return out


def _rownorm_to_torch(m, kind, torch, nn):
    if kind == "InstanceNorm2D":
        out = nn.InstanceNorm2d(m.maps, eps=m.epsilon, affine=m.affine)
    elif kind == "LayerNorm":
        out = nn.LayerNorm(m.shape, eps=m.epsilon, elementwise_affine=m.affine)
    else:
        out = nn.GroupNorm(m.groups, m.maps, eps=m.epsilon, affine=m.affine)
    if m.affine:
        with torch.no_grad():
            out.weight.copy_(torch.from_numpy(m.scale.get().reshape(out.weight.shape)))
            out.bias.copy_(torch.from_numpy(m.bias.get().reshape(out.bias.shape)))
    return out
