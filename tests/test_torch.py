"""Cross-checks against PyTorch's batch norm; run only where torch is importable."""

import numpy as np
import pytest

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D
from batchnorm_lib.backend import gpuarray

torch = pytest.importorskip("torch")

CASES = [(BatchNorm, torch.nn.BatchNorm1d, (9, 5)),
         (BatchNorm1D, torch.nn.BatchNorm1d, (3, 5, 11)),
         (BatchNorm2D, torch.nn.BatchNorm2d, (3, 5, 7, 9)),
         (BatchNorm3D, torch.nn.BatchNorm3d, (2, 3, 5, 3, 7))]


@pytest.mark.parametrize("ours_cls,torch_cls,shape", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_matches_torch(backend, ours_cls, torch_cls, shape, momentum):
    rng = np.random.default_rng(7)
    C = shape[1]
    kw = dict(initFactor=momentum, minFactor=momentum) if momentum else dict(initFactor=1.0,
                                                                             minFactor=0.0)
    ours = ours_cls(C, **kw)
    theirs = torch_cls(C, momentum=momentum).double()
    scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bias = rng.normal(0, 1, C).astype(np.float32)
    ours.scale.set(scale.reshape(ours.scale.shape))
    ours.bias.set(bias.reshape(ours.bias.shape))
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(scale.astype(np.float64)))
        theirs.bias.copy_(torch.from_numpy(bias.astype(np.float64)))

    for step in range(3):
        x = rng.normal(step, 2, shape).astype(np.float32)
        dy = rng.normal(0, 1, shape).astype(np.float32)
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy.astype(np.float64)))
        ours.zeroGradParams()
        y = ours(gpuarray.to_gpu(x))
        dx = ours.backward(gpuarray.to_gpu(dy))

        np.testing.assert_allclose(y.get(), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dx.get(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.vars["scale"].grad.get().ravel(), theirs.weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.vars["bias"].grad.get().ravel(), theirs.bias.grad.numpy(),
                                   rtol=1e-4, atol=1e-4)
        theirs.zero_grad()
        np.testing.assert_allclose(ours.mean.get().ravel(), theirs.running_mean.numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.var.get().ravel(), theirs.running_var.numpy(),
                                   rtol=1e-5, atol=1e-5)

    ours.evalMode()
    theirs.eval()
    x = rng.normal(0, 2, shape).astype(np.float32)
    np.testing.assert_allclose(ours(gpuarray.to_gpu(x)).get(),
                               theirs(torch.from_numpy(x.astype(np.float64))).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
