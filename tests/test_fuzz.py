"""Fuzzed call sequences on every normalization module and every backend present.

Each example draws a module (BatchNorm, BatchNorm1D/2D/3D in both layouts, InstanceNorm2D,
LayerNorm, GroupNorm), a data shape whose axes may be 0 or 1, and a sequence of calls: forward on
fresh data (a contiguous or strided basic-slice view of a larger gpuarray, sometimes of the wrong
shape or dtype), backward with random updParamGrads/updGrad/scale/momentum (sometimes before any
forward, or with a grad of the wrong shape), trainMode/evalMode, updateParams, calcMode (float32,
float16/bfloat16 where the backend lists them in ``supported_dtypes()``, float64 which none takes),
a save/load round trip through HDF5 bytes and a load of damaged bytes, and a forward of the same
data with one value made NaN, +Inf or -Inf. The same sequence runs on every target: the CPU
backend's compiled and numpy paths, and ``cudasim`` where it works here.

Checked at each step:
- against an independent float64 reference (``reference.py`` for batch norm, ``row_reference``
  here for the per-row norms) computed from the module's state read back just before the call;
- the targets against each other (same values within tolerance, same NaN positions);
- every refusal is a ModuleError, expected by the documented contract, with every variable,
  gradient, attribute, counter and mode of the module as before the call;
- a poisoned value makes NaN (or, in evaluation, a non-finite output at that element) exactly
  the values that share statistics with it, and every other output and statistic is bitwise as
  with the clean data, as in PyTorch.

CI runs ``BATCHNORM_LIB_FUZZ_EXAMPLES`` examples (default 50: 15 to 60 seconds on a 2-core
machine, depending on its load); set it higher for a longer search, e.g.
``BATCHNORM_LIB_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py``. Examples
are derandomized, so CI runs the same ones every time.
"""

import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchnorm_lib import (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, GroupNorm,
                           InstanceNorm2D, LayerNorm, ModuleError, config)
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.kernels.norm import cpu as cpu_kernels
from batchnorm_lib.variable import Variable

import reference as ref

EXAMPLES = int(os.environ.get("BATCHNORM_LIB_FUZZ_EXAMPLES", "50"))
STEPS = 8

TOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


def targets():
    """(backend, cpu path) pairs that work in this process."""
    out = [("cpu", p) for p in cpu_kernels.available_paths()]
    if config.probe("cudasim")[0]:
        out.append(("cudasim", None))
    return out


@contextlib.contextmanager
def on_target(target):
    backend, path = target
    previous, previous_path = config.get_backend(), cpu_kernels.active_path()
    config.set_backend(backend)
    if path is not None:
        cpu_kernels.use(path, quiet=True)
    try:
        yield
    finally:
        config.set_backend(previous)
        if previous_path is not None:
            cpu_kernels.use(previous_path, quiet=True)


# -- modules ------------------------------------------------------------------------------------
BN_CLASSES = {0: BatchNorm, 1: BatchNorm1D, 2: BatchNorm2D, 3: BatchNorm3D}


@st.composite
def module_specs(draw):
    kind = draw(st.sampled_from(["bn", "bn", "bn", "instance", "layer", "group"]))
    spec = {"kind": kind, "affine": draw(st.booleans()),
            "epsilon": draw(st.sampled_from([1e-5, 1e-3, 0.0]))}
    if kind == "bn":
        spec["nd"] = draw(st.integers(0, 3))
        spec["maps"] = draw(st.integers(1, 4))
        spec["layout"] = draw(st.sampled_from(["channels_first", "channels_last"]))
        spec["initFactor"] = draw(st.sampled_from([1.0, 0.5, 0.1]))
        spec["minFactor"] = draw(st.sampled_from([0.1, 0.0, 1.0]))
        spec["activation"] = draw(st.sampled_from([None, "relu"]))
    elif kind == "instance":
        spec["maps"] = draw(st.integers(1, 4))
    elif kind == "layer":
        spec["shape"] = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    else:
        spec["groups"] = draw(st.integers(1, 3))
        spec["maps"] = spec["groups"] * draw(st.integers(1, 2))
        spec["spatial"] = draw(st.integers(0, 2))
    return spec


def make_module(spec, seed):
    np.random.seed(seed)  # the BatchNorm scale is drawn at construction: the same on every target
    kind, eps, affine = spec["kind"], spec["epsilon"], spec["affine"]
    if kind == "bn":
        return BN_CLASSES[spec["nd"]](spec["maps"], epsilon=eps, initFactor=spec["initFactor"],
                                      minFactor=spec["minFactor"], sscale=0.5, affine=affine,
                                      layout=spec["layout"], activation=spec["activation"])
    if kind == "instance":
        return InstanceNorm2D(spec["maps"], epsilon=eps, affine=affine)
    if kind == "layer":
        return LayerNorm(spec["shape"], epsilon=eps, affine=affine)
    return GroupNorm(spec["groups"], spec["maps"], epsilon=eps, affine=affine)


def data_shape(spec, lead, spatial):
    """A data shape in the module's layout from ``lead`` (N) and per-axis ``spatial`` sizes."""
    kind = spec["kind"]
    if kind == "bn":
        sp = tuple(spatial[:spec["nd"]])
        if spec["layout"] == "channels_last" and spec["nd"] > 0:
            return (lead,) + sp + (spec["maps"],)
        return (lead, spec["maps"]) + sp
    if kind == "instance":
        return (lead, spec["maps"]) + tuple(spatial[:2])
    if kind == "layer":
        return (lead,) + spec["shape"]
    return (lead, spec["maps"]) + tuple(spatial[:spec["spatial"]])


def channels_first(spec, a):
    if spec["kind"] == "bn" and spec["layout"] == "channels_last" and spec["nd"] > 0:
        return np.moveaxis(a, -1, 1)
    return a


def refusal_expected(spec, shape, train):
    """Why the documented contract refuses a forward of this (well-formed) shape, or None."""
    size = int(np.prod(shape))
    if spec["kind"] == "bn":
        if train and size and size // spec["maps"] == 1:
            return "one value per channel"
        return None
    if size == 0:
        return "empty data"
    if spec["kind"] == "instance" and shape[2] * shape[3] < 2:
        return "one value per instance"
    return None


# -- float64 references ----------------------------------------------------------------------------
def _param(spec, a, ndim):
    a = np.asarray(a, np.float64)
    if spec["kind"] == "layer":
        return a
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def row_groups(spec, x):
    """``x`` (channels first) as (rows, values per row) for the per-row norms."""
    if spec["kind"] == "layer":
        return x.reshape(-1, int(np.prod(spec["shape"])))
    groups = spec["maps"] if spec["kind"] == "instance" else spec["groups"]
    return x.reshape(x.shape[0] * groups, -1)


def row_reference(spec, x, dy, scale, bias):
    """Per-row norms in float64: (y, dx, dscale, dbias), dx etc. None without dy."""
    x = np.asarray(x, np.float64)
    eps = spec["epsilon"]
    r = row_groups(spec, x)
    mean = r.mean(axis=1, keepdims=True)
    invstd = 1.0 / np.sqrt(((r - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = ((r - mean) * invstd).reshape(x.shape)
    s, b = _param(spec, scale, x.ndim), _param(spec, bias, x.ndim)
    y = xhat * s + b
    if dy is None:
        return y, None, None, None
    dy = np.asarray(dy, np.float64)
    pax = tuple(range(x.ndim - len(spec["shape"]))) if spec["kind"] == "layer" else \
        (0,) + tuple(range(2, x.ndim))
    dscale, dbias = (dy * xhat).sum(axis=pax), dy.sum(axis=pax)
    g = row_groups(spec, dy * s)
    xh = row_groups(spec, xhat)
    dx = invstd * (g - g.mean(axis=1, keepdims=True) - xh * (g * xh).mean(axis=1, keepdims=True))
    return y, dx.reshape(x.shape), dscale, dbias


def bn_reference(spec, st_, x, train):
    """Batch norm forward in float64 from the module state ``st_``: (y, savemean, saveinvvar,
    running mean, running var, numOfProps) in channels-first order."""
    C, eps = spec["maps"], spec["epsilon"]
    scale, bias = st_["scale"].ravel(), st_["bias"].ravel()
    rm, rv = st_["mean"].ravel().astype(np.float64), st_["var"].ravel().astype(np.float64)
    if x.size == 0:
        return np.zeros(x.shape), None, None, rm, rv, st_["numOfProps"]
    if not train:
        return ref.forward_eval(x, scale, bias, rm, rv, eps), None, None, rm, rv, \
            st_["numOfProps"]
    y, mean, _, unbiased, invstd = ref.forward_train(x, scale, bias, eps)
    n = st_["numOfProps"] + 1
    factor = max(spec["initFactor"] / n, spec["minFactor"])
    return (y, mean, invstd, (1 - factor) * rm + factor * mean, (1 - factor) * rv
            + factor * unbiased, n)


# -- state ---------------------------------------------------------------------------------------
def host(a):
    return None if a is None else np.array(a.get(), dtype=np.float64)


def snapshot(module):
    """Every array (by identity and contents), gradient, attribute and counter of ``module``."""
    snap = {}
    for key, value in vars(module).items():
        if gpuarray.is_array(value):
            snap[key] = ("array", id(value), value.shape, value.get().tobytes())
        elif isinstance(value, Variable):
            snap[key] = ("var", id(value), value.data.get().tobytes(),
                         None if value.grad is None else value.grad.get().tobytes())
        elif isinstance(value, dict):
            snap[key] = ("dict", sorted((k, id(v)) for k, v in value.items()))
        elif value is None or isinstance(value, (bool, int, float, str, tuple, np.dtype)):
            snap[key] = value
        else:
            snap[key] = ("object", id(value))
    for name, var in module.vars.items():
        snap["vars." + name] = snapshot_var(var)
    return snap


def snapshot_var(var):
    return (var.data.get().tobytes(), None if var.grad is None else var.grad.get().tobytes())


def refused(module, call, why):
    """``call()`` must raise ModuleError and leave ``module`` as it was."""
    before = snapshot(module)
    with pytest.raises(ModuleError):
        call()
    assert snapshot(module) == before, "state changed by a refused call (%s)" % why


def close(actual, expected, dtype, what, scale_by=1.0):
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, what
    if not np.isfinite(scale_by):  # zero variance with epsilon 0: NaN and Inf outputs
        scale_by = 1.0
    tol = TOL[str(np.dtype(dtype))] * max(1.0, scale_by)
    if expected.size:
        tol *= max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(expected), expected, 0)))))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, equal_nan=True,
                               err_msg=what)


def clone(module, spec, seed):
    twin = make_module(spec, seed)
    twin.load(module.save())
    twin.calcMode(module.calctype)
    if not module.train:
        twin.evalMode()
    return twin


# -- data --------------------------------------------------------------------------------------
def draw_data(rng, shape, dtype, kind):
    if kind == "normal":
        x = rng.normal(0.0, 1.0, shape)
    elif kind == "offset":
        x = 30.0 + rng.normal(0.0, 1.0, shape)
    elif kind == "constant":
        x = np.full(shape, rng.normal())
    else:  # a few distinct values: ties and zero variances in some channels
        x = rng.integers(-2, 3, shape).astype(np.float64)
    return x.astype(dtype)


def as_view(host_x, how, rng):
    """``host_x`` as a gpuarray: whole, a contiguous slice of a larger array, or a strided one."""
    if how == "whole":
        return gpuarray.to_gpu(host_x)
    if how == "leading":
        big = np.concatenate([host_x, rng.normal(size=(2,) + host_x.shape[1:])
                              .astype(host_x.dtype)])
        return gpuarray.to_gpu(big)[:host_x.shape[0]]
    axis = int(rng.integers(0, host_x.ndim))
    big_shape = list(host_x.shape)
    big_shape[axis] = 2 * host_x.shape[axis] + 1
    big = rng.normal(size=big_shape).astype(host_x.dtype)
    index = [slice(None)] * host_x.ndim
    index[axis] = slice(1, None, 2)
    big[tuple(index)] = host_x
    view = gpuarray.to_gpu(big)[tuple(index)]
    assert view.shape == host_x.shape
    return view


# -- one call sequence on one target ---------------------------------------------------------
OPS = ["forward", "forward", "forward", "backward", "backward", "mode", "update", "calc",
       "saveload", "poison", "bad"]


@st.composite
def scenarios(draw):
    spec = draw(module_specs())
    lead = draw(st.sampled_from([0, 1, 2, 3, 5]))
    spatial = draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=3, max_size=3))
    ops = draw(st.lists(st.sampled_from(OPS), min_size=2, max_size=STEPS))
    return spec, lead, spatial, ops, draw(st.integers(0, 2 ** 31 - 1))


def run(target, spec, lead, spatial, ops, seed):
    """Run the sequence on ``target`` and check it against the reference; returns every result
    (host float64 arrays) for the comparison between targets."""
    rng = np.random.default_rng(seed)
    results = []
    with on_target(target):
        supported = [np.dtype(d) for d in config.backend_module().supported_dtypes()]
        m = make_module(spec, seed)
        shape = data_shape(spec, lead, spatial)
        last = None  # (host x, train) of the last successful forward
        trace = []  # the dtypes taken: only targets with the same trace compare their results
        for op in ops:
            dtype = m.calctype
            if op in ("forward", "poison"):
                x = draw_data(rng, shape, dtype, rng.choice(["normal", "offset", "constant",
                                                              "ties"]))
                xd = as_view(x, rng.choice(["whole", "leading", "strided"]), rng)
                why = refusal_expected(spec, shape, m.train)
                if why:
                    refused(m, lambda: m(xd), why)
                    last = None
                    continue
                if op == "poison":
                    results.append(check_poison(m, spec, seed, x, rng))
                    continue
                results.append(check_forward(m, spec, x, xd))
                last = (x, m.train)
            elif op == "backward":
                dy = draw_data(rng, shape, dtype, "normal")
                kw = {"updParamGrads": bool(rng.integers(2)), "updGrad": bool(rng.integers(2)),
                      "scale": float(rng.choice([1.0, 0.5, -2.0])),
                      "momentum": float(rng.choice([0.0, 0.9]))}
                dyd = as_view(dy, rng.choice(["whole", "strided"]), rng)
                if last is None or m.inData is None:
                    refused(m, lambda: m.backward(dyd, **kw), "backward before forward")
                    continue
                if last[0].dtype != dtype:
                    refused(m, lambda: m.backward(dyd, **kw), "dtype changed since the forward")
                    continue
                results.append(check_backward(m, spec, last, dy, dyd, kw))
            elif op == "mode":
                m.evalMode() if m.train else m.trainMode()
                assert m.inData is None and m.data is None and m.grad is None
                last = None
            elif op == "update":
                lr = float(rng.choice([0.1, -0.5]))
                expected = {n: host(v.data) + lr * host(v.grad) for n, v in m.vars.items()}
                m.updateParams(lr)
                for n, v in m.vars.items():
                    close(host(v.data), expected[n], np.float32, "updateParams %s" % n)
                results.append([host(v.data) for v in m.vars.values()])
            elif op == "calc":
                T = pick_dtype(rng)
                if T in supported:
                    m.calcMode(T)
                    assert m.calctype == T
                    trace.append(str(T))
                else:
                    refused(m, lambda: m.calcMode(T), "unsupported dtype %s" % T)
            elif op == "saveload":
                image = m.save()
                twin = make_module(spec, seed + 1)
                twin.load(image)
                for key, arr in m.stateArrays().items():
                    np.testing.assert_array_equal(twin.stateArrays()[key], arr, err_msg=key)
                refused(m, lambda: m.load(image[:len(image) // 2]), "truncated file")
                refused(twin, lambda: twin.load(b"not an hdf5 file"), "damaged file")
            else:  # bad: wrong dtype, wrong shape, non-finite argument
                bad = rng.integers(3)
                if bad == 0:
                    other = np.float64
                    refused(m, lambda: m(gpuarray.to_gpu(np.zeros(shape, other))), "dtype")
                elif bad == 1:
                    if spec["kind"] == "layer":  # any leading axes are fine: change the last
                        wrong = tuple(shape[:-1]) + (shape[-1] + 1,)
                    elif spec["kind"] == "group":  # any spatial axes are fine: the channels
                        wrong = (shape[0], shape[1] + 1) + tuple(shape[2:])
                    else:
                        wrong = tuple(shape) + (2,)
                    refused(m, lambda: m(gpuarray.to_gpu(np.zeros(wrong, dtype))), "ndim")
                    if last is not None:
                        refused(m, lambda: m.backward(gpuarray.to_gpu(np.zeros(wrong, dtype))),
                                "grad shape")
                else:
                    refused(m, lambda: m.updateParams(float("nan")), "NaN learnRate")
    return tuple(trace), results


def pick_dtype(rng):
    names = ["float32", "float16", "float64"]
    try:
        import ml_dtypes

        names.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return np.dtype(names[int(rng.integers(len(names)))])


def module_state(m):
    return {k: host(getattr(m, k)) for k in ("scale", "bias", "mean", "var")
            if getattr(m, k, None) is not None}


def check_forward(m, spec, x, xd):
    before = module_state(m)
    props = getattr(m, "numOfProps", None)
    train = m.train
    y = m(xd)
    assert y.shape == x.shape and y.dtype == x.dtype
    out = host(y)
    xc = channels_first(spec, x.astype(np.float64))
    if spec["kind"] == "bn":
        before["numOfProps"] = props
        ey, smean, sinv, rm, rv, n = bn_reference(spec, before, xc, train)
        if spec["activation"] == "relu":
            ey = np.where(ey <= 0, 0.0, ey)  # NaN stays NaN
        close(channels_first(spec, out), ey, x.dtype, "forward output", scale_by=float(
            np.nanmax(sinv) if sinv is not None else 1.0))
        close(host(m.mean).ravel(), rm, np.float32, "running mean")
        close(host(m.var).ravel(), rv, np.float32, "running var", scale_by=float(np.max(
            np.abs(rv))) if rv.size else 1.0)
        assert m.numOfProps == n
        if train and x.size:
            close(host(m.savemean).ravel(), smean, np.float32, "savemean")
            close(host(m.saveinvvar).ravel(), sinv, np.float32, "saveinvvar",
                  scale_by=float(np.max(sinv)))
        return [out, host(m.mean), host(m.var)]
    ey = row_reference(spec, xc, None, before["scale"], before["bias"])[0]
    close(out, ey, x.dtype, "forward output", scale_by=1.0 / np.sqrt(spec["epsilon"] + 1e-3))
    return [out]


def check_backward(m, spec, last, dy, dyd, kw):
    x, train = last
    grads0 = {n: host(v.grad) for n, v in m.vars.items()}
    st_ = module_state(m)
    dx = m.backward(dyd, **kw)
    xc = channels_first(spec, x.astype(np.float64))
    dyc = channels_first(spec, dy.astype(np.float64))
    if spec["kind"] == "bn" and spec["activation"] == "relu" and x.size:
        # the fused relu's gradient mask: the module's own output decides (NaN passes)
        dyc = np.where(channels_first(spec, host(m.data).astype(np.float64)) <= 0, 0.0, dyc)
    if spec["kind"] == "bn":
        if x.size == 0:
            edx, eds, edb = np.zeros(xc.shape), np.zeros(spec["maps"]), np.zeros(spec["maps"])
        elif train:
            edx, eds, edb = ref.backward_train(xc, dyc, st_["scale"].ravel(), spec["epsilon"])
        else:
            cs = ref.channel_shape(xc)
            edx = dyc * st_["scale"].reshape(cs) / np.sqrt(st_["var"].reshape(cs) + spec["epsilon"])
            eds = edb = None
        cond = 1.0 / np.sqrt(spec["epsilon"] + 1e-3)
    else:
        _, edx, eds, edb = row_reference(spec, xc, dyc, st_["scale"], st_["bias"])
        cond = 1.0 / np.sqrt(spec["epsilon"] + 1e-3)
    if kw["updGrad"]:
        assert dx is not None and dx.shape == dy.shape
        close(channels_first(spec, host(dx)), edx, dy.dtype, "dx", scale_by=cond)
    else:
        assert dx is None
    out = [None if dx is None else host(dx)]
    for name, var in m.vars.items():
        old = grads0[name]
        if kw["updParamGrads"] and train:
            new = (eds if name == "scale" else edb).reshape(old.shape)
            expected = kw["scale"] * new + kw["momentum"] * old
        else:
            expected = old
        close(host(var.grad), expected, np.float32, "%s grad" % name, scale_by=cond)
        out.append(host(var.grad))
    return out


def poison_groups(spec, shape, train):
    """An int array of ``shape`` (module layout): values with the same id share statistics."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    if spec["kind"] == "bn":
        if not train:
            return idx
        axis = -1 if (spec["nd"] == 0 or spec["layout"] == "channels_last") else 1
        return np.broadcast_to(np.arange(shape[axis]).reshape(
            [-1 if a == axis % len(shape) else 1 for a in range(len(shape))]), shape)
    per = int(np.prod(spec["shape"])) if spec["kind"] == "layer" else \
        int(np.prod(shape[1:])) // (spec["maps"] if spec["kind"] == "instance" else spec["groups"])
    return idx // per


def check_poison(m, spec, seed, x, rng):
    """The clean and the poisoned forward on two copies of ``m``; ``m`` itself is not touched."""
    if x.size == 0:
        return []
    clean, dirty = clone(m, spec, seed), clone(m, spec, seed)
    pos = tuple(int(rng.integers(s)) for s in x.shape)
    xp = x.copy()
    xp[pos] = rng.choice([np.nan, np.inf, -np.inf])
    yc, yp = host(clean(gpuarray.to_gpu(x))), host(dirty(gpuarray.to_gpu(xp)))
    groups = poison_groups(spec, x.shape, m.train)
    hit = groups == groups[pos]
    np.testing.assert_array_equal(yp[~hit], yc[~hit], err_msg="a clean value changed")
    if m.train and hit.sum() > 1:
        assert np.isnan(yp[hit]).all(), "the poisoned group is not all NaN: %s" % yp[hit]
    else:
        assert not np.isfinite(yp[hit]).any()
    if spec["kind"] == "bn" and m.train:
        ch = groups[pos]
        keep = np.arange(spec["maps"]) != ch
        for k in ("mean", "var", "savemean", "saveinvvar"):
            a, b = host(getattr(dirty, k)).ravel(), host(getattr(clean, k)).ravel()
            np.testing.assert_array_equal(a[keep], b[keep], err_msg=k)
        assert np.isnan(host(dirty.var).ravel()[ch]), "running var of the poisoned channel"
        assert np.isnan(host(dirty.saveinvvar).ravel()[ch]), "saveinvvar of the poisoned channel"
    if not m.train:
        return [yp]
    # the backward: the poisoned group's dx is NaN, every other value bitwise as without poison
    dy = rng.normal(size=x.shape).astype(x.dtype)
    dxc, dxp = host(clean.backward(gpuarray.to_gpu(dy))), host(dirty.backward(gpuarray.to_gpu(dy)))
    np.testing.assert_array_equal(dxp[~hit], dxc[~hit], err_msg="a clean dx changed")
    assert np.isnan(dxp[hit]).all(), "the poisoned group's dx is not all NaN"
    for name, var in dirty.vars.items():
        a, b = host(var.grad), host(clean.vars[name].grad)
        assert ((a == b) | np.isnan(a)).all(), "%s grad changed outside the poisoned group" % name
    return [yp, dxp]


def compare_targets(all_results):
    """Targets that took the same dtypes give the same results (within tolerance)."""
    (first, (trace0, base)), others = all_results[0], all_results[1:]
    for target, (trace, results) in others:
        if trace != trace0:
            continue
        assert len(results) == len(base), (first, target)
        for step, (a, b) in enumerate(zip(base, results)):
            for i, (u, v) in enumerate(zip(a, b)):
                if u is None or v is None:
                    assert u is None and v is None
                    continue
                what = "%s vs %s, step %d, result %d" % (first, target, step, i)
                np.testing.assert_array_equal(np.isnan(u), np.isnan(v), err_msg=what)
                finite = np.isfinite(u) & np.isfinite(v)
                tol = 2e-3 * max(1.0, float(np.max(np.abs(u[finite]), initial=0.0)))
                np.testing.assert_allclose(u[finite], v[finite], rtol=tol, atol=tol, err_msg=what)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_fuzz_sequences(scenario):
    spec, lead, spatial, ops, seed = scenario
    all_results = []
    for t in targets():
        try:
            all_results.append((t, run(t, spec, lead, spatial, ops, seed)))
        except AssertionError as e:
            raise AssertionError("on %s/%s: %s" % (t + (e,))) from None
    compare_targets(all_results)


# -- faults the fuzzing found, kept as plain cases ------------------------------------------------
@pytest.mark.parametrize("make, shape, axis", [
    (lambda: BatchNorm(3), (4, 3), 1),                  # rows x channels kernels
    (lambda: BatchNorm2D(3), (2, 3, 2, 3), 1),          # per-channel kernels
    (lambda: BatchNorm1D(3, layout="channels_last"), (2, 5, 3), 2),
], ids=["rows", "nchw", "channels_last"])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_poisoned_channel_variance_stays_nan(backend, make, shape, axis, poison):
    """The statistics kernels clamped a negative-from-rounding variance with fmaxf(var, 0), which
    also turned a NaN variance (non-finite data) into 0: a plausible running variance."""
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    pos = [1] * len(shape)
    pos[axis] = 1  # channel 1
    x[tuple(pos)] = poison
    bn = make()
    bn(gpuarray.to_gpu(x))
    assert np.isnan(bn.var.get().ravel()[1]) and np.isnan(bn.saveinvvar.get().ravel()[1])
    assert np.isfinite(bn.var.get().ravel()[[0, 2]]).all()


def test_poisoned_row_stays_nan(backend):
    """The per-row kernels had the same fmaxf clamp: a poisoned row's saved inverse deviation
    came out as 1 / sqrt(eps)."""
    x = np.random.default_rng(6).normal(size=(3, 2, 3, 4)).astype(np.float32)
    x[1, 0, 2, 1] = np.inf
    module = InstanceNorm2D(2)
    y = module(gpuarray.to_gpu(x)).get()
    assert np.isnan(y[1, 0]).all() and np.isfinite(np.delete(y.reshape(6, -1), 2, 0)).all()
    invstd = module.saveinvvar.get()
    assert np.isnan(invstd[2]) and np.isfinite(np.delete(invstd, 2)).all()


def test_backward_after_calcmode_is_refused(backend):
    """A forward in float32, calcMode(float16), then a float16 grad: the kernels got arrays of two
    dtypes and raised TypeError; now a ModuleError with the module unchanged."""
    from batchnorm_lib import config

    dtypes = [np.dtype(d) for d in config.backend_module().supported_dtypes()]
    other = next((d for d in dtypes if d != np.float32), np.dtype(np.float32))
    for module in (BatchNorm2D(2), InstanceNorm2D(2)):
        module(gpuarray.to_gpu(np.random.default_rng(7).normal(size=(3, 2, 2, 3))
                               .astype(np.float32)))
        module.calcMode(other)
        grad = gpuarray.to_gpu(np.ones((3, 2, 2, 3), other))
        if other == np.float32:  # a backend with float32 alone: nothing to refuse
            assert module.backward(grad).shape == (3, 2, 2, 3)
            continue
        refused(module, lambda: module.backward(grad), "dtype changed since the forward")
