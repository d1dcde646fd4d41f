"""The gpuarray shim's pycuda surface on every backend: arithmetic with pycuda's dtype rules,
comparisons, reductions, creation functions, basic-indexing views sharing memory, and modules and
costs on strided views; all against float64 numpy references on odd sizes."""

import numpy as np
import pytest

from batchnorm_lib import config
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.cost import CrossEntropy
from batchnorm_lib.modules import BatchNorm2D, Linear, ModuleError

SHAPE = (7, 13)


def _pair(rng, dtype=np.float32):
    a = rng.standard_normal(SHAPE) * 3
    b = rng.standard_normal(SHAPE) * 3 + 0.5
    if np.dtype(dtype).kind == "i":
        a, b = np.round(a), np.round(b)
        b[b == 0] = 3
    return a.astype(dtype), b.astype(dtype)


def _close(dev, ref, dtype=np.float32):
    assert dev.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dev.get(), ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_binary_array_array_and_in_place(backend, rng, op):
    a, b = _pair(rng)
    fn = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op]
    ref = fn(a.astype(np.float64), b.astype(np.float64))
    x, y = gpuarray.to_gpu(a), gpuarray.to_gpu(b)
    _close(eval("x %s y" % op), ref)
    z = x.copy()
    exec("z %s= y" % op)
    _close(z, ref)
    np.testing.assert_array_equal(x.get(), a)  # operands untouched


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**"])
def test_scalar_operands_both_sides(backend, rng, op):
    a = np.abs(_pair(rng)[0]) + 0.25
    x = gpuarray.to_gpu(a)
    fn = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power}[op]
    a64 = a.astype(np.float64)
    for s in (2.5, 3):
        _close(eval("x %s s" % op), fn(a64, s))   # a Python scalar keeps float32
        _close(eval("s %s x" % op), fn(s, a64))


def test_unary_abs_neg_pos(backend, rng):
    a = _pair(rng)[0]
    x = gpuarray.to_gpu(a)
    _close(-x, -a.astype(np.float64))
    _close(abs(x), np.abs(a.astype(np.float64)))
    assert +x is x


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_comparisons_give_ones_and_zeros_of_the_left_dtype(backend, rng, op):
    a, b = _pair(rng)
    b[0] = a[0]  # some ties
    x, y = gpuarray.to_gpu(a), gpuarray.to_gpu(b)
    ref = eval("a %s b" % op).astype(np.float64)
    _close(eval("x %s y" % op), ref)
    _close(eval("x %s 0.5" % op), eval("a %s 0.5" % op).astype(np.float64))


def test_int32_arithmetic(backend, rng):
    a, b = _pair(rng, np.int32)
    x, y = gpuarray.to_gpu(a), gpuarray.to_gpu(b)
    np.testing.assert_array_equal((x + y).get(), a + b)
    np.testing.assert_array_equal((x * 3 - 1).get(), a * 3 - 1)
    assert (x + y).dtype == np.int32
    # C division truncates toward zero
    np.testing.assert_array_equal((x / y).get(), np.trunc(a / b).astype(np.int32))
    np.testing.assert_array_equal((x > 0).get(), (a > 0).astype(np.int32))


def test_refusals_are_clear(backend, rng):
    a = gpuarray.to_gpu(_pair(rng)[0])
    with pytest.raises(ValueError, match="does not broadcast"):
        a + gpuarray.to_gpu(np.ones(SHAPE[1], np.float32))
    with pytest.raises(TypeError, match="float32 and int32 only"):
        gpuarray.to_gpu(np.ones(3, np.int32)) + gpuarray.to_gpu(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="float32 and int32 only"):
        gpuarray.to_gpu(np.ones(3, np.float64)) * 2
    with pytest.raises(RuntimeError, match="only contiguous arrays"):
        a[:, ::2] + 1
    with pytest.raises(TypeError):
        a + "x"
    i = gpuarray.to_gpu(np.ones(3, np.int32))
    with pytest.raises(TypeError, match="float32 and int32 only"):
        i += 0.5
    np.testing.assert_array_equal(i.get(), [1, 1, 1])


def test_mul_add_sum_dot_max_min(backend, rng):
    a, b = _pair(rng)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    x, y = gpuarray.to_gpu(a), gpuarray.to_gpu(b)
    _close(x.mul_add(2.0, y, -0.5), 2 * a64 - 0.5 * b64)
    s, d = gpuarray.sum(x), gpuarray.dot(x, y)
    assert s.shape == () and s.dtype == np.float32
    assert float(s.get()) == pytest.approx(a64.sum(), rel=1e-5, abs=1e-4)
    assert float(d.get()) == pytest.approx((a64 * b64).sum(), rel=1e-5, abs=1e-4)
    assert float(gpuarray.maximum(x).get()) == a.max()
    assert float(gpuarray.minimum(x).get()) == a.min()
    _close(gpuarray.maximum(x, y), np.maximum(a64, b64))
    _close(gpuarray.minimum(x, y), np.minimum(a64, b64))
    _close(gpuarray.if_positive(x, x, y), np.where(a > 0, a64, b64))
    labels = gpuarray.to_gpu(rng.integers(-3, 9, 1001).astype(np.int32))
    assert int(gpuarray.minimum(labels).get()) == labels.get().min()
    assert int(gpuarray.sum(labels).get()) == labels.get().sum()


def test_creation_functions_and_astype(backend, rng):
    a = _pair(rng)[0]
    x = gpuarray.to_gpu(a)
    for fn, value in ((gpuarray.zeros_like, 0), (gpuarray.ones_like, 1)):
        z = fn(x)
        assert z.shape == x.shape and z.dtype == x.dtype and (z.get() == value).all()
    e = gpuarray.empty_like(x)
    assert e.shape == x.shape and gpuarray.is_array(e)
    np.testing.assert_allclose(gpuarray.arange(3, 20, 2.5, dtype=np.float32).get(),
                               np.arange(3, 20, 2.5))
    np.testing.assert_array_equal(gpuarray.arange(11, dtype=np.int32).get(), np.arange(11))
    np.testing.assert_array_equal(x.astype(np.int32).get(), a.astype(np.int32))
    h = x.astype(np.float16)
    np.testing.assert_array_equal(h.get(), a.astype(np.float16))
    np.testing.assert_array_equal(h.astype(np.float32).get(), a.astype(np.float16).astype(np.float32))
    pooled = gpuarray.empty((5, 3), np.float32, allocator=gpuarray.memoryPool)
    assert pooled.shape == (5, 3)
    assert gpuarray.dtypesSupported()[0] == (np.float32, 1e-5)


@pytest.mark.parametrize("index", [
    np.s_[2], np.s_[-1], np.s_[1:5], np.s_[1:6:2], np.s_[::-2], np.s_[:, 3], np.s_[:, 2:11:3],
    np.s_[..., 4], np.s_[3, ...], np.s_[None, 1:3], np.s_[5:2], np.s_[-4:, -3::-1],
])
def test_basic_indexing_views_share_memory(backend, rng, index):
    a = rng.standard_normal((6, 5, 11)).astype(np.float32)  # odd sizes
    x = gpuarray.to_gpu(a)
    v = x[index]
    ref = a[index]
    assert v.shape == ref.shape
    np.testing.assert_array_equal(v.get(), ref)
    assert v.strides == ref.strides
    assert v.flags.c_contiguous == ref.flags.c_contiguous
    assert v.flags.f_contiguous == ref.flags.f_contiguous
    if ref.size:
        new = rng.standard_normal(ref.shape).astype(np.float32)
        v.set(new)  # writes through the view into x's memory
        expect = a.copy()
        expect[index] = new
        np.testing.assert_array_equal(x.get(), expect)
        x[index] = ref  # setitem from a host array restores it
        np.testing.assert_array_equal(x.get(), a)


def test_setitem_scalar_and_transpose(backend, rng):
    a = rng.standard_normal((5, 7)).astype(np.float32)
    x = gpuarray.to_gpu(a)
    x[1:3] = 2.0
    a[1:3] = 2.0
    np.testing.assert_array_equal(x.get(), a)
    with pytest.raises(RuntimeError, match="only contiguous"):
        x[:, 1:3] = 1.0  # pycuda fills, and a strided fill is refused there too
    x[:, 1:3] = np.full((5, 2), 4.0, np.float32)  # an array source copies through the view
    a[:, 1:3] = 4.0
    np.testing.assert_array_equal(x.get(), a)
    t = x.T
    assert t.shape == (7, 5) and t.flags.f_contiguous and not t.flags.c_contiguous
    np.testing.assert_array_equal(t.get(), a.T)
    np.testing.assert_array_equal(t.copy().get(), a.T)
    assert t.copy().flags.c_contiguous
    with pytest.raises(IndexError, match="basic indexing"):
        x[[0, 1]]
    with pytest.raises(IndexError):
        x[5]


def test_modules_and_costs_copy_strided_views_once(backend, rng):
    big = rng.standard_normal((9, 4, 5, 6)).astype(np.float32)
    x = gpuarray.to_gpu(big)
    view = x[::2, :, 1:4]  # strided, non-contiguous
    assert not view.flags.c_contiguous
    bn = BatchNorm2D(4)
    ref = bn(gpuarray.to_gpu(np.ascontiguousarray(big[::2, :, 1:4]))).get()
    y = bn(view)  # training: the batch statistics alone decide the output
    np.testing.assert_array_equal(y.get(), ref)
    np.testing.assert_array_equal(x.get(), big)  # the input is not written
    dx = bn.backward(gpuarray.to_gpu(np.ones(y.shape, np.float32))[:, :, :])
    assert dx.shape == y.shape

    lin = Linear(7, 3)
    data = gpuarray.to_gpu(rng.standard_normal((7, 11)).astype(np.float32))
    out = lin(data.T)
    expect = data.get().T.astype(np.float64) @ lin.W.get() + lin.b.get()
    np.testing.assert_allclose(out.get(), expect, rtol=1e-5, atol=1e-5)

    scores = gpuarray.to_gpu(rng.standard_normal((10, 3)).astype(np.float32))
    labels = gpuarray.to_gpu(rng.integers(0, 3, 5).astype(np.int32))
    err, grad = CrossEntropy()(scores[::2], labels)
    err2, _ = CrossEntropy()(scores[::2].copy(), labels)
    assert err == err2 and grad.flags.c_contiguous

    inplace = BatchNorm2D(4, inplace=True)
    inplace.evalMode()
    with pytest.raises(ModuleError, match="contiguous"):
        inplace(view)
    assert inplace.inData is None


def test_elementwise_kernels_clean_under_the_sanitizer(monkeypatch, rng):
    """Every elementwise.cu entry the shim launches, in the simulator's instrumented build (races,
    uninitialized loads, out-of-bounds accesses raise LaunchError), on odd sizes."""
    from conftest import active_backend
    from batchnorm_lib.backend.cudasim import instrument

    with active_backend("cudasim"):
        monkeypatch.setenv(instrument.SANITIZE_ENV, "1")
        a = rng.standard_normal(1031).astype(np.float32)
        b = rng.standard_normal(1031).astype(np.float32) + 3
        x, y = gpuarray.to_gpu(a), gpuarray.to_gpu(b)
        results = [x + y, x - 2.0, 3.0 - x, x * y, x / y, x / 4.0, 2.0 / y, abs(x) ** 1.5,
                   2.0 ** x, -x, x > y, x <= 0.5, x.mul_add(2.0, y, 3.0),
                   gpuarray.maximum(x, y), gpuarray.if_positive(x, x, y)]
        sums = [gpuarray.sum(x), gpuarray.dot(x, y), gpuarray.maximum(x), gpuarray.minimum(y)]
        i = x.astype(np.int32)
        ints = [i + 1, i * i, i / 3, i > 0, gpuarray.sum(i), gpuarray.arange(37, dtype=np.int32),
                i.astype(np.float32), x.astype(np.float16).astype(np.float32),
                gpuarray.zeros((5, 7), np.float32)]
        assert float(sums[0].get()) == pytest.approx(a.astype(np.float64).sum(), abs=1e-3)
        np.testing.assert_allclose(results[3].get(), a * b, rtol=1e-6)
        assert len(results) + len(ints) == 24
