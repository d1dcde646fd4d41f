"""Linear, Activation, Sequential, CrossEntropy, the optimizers, the training loop, the train CLI
and the cuBLAS adapter.

Array cases take the ``backend`` fixture, so they run on every backend present (cpu, and cuda or
cudasim where they work)."""

import json
import math
import os
import re
import sys

import numpy as np
import pytest

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost import CostError, CrossEntropy
from batchnorm_lib.kernels import dense
from batchnorm_lib.modules import (Activation, BatchNorm, Linear, Module, ModuleError, Sequential,
                                   relu, sigmoid, tanh)
from batchnorm_lib.optimizers import SGD, Adam, MomentumSGD, OptimizerError


def g(a, dtype=np.float32):
    return gpuarray.to_gpu(np.asarray(a, dtype=dtype))


def softmax_ce_ref(scores, labels):
    """float64 reference: mean loss and its negative gradient (PuzzleLib's convention)."""
    s = scores.astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.mean(np.log(p[np.arange(n), labels]))
    grad = p.copy()
    grad[np.arange(n), labels] -= 1
    return loss, -grad / n


# -- Linear ----------------------------------------------------------------------------------------
def test_linear_forward_matches_numpy(backend, rng):
    np.random.seed(3)
    lin = Linear(7, 5)
    x = rng.standard_normal((6, 7)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    lin.b.set(b)
    y = lin(g(x)).get()
    ref = x.astype(np.float64) @ lin.W.get().astype(np.float64) + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert lin.W.shape == (7, 5) and lin.b.shape == (5,)


def _loss_of(module, x, r):
    """L = sum(module(x) * r) in float64 (its gradient with respect to the output is r)."""
    return float(np.sum(module(g(x)).get().astype(np.float64) * r))


def test_linear_gradients_match_finite_differences(backend, rng):
    np.random.seed(5)
    lin = Linear(4, 3)
    lin.b.set(rng.standard_normal(3).astype(np.float32))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    r = rng.standard_normal((5, 3))

    lin(g(x))
    lin.zeroGradParams()
    dx = lin.backward(g(r)).get()
    dW, db = lin.vars["W"].grad.get(), lin.vars["b"].grad.get()

    h = 1e-2  # L is linear in W, b and x: central differences are exact but for float32 rounding

    def fd(base, loss):
        out = np.zeros(base.shape)
        for idx in np.ndindex(*base.shape):
            for sign in (1, -1):
                pert = base.astype(np.float64)
                pert[idx] += sign * h
                out[idx] += sign * loss(pert.astype(np.float32)) / (2 * h)
        return out

    W0, b0 = lin.W.get(), lin.b.get()

    def with_W(v):
        lin.W.set(v)
        try:
            return _loss_of(lin, x, r)
        finally:
            lin.W.set(W0)

    def with_b(v):
        lin.b.set(v)
        try:
            return _loss_of(lin, x, r)
        finally:
            lin.b.set(b0)

    num_W = fd(W0, with_W)
    num_b = fd(b0, with_b)
    num_x = fd(x, lambda v: _loss_of(lin, v, r))

    np.testing.assert_allclose(dW, num_W, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(db, num_b, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(dx, num_x, rtol=2e-3, atol=2e-3)
    # and exactly the closed forms
    np.testing.assert_allclose(dW, x.T.astype(np.float64) @ r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, r.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_linear_grad_accumulation_scale_momentum(backend, rng):
    np.random.seed(1)
    lin = Linear(3, 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    r = rng.standard_normal((4, 2)).astype(np.float32)
    lin(g(x))
    lin.backward(g(r))
    first = lin.vars["W"].grad.get()
    lin(g(x))
    lin.backward(g(r), scale=0.5, momentum=2.0)
    np.testing.assert_allclose(lin.vars["W"].grad.get(), 2.5 * first, rtol=1e-5, atol=1e-6)


def test_linear_refusals(backend):
    lin = Linear(4, 3)
    with pytest.raises(ModuleError, match=r"expects 2-D data \(batchsize, 4\)"):
        lin(g(np.zeros((2, 5))))
    with pytest.raises(ModuleError, match="backward called before any forward"):
        lin.backward(g(np.zeros((2, 3))))
    lin(g(np.zeros((2, 4))))
    with pytest.raises(ModuleError, match="grad shape"):
        lin.backward(g(np.zeros((2, 4))))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ModuleError, match="insize must be an integer"):
            Linear(bad, 3)
    with pytest.raises(ModuleError, match="initscheme must be one of"):
        Linear(2, 2, initscheme="bogus")


def test_linear_without_gemm_is_refused_clearly(backend, monkeypatch):
    impl = dense.ops()
    monkeypatch.setattr(impl, "gemm_status", lambda: (False, "no cuBLAS library found"))
    with pytest.raises(ModuleError, match="matrix products are unavailable.*no cuBLAS"):
        Linear(3, 2)


def test_linear_init_schemes():
    np.random.seed(0)
    w = Linear(400, 300, initscheme="he").W.get()
    assert abs(w.std() / math.sqrt(2 / 400) - 1) < 0.05
    w = Linear(400, 300).W.get()  # xavier uniform
    assert np.abs(w).max() <= math.sqrt(6 / 700) + 1e-7


# -- Activation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [relu, sigmoid, tanh])
def test_activation_forward_backward(backend, rng, kind):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[np.abs(x) < 0.05] = 0.3  # keep relu away from its kink for the finite differences
    r = rng.standard_normal((5, 7))
    ref = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
           "tanh": np.tanh}[kind]
    act = Activation(kind)
    y = act(g(x)).get()
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    dx = act.backward(g(r)).get()
    h = 1e-3
    num = (ref(x.astype(np.float64) + h) - ref(x.astype(np.float64) - h)) / (2 * h) * r
    np.testing.assert_allclose(dx, num, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "tanh", "leakyRelu", "elu", "softPlus",
                                  "clip"])
def test_activation_keeps_nan(backend, rng, kind):
    """NaN in, NaN out, on every backend (the GPU's fmaxf would turn it into a bound); relu's
    gradient passes at a NaN output, as PyTorch's does, and stops at exactly 0."""
    x = rng.standard_normal((3, 7)).astype(np.float32)
    x[1, 2], x[2, 5], x[0, 0] = np.nan, -np.nan, 0.0
    act = Activation(kind)
    y = act(g(x)).get()
    assert np.isnan(y[1, 2]) and np.isnan(y[2, 5]) and np.isfinite(np.delete(y.ravel(), [9, 19])).all()
    if kind == "relu":
        r = rng.standard_normal(x.shape).astype(np.float32)
        dx = act.backward(g(r)).get()
        np.testing.assert_array_equal(dx, np.where(y <= 0, 0, r).astype(np.float32))
        assert dx[1, 2] == r[1, 2] and dx[0, 0] == 0


def test_activation_refuses_unknown():
    with pytest.raises(ModuleError, match="activation must be one of relu, sigmoid, tanh"):
        Activation("swish")


# -- CrossEntropy ----------------------------------------------------------------------------------
def test_cross_entropy_value_and_gradient(backend, rng):
    scores = (3 * rng.standard_normal((6, 4))).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2, 3], dtype=np.int32)
    ce = CrossEntropy()
    err, grad = ce(g(scores), g(labels, np.int32))
    ref_loss, ref_grad = softmax_ce_ref(scores, labels)
    assert err == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad.get(), ref_grad, rtol=1e-5, atol=1e-6)

    # finite differences of the cost itself
    h = 1e-2
    num = np.zeros(scores.shape)
    for idx in np.ndindex(*scores.shape):
        for sign in (1, -1):
            s = scores.astype(np.float64)
            s[idx] += sign * h
            num[idx] += sign * CrossEntropy()(g(s), g(labels, np.int32))[0] / (2 * h)
    np.testing.assert_allclose(-grad.get(), num, rtol=1e-2, atol=2e-4)


def test_cross_entropy_large_scores_and_validation(backend):
    scores = np.array([[1000.0, 0.0, -1000.0], [0.0, 50.0, 49.0]], dtype=np.float32)
    labels = np.array([0, 2], dtype=np.int32)
    ce = CrossEntropy()
    err, grad = ce(g(scores), g(labels, np.int32))
    assert np.isfinite(err) and np.all(np.isfinite(grad.get()))
    ref_loss, ref_grad = softmax_ce_ref(scores, labels)
    assert err == pytest.approx(ref_loss, rel=1e-5)
    assert ce.validate(g(scores), g(labels, np.int32)) == pytest.approx(0.5)
    assert ce.mostProb.get().tolist() == [0, 1]
    assert ce.getMeanError() == pytest.approx(ref_loss, rel=1e-5)


def test_cross_entropy_refusals(backend):
    ce = CrossEntropy()
    s = g(np.zeros((3, 4)))
    with pytest.raises(CostError, match=r"labels must lie in \[0, 4\), found 4"):
        ce(s, g([0, 1, 4], np.int32))
    with pytest.raises(CostError, match="found -1"):
        ce(s, g([0, -1, 2], np.int32))
    with pytest.raises(CostError, match="labels must be int32"):
        ce(s, g([0, 1, 2], np.float32))
    with pytest.raises(CostError, match=r"labels must have shape \(3,\)"):
        ce(s, g([0, 1], np.int32))
    with pytest.raises(CostError, match="must be an array of the active"):
        ce(np.zeros((3, 4), np.float32), g([0, 1, 2], np.int32))


# -- optimizers ------------------------------------------------------------------------------------
def _one_var_module(w0, g0):
    lin = Linear(w0.shape[0], w0.shape[1], useBias=False)
    lin.W.set(w0)
    lin.vars["W"].grad.set(g0)
    return lin


def _steps(opt, mod, grads):
    opt.setupOn(mod, useGlobalState=True)
    for gr in grads:
        mod.vars["W"].grad.set(gr)
        opt.update()
    return mod.W.get()


def test_optimizers_match_their_formulas(backend, rng):
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]

    lr = 0.1
    ref = w0.astype(np.float64)
    for gr in grads:
        ref = ref + lr * gr
    np.testing.assert_allclose(_steps(SGD(learnRate=lr), _one_var_module(w0, grads[0]), grads), ref,
                               rtol=1e-5, atol=1e-6)

    mr = 0.9
    ref, mom = w0.astype(np.float64), np.zeros_like(w0, dtype=np.float64)
    for gr in grads:
        mom = mr * mom + lr * gr
        ref = ref + mom
    np.testing.assert_allclose(_steps(MomentumSGD(learnRate=lr, momRate=mr),
                                      _one_var_module(w0, grads[0]), grads), ref, rtol=1e-5,
                               atol=1e-6)

    alpha, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    ref = w0.astype(np.float64)
    m, v = np.zeros_like(ref), np.zeros_like(ref)
    for t, gr in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * gr
        v = b2 * v + (1 - b2) * gr.astype(np.float64) ** 2
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        # the bias correction folded into the step moves epsilon: eps / sqrt(1 - beta2^t) here
        ref = ref + alpha * mhat / (np.sqrt(vhat) + eps / math.sqrt(1 - b2 ** t))
    np.testing.assert_allclose(_steps(Adam(alpha, b1, b2, eps), _one_var_module(w0, grads[0]),
                                      grads), ref, rtol=1e-4, atol=1e-5)


def test_optimizer_respects_variable_learn_rate_and_zeroes_grads(backend, rng):
    w0 = rng.standard_normal((2, 2)).astype(np.float32)
    gr = np.ones((2, 2), np.float32)
    mod = _one_var_module(w0, gr)
    mod.vars["W"].learnRate = 0.0  # frozen
    opt = SGD(learnRate=1.0)
    opt.setupOn(mod)
    opt.update()
    np.testing.assert_array_equal(mod.W.get(), w0)
    opt.zeroGradParams()
    assert not mod.vars["W"].grad.get().any()


def test_optimizer_refusals():
    with pytest.raises(OptimizerError, match="learnRate must be finite"):
        SGD(learnRate=-1)
    with pytest.raises(OptimizerError, match="momRate"):
        MomentumSGD(momRate=1.0)
    with pytest.raises(OptimizerError, match="epsilon"):
        Adam(epsilon=0)
    with pytest.raises(OptimizerError, match="setupOn"):
        SGD().update()


# -- Sequential ------------------------------------------------------------------------------------
def _net():
    return Sequential([Linear(6, 8), BatchNorm(8), Activation(relu), Linear(8, 3)])


def test_sequential_forward_backward_and_vars(backend, rng):
    np.random.seed(2)
    net = _net()
    assert sorted(net.vars) == ["0.W", "0.b", "1.bias", "1.scale", "3.W", "3.b"]
    assert net.vars["0.W"] is net[0].vars["W"]
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = net(g(x))
    assert y.shape == (5, 3)
    dx = net.backward(g(np.ones((5, 3))))
    assert dx.shape == (5, 6)
    assert net[0].vars["W"].grad.get().any()
    net.zeroGradParams()
    assert not any(v.grad.get().any() for v in net.vars.values())
    assert net.numOfParams() == 6 * 8 + 8 + 8 + 8 + 8 * 3 + 3


def test_sequential_input_gradient_finite_differences(backend, rng):
    """The chain rule through Linear, BatchNorm (training statistics) and tanh (smooth, so the
    differences do not straddle a kink)."""
    np.random.seed(4)
    net = Sequential([Linear(6, 8), BatchNorm(8), Activation(tanh), Linear(8, 3)])
    x = rng.standard_normal((6, 6)).astype(np.float32)
    r = rng.standard_normal((6, 3))
    net(g(x))
    dx = net.backward(g(r)).get()
    h = 1e-2
    num = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        for sign in (1, -1):
            xp = x.astype(np.float64)
            xp[idx] += sign * h
            num[idx] += sign * np.sum(net(g(xp)).get() * r) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-2, atol=1e-3)


def test_sequential_modes_save_load(backend, rng, tmp_path):
    np.random.seed(6)
    net = _net()
    x = g(rng.standard_normal((8, 6)))
    net(x)
    net.evalMode()
    assert not net.train and not net[1].train
    before = net(x).get()
    path = str(tmp_path / "net.h5")
    net.save(path)

    np.random.seed(99)
    other = _net()
    other.evalMode()
    other.load(path)
    np.testing.assert_array_equal(other(x).get(), before)
    assert other[1].numOfProps == net[1].numOfProps

    wrong = Sequential([Linear(6, 9), BatchNorm(9), Activation(relu), Linear(9, 3)])
    w_before = wrong[0].W.get()
    with pytest.raises(ModuleError, match="has shape"):
        wrong.load(path)
    np.testing.assert_array_equal(wrong[0].W.get(), w_before)  # nothing changed
    net.trainMode()
    assert net.train and net[1].train


def test_sequential_refusals():
    seq = Sequential()
    with pytest.raises(ModuleError, match="is empty"):
        seq(g(np.zeros((2, 2))))
    lin = Linear(2, 2)
    seq.append(lin)
    with pytest.raises(ModuleError, match="already in"):
        seq.append(lin)
    with pytest.raises(ModuleError, match="can only append Modules"):
        seq.append("relu")


def test_sequential_calc_mode_is_all_or_nothing(backend):
    """A child refusing the dtype leaves every child's calctype as it was."""
    class AnyDtype(Module):
        def calcMode(self, T):
            self.calctype = np.dtype(T)

    first = AnyDtype()
    seq = Sequential([first, Linear(3, 2)])
    with pytest.raises(ModuleError, match="float64"):
        seq.calcMode(np.float64)
    assert first.calctype == np.float32 and seq.calctype == np.float32

    class Refuses(Module):
        def calcMode(self, T):
            raise ModuleError("%s: refuses %s" % (self, np.dtype(T)))

    # the same with a real BatchNorm switched first where the backend has float16 (cuda, cudasim)
    if np.dtype(np.float16) in config.backend_module().supported_dtypes():
        seq = Sequential([BatchNorm(3), Refuses()])
        with pytest.raises(ModuleError, match="float16"):
            seq.calcMode(np.float16)
        assert [m.calctype for m in seq] == [np.float32, np.float32]


# -- the training loop -----------------------------------------------------------------------------
def _blobs(n, features=16, classes=4, seed=0):
    """Gaussian clusters, offset far from zero (unnormalized features), as a Dataset."""
    from batchnorm_lib.training import Dataset

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (classes, features))
    y = rng.integers(0, classes, 2 * n).astype(np.int32)
    x = (centers[y] + rng.normal(0, 1.0, (2 * n, features)) + 3.0).astype(np.float32)
    return Dataset(x[:n], y[:n], x[n:], y[n:], classes, "blobs")


def _slices():
    yield "blobs", _blobs(320)
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        return
    from batchnorm_lib.training import load_digits

    yield "digits", load_digits(seed=0).subset(320, 120)


@pytest.mark.parametrize("which", ["blobs", "digits"])
def test_two_epochs_on_a_slice_reduce_the_loss(backend, which):
    from batchnorm_lib.training import evaluate, train_run

    data = dict(_slices()).get(which)
    if data is None:
        pytest.skip("scikit-learn is not installed (the examples extra)")
    for batchnorm in (True, False):
        np.random.seed(0)
        from batchnorm_lib.training.loop import build_mlp

        untrained = build_mlp(data.features, data.classes, (32, 32), batchnorm)
        loss0, _ = evaluate(untrained, data.xtrain, data.ytrain)
        result = train_run(data, batchnorm=batchnorm, epochs=2, batch_size=32, lr=0.1, seed=0,
                           hidden=(32, 32))
        assert len(result.history) == 2
        loss2, _ = evaluate(result.net, data.xtrain, data.ytrain)
        assert loss2 < 0.7 * loss0, (batchnorm, loss0, loss2)
        assert result.history[1].train_loss < result.history[0].train_loss
        assert result.test_acc > 0.5


# -- the train command -----------------------------------------------------------------------------
def _main(argv):
    from batchnorm_lib.__main__ import main

    return main(argv)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"--epochs: must be an integer >= 1, got 0"),
    (["--epochs", "two"], r"--epochs: must be an integer, got 'two'"),
    (["--batch-size", "0"], r"--batch-size: must be an integer >= 2, got 0"),
    (["--batch-size", "1"], r"--batch-size: must be an integer >= 2, got 1"),
    (["--lr", "-1"], r"--lr: must be a finite number > 0, got '-1'"),
    (["--lr", "nan"], r"--lr: must be a finite number > 0, got 'nan'"),
    (["--lr", "0"], r"--lr: must be a finite number > 0"),
    (["--seed", "-3"], r"--seed: must be an integer >= 0, got -3"),
    (["--optimizer", "rmsprop"], r"--optimizer: invalid choice"),
])
def test_train_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(["train"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "usage:" in err


@pytest.mark.parametrize("missing, plot", [("tqdm", False), ("sklearn", False),
                                           ("matplotlib", True)])
def test_train_names_the_missing_extra(missing, plot, monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")] + [missing]:
        monkeypatch.setitem(sys.modules, name, None)  # makes "import <missing>[.sub]" fail
    argv = ["train", "--epochs", "1", "--out", str(tmp_path)] + ([] if plot else ["--no-plot"])
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert 'pip install "batchnorm_lib[examples]"' in err
    assert {"tqdm": "tqdm", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}[missing] in err


SUMMARY = re.compile(r"^BatchNorm: test accuracy (\d\.\d{3}) in (\d+\.\d+) s \| "
                     r"no BatchNorm: test accuracy (\d\.\d{3}) in (\d+\.\d+) s$")


@pytest.mark.parametrize("plot", [False, True])
def test_train_command_end_to_end(plot, capsys, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    if plot:
        pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--seed", "1", "--out", str(out)]
    assert _main(argv + ([] if plot else ["--no-plot"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0.8
    assert any(line.startswith("    2 |") for line in lines)  # the per-epoch table
    history = json.loads((out / "train_history.json").read_text())
    assert len(history["BatchNorm"]) == 2 and len(history["no BatchNorm"]) == 2
    assert (out / "train_curves.png").exists() == plot
    if plot:
        assert (out / "train_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isdir(out)


# -- the cuBLAS adapter (no GPU needed) ------------------------------------------------------------
class _ColumnMajorBlas:
    """A stand-in for cuBLAS's sgemm that reads host pointers as column-major matrices, exactly
    as cuBLAS reads device pointers: it checks the adapter's row-major mapping."""

    via = "test"

    @staticmethod
    def _matrix(ptr, ld, rows, cols):
        import ctypes

        buf = (ctypes.c_float * (ld * cols)).from_address(int(ptr))
        return np.ctypeslib.as_array(buf).reshape(cols, ld).T[:rows, :]

    def create(self):
        return 1

    def sgemm(self, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        a = self._matrix(A, lda, k if transa else m, m if transa else k)
        b = self._matrix(B, ldb, n if transb else k, k if transb else n)
        c = self._matrix(C, ldc, m, n)
        prod = (a.T if transa else a).astype(np.float64) @ (b.T if transb else b)
        c[...] = alpha * prod + beta * c


@pytest.fixture
def fake_cublas(monkeypatch):
    from batchnorm_lib.backend import cublas

    monkeypatch.setattr(cublas, "_state", {"blas": _ColumnMajorBlas(), "handle": None,
                                           "error": None, "note": "test"})
    return cublas


@pytest.mark.parametrize("transA", [False, True])
@pytest.mark.parametrize("transB", [False, True])
def test_cublas_row_major_mapping(fake_cublas, rng, transA, transB):
    from batchnorm_lib.backend.cpu import array

    m, n, k = 3, 5, 4
    A = rng.standard_normal((k, m) if transA else (m, k)).astype(np.float32)
    B = rng.standard_normal((n, k) if transB else (k, n)).astype(np.float32)
    C0 = rng.standard_normal((m, n)).astype(np.float32)
    a, b, c = array.to_gpu(A), array.to_gpu(B), array.to_gpu(C0)
    fake_cublas.gemm_ptrs(m, n, k, a.ptr, b.ptr, c.ptr, transA, transB, alpha=0.5, beta=2.0)
    ref = 0.5 * (A.T if transA else A).astype(np.float64) @ (B.T if transB else B) + 2.0 * C0
    np.testing.assert_allclose(c.get(), ref, rtol=1e-5, atol=1e-5)


def test_cublas_names_and_errors(monkeypatch, tmp_path):
    from batchnorm_lib.backend import cublas

    libs = {"libcublas": "/opt/cuda/libcublas.so.13", "libcudart": "libcudart.so.13",
            "libcuda": None}
    assert cublas.resolve_name("libcublas.so", libs) == "/opt/cuda/libcublas.so.13"
    assert cublas.resolve_name("libcublas.so.10.1", libs) == "/opt/cuda/libcublas.so.13"
    assert cublas.resolve_name("libcudart.so", libs) == "libcudart.so.13"
    assert cublas.resolve_name("libcuda.so", libs) == "libcuda.so"  # not found: left alone
    assert cublas.resolve_name("libcublasLt.so", libs) == "libcublasLt.so"
    assert cublas._versioned_soname("/x/libcublas.so.13", (13, 1, 0)) == "libcublas.so.13.1"

    monkeypatch.setenv(cublas.ENV_VAR, str(tmp_path / "libcublas.so.99"))
    monkeypatch.setattr(cublas, "_state", {"blas": None, "handle": None, "error": None,
                                           "note": ""})
    ok, why = cublas.status()
    assert not ok and cublas.ENV_VAR in why and "cannot be loaded" in why
    with pytest.raises(cublas.CublasUnavailable, match="cannot be loaded"):
        cublas.handle()


def test_skcuda_imports_through_the_shims():
    """Where scikit-cuda and a CUDA runtime library are installed (no GPU needed), its runtime
    bindings import against the versioned library, with no pkg_resources left behind."""
    import importlib.util

    from batchnorm_lib.backend import cublas

    if importlib.util.find_spec("skcuda") is None:
        pytest.skip("scikit-cuda is not installed (the cuda extra)")
    cudart = cublas.find_library("libcudart")
    if cudart is None:
        pytest.skip("no CUDA runtime library (libcudart.so.N) here")
    had_pkg_resources = "pkg_resources" in sys.modules
    libs = {"libcublas": None, "libcudart": cudart, "libcuda": None}
    with cublas._skcuda_import_shims(libs, "/nonexistent/libcublas.so"):
        module = importlib.import_module("skcuda.cudart")
    assert module._cudart_version > 10010  # a runtime newer than scikit-cuda's own list
    assert ("pkg_resources" in sys.modules) == had_pkg_resources


def test_cublas_library_found_and_versioned_when_installed():
    from batchnorm_lib.backend import cublas

    path = cublas.find_library("libcublas", env=cublas.ENV_VAR)
    if path is None:
        pytest.skip("no cuBLAS library here (set %s to test one)" % cublas.ENV_VAR)
    version = cublas.library_version(path)
    assert version is not None and version[0] >= 10, version


@pytest.mark.parametrize("other", ["cuda", "cudasim"])
def test_training_matches_the_cpu_backend(other):
    """The same run (BatchNorm network, MomentumSGD) on a CUDA backend and on the CPU gives the
    same losses and accuracies, epoch by epoch."""
    from batchnorm_lib import config
    from batchnorm_lib.training import train_run

    ok, reason = config.probe(other)
    if not ok:
        pytest.skip("backend %s unavailable: %s" % (other, reason))
    data = _blobs(96)
    previous = config.get_backend()
    histories = {}
    try:
        for name in ("cpu", other):
            config.set_backend(name)
            result = train_run(data, batchnorm=True, epochs=2, batch_size=16, lr=0.05, seed=3,
                               hidden=(24,), warmup=False)
            histories[name] = [(h.train_loss, h.train_acc, h.test_loss, h.test_acc)
                               for h in result.history]
    finally:
        config.set_backend(previous)
    np.testing.assert_allclose(histories[other], histories["cpu"], rtol=1e-4, atol=1e-5)
