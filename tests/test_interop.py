"""Conversion to and from PyTorch: after conversion both sides agree in evaluation and keep
agreeing (outputs, input gradients, parameters, running statistics, counters) over further
training steps; refused conversions leave the source module as it was."""

import subprocess
import sys

import numpy as np
import pytest

from batchnorm_lib import BatchNorm, BatchNorm2D, BatchNormND, interop
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules import Activation, Linear, Sequential, relu

torch = pytest.importorskip("torch")
nn = torch.nn


def family(name):
    cls = interop._family(name)
    if cls is None:
        pytest.skip("%s is not part of this version" % name)
    return cls


# (label, torch module factory, data shape, from_torch keywords)
CASES = [
    ("bn1d-NC", lambda: nn.BatchNorm1d(5), (9, 5), {}),
    ("bn1d-NCL-cumulative", lambda: nn.BatchNorm1d(5, momentum=None), (3, 5, 7), {"bn1d": "NCL"}),
    ("bn2d", lambda: nn.BatchNorm2d(4, eps=1e-3, momentum=0.3), (3, 4, 5, 3), {}),
    ("bn3d-noaffine", lambda: nn.BatchNorm3d(3, affine=False), (2, 3, 3, 4, 5), {}),
    ("instancenorm2d", lambda: nn.InstanceNorm2d(4, affine=True), (3, 4, 5, 3), {}),
    ("layernorm", lambda: nn.LayerNorm((5, 3), eps=1e-4), (3, 4, 5, 3), {}),
    ("groupnorm", lambda: nn.GroupNorm(2, 6), (3, 6, 5), {}),
    ("linear", lambda: nn.Linear(7, 4), (9, 7), {}),
    ("linear-nobias", lambda: nn.Linear(7, 4, bias=False), (9, 7), {}),
    ("relu", lambda: nn.ReLU(), (9, 6), {}),
    ("sigmoid", lambda: nn.Sigmoid(), (9, 6), {}),
    ("tanh", lambda: nn.Tanh(), (9, 6), {}),
    ("sequential", lambda: nn.Sequential(nn.Linear(7, 6), nn.BatchNorm1d(6), nn.ReLU(),
                                         nn.Linear(6, 3), nn.Tanh()), (11, 7), {}),
]
FAMILY = {"instancenorm2d": "InstanceNorm2D", "layernorm": "LayerNorm", "groupnorm": "GroupNorm"}


def randomize_torch(m, rng):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(p.shape)).astype(np.float32)))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.from_numpy(rng.normal(0, 1, tuple(b.shape)).astype(np.float32)))
            elif name.endswith("running_var"):
                b.copy_(torch.from_numpy(rng.uniform(0.5, 2, tuple(b.shape)).astype(np.float32)))
            elif name.endswith("num_batches_tracked"):
                b.fill_(3)


def leaves(module):
    return list(module) if isinstance(module, Sequential) else [module]


def randomize_ours(module, rng):
    for mod in leaves(module):
        for var in mod.vars.values():
            var.data.set(rng.uniform(0.5, 1.5, var.data.shape).astype(np.float32))
        if isinstance(mod, BatchNormND):
            mod.mean.set(rng.normal(0, 1, mod.mean.shape).astype(np.float32))
            mod.var.set(rng.uniform(0.5, 2, mod.var.shape).astype(np.float32))
            mod.numOfProps = 3


def torch_state(m):
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def our_state(module):
    out = {}
    for i, mod in enumerate(leaves(module)):
        for k, v in mod.vars.items():
            out["%d.%s" % (i, k)] = v.data.get().ravel()
        for k in ("mean", "var"):
            if isinstance(mod, BatchNormND):
                out["%d.%s" % (i, k)] = getattr(mod, k).get().ravel()
        if isinstance(mod, BatchNormND):
            out["%d.numOfProps" % i] = mod.numOfProps
    return out


def torch_as_ours(m):
    """The torch module's state under our keys: weight -> scale or W (transposed), ..."""
    out = {}
    children = list(m) if isinstance(m, nn.Sequential) else [m]
    for i, c in enumerate(children):
        sd = torch_state(c)
        if isinstance(c, nn.Linear):
            out["%d.W" % i] = sd["weight"].T.ravel()
            if "bias" in sd:
                out["%d.b" % i] = sd["bias"]
            continue
        if "weight" in sd:
            out["%d.scale" % i] = sd["weight"].ravel()
            out["%d.bias" % i] = sd["bias"].ravel()
        if "running_mean" in sd:
            out["%d.mean" % i] = sd["running_mean"]
            out["%d.var" % i] = sd["running_var"]
            out["%d.numOfProps" % i] = int(sd["num_batches_tracked"])
    return out


def assert_agree(ours, theirs, rtol=2e-4, atol=2e-5):
    a, b = our_state(ours), torch_as_ours(theirs)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], np.float64).ravel(),
                                   np.asarray(b[k], np.float64).ravel(), rtol=rtol, atol=atol,
                                   err_msg=k)


def run_both(ours, theirs, shape, rng, steps=3, lr=0.05):
    """Evaluation output, then ``steps`` training steps (forward, backward, step with the same
    learning rate on both), then evaluation again; everything compared on the way."""
    def compare_eval():
        ours.evalMode()
        theirs.eval()
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ours(gpuarray.to_gpu(x)).get(),
                                   theirs(torch.from_numpy(x)).detach().numpy(),
                                   rtol=2e-4, atol=2e-5)

    compare_eval()
    ours.trainMode()
    theirs.train()
    for _ in range(steps):
        x = (1 + 2 * rng.standard_normal(shape)).astype(np.float32)
        y = ours(gpuarray.to_gpu(x)).get()
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = ours.backward(gpuarray.to_gpu(dy)).get()
        ours.updateParams(lr)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        with torch.no_grad():
            for p in theirs.parameters():
                p.add_(lr * p.grad)
                p.grad = None
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-3, atol=2e-4)
        assert_agree(ours, theirs)
    compare_eval()


@pytest.mark.parametrize("label,factory,shape,kw", CASES, ids=[c[0] for c in CASES])
def test_from_torch(backend, label, factory, shape, kw):
    if label in FAMILY:
        family(FAMILY[label])
    rng = np.random.default_rng(11)
    theirs = factory()
    randomize_torch(theirs, rng)
    theirs.eval()
    ours = interop.from_torch(theirs, **kw)
    assert not ours.train
    assert_agree(ours, theirs, rtol=0, atol=0)
    run_both(ours, theirs, shape, rng)


@pytest.mark.parametrize("label,factory,shape,kw", CASES, ids=[c[0] for c in CASES])
def test_to_torch(backend, label, factory, shape, kw):
    """Our module (built through from_torch of a fresh one, then given random state of its
    own) goes out; the torch side starts from what to_torch made."""
    if label in FAMILY:
        family(FAMILY[label])
    rng = np.random.default_rng(12)
    ours = interop.from_torch(factory(), **kw)
    randomize_ours(ours, rng)
    theirs = interop.to_torch(ours)
    assert theirs.training == ours.train
    assert_agree(ours, theirs, rtol=0, atol=0)
    run_both(ours, theirs, shape, rng)


def test_hyperparameters_carry_over():
    bn = interop.from_torch(nn.BatchNorm2d(3, eps=1e-3, momentum=0.25))
    assert (bn.epsilon, bn.initFactor, bn.minFactor) == (1e-3, 0.25, 0.25)
    bn = interop.from_torch(nn.BatchNorm1d(3, momentum=None))
    assert type(bn) is BatchNorm and (bn.initFactor, bn.minFactor) == (1.0, 0.0)
    assert type(interop.from_torch(nn.BatchNorm1d(3), bn1d="NCL")).__name__ == "BatchNorm1D"
    back = interop.to_torch(BatchNorm2D(4, epsilon=1e-4, initFactor=1.0, minFactor=0.0))
    assert isinstance(back, nn.BatchNorm2d) and back.momentum is None and back.eps == 1e-4
    assert interop.to_torch(BatchNorm(4, initFactor=0.2, minFactor=0.2)).momentum == 0.2
    assert interop.from_torch(nn.ReLU().eval()).train is False


def test_refusals_leave_modules_unchanged():
    rng = np.random.default_rng(13)
    seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Conv2d(1, 1, 3))
    randomize_torch(seq, rng)
    before = torch_state(seq)
    with pytest.raises(ValueError, match="cannot convert Conv2d; supported: BatchNorm1d"):
        interop.from_torch(seq)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        interop.from_torch(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="bn1d"):
        interop.from_torch(nn.BatchNorm1d(3), bn1d="NLC")
    with pytest.raises(ValueError, match="cannot convert str"):
        interop.from_torch("BatchNorm2d")
    after = torch_state(seq)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])

    bn = BatchNorm2D(3, initFactor=1.0, minFactor=0.1)
    net = Sequential([Linear(3, 3), BatchNorm(3, initFactor=0.5, minFactor=0.1),
                      Activation(relu)])
    for mod, match in ((bn, "no factor schedule initFactor=1, minFactor=0.1"),
                       (net, "minFactor=0.1"), (BatchNormND(4, 3), "cannot convert BatchNormND"),
                       (object(), "cannot convert object; supported: BatchNorm,")):
        state = our_state(mod) if hasattr(mod, "vars") else None
        with pytest.raises(ValueError, match=match):
            interop.to_torch(mod)
        if state is not None:
            after = our_state(mod)
            for k in state:
                np.testing.assert_array_equal(state[k], after[k])


def test_import_does_not_import_torch():
    code = ("import sys, batchnorm_lib, batchnorm_lib.interop, batchnorm_lib.modules; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
