"""HDF5 model files in PuzzleLib's layout: files built here with h5py straight from the documented
layout (params/<i>, links/<name>.<var>, attrs/<name>.<attr>), independently of Module.save, load
into our modules; our files read back through that layout alone; every file error is a
ModuleError naming the file, with the module unchanged."""

import io
import os

import h5py
import numpy as np
import pytest

from batchnorm_lib import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, ModuleError
from batchnorm_lib.backend import gpuarray
from batchnorm_lib.modules import Activation, Linear, Sequential, relu

import reference as ref


def state(module):
    """Every array and counter of a module tree, as host copies."""
    mods = module.modules if isinstance(module, Sequential) else [module]
    out = []
    for mod in mods:
        arrays = {k: v.data.get().copy() for k, v in mod.vars.items()}
        arrays.update({k: a.get().copy() for k, a in mod.attrs.items() if a is not None})
        arrays["numOfProps"] = getattr(mod, "numOfProps", None)
        out.append(arrays)
    return out


def assert_same(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert b.keys() == a.keys()
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])


def puzzlelib_file(target, modules, container=None):
    """Write ``modules`` = [(name, {var: array}, {attr: array})] as PuzzleLib's Module.save does:
    each variable in params/<running index>, links/<prefix><name>.<var> -> index, attributes in
    attrs/<prefix><name>.<attr>, where a container named ``container`` prefixes "<container>."."""
    with h5py.File(target, "w") as f:
        params, links = f.create_group("params"), f.create_group("links")
        for name, variables, attributes in modules:
            full = name if container is None else "%s.%s" % (container, name)
            for var, data in variables.items():
                idx = len(params)
                params.create_dataset(str(idx), data=data, compression="gzip")
                links["%s.%s" % (full, var)] = idx
            for attr, data in attributes.items():
                f.require_group("attrs").create_dataset("%s.%s" % (full, attr), data=data)
        if container is not None:
            f.create_group("attrs.%s" % container)


def read_puzzlelib(f, name, variables, attributes):
    """Read one module's entries back the way PuzzleLib's Module.load does."""
    got = {v: np.array(f["params"][str(f["links"]["%s.%s" % (name, v)][()])]) for v in variables}
    got.update({a: np.array(f["attrs"]["%s.%s" % (name, a)]) for a in attributes})
    return got


def f32(rng, *shape, loc=0.0):
    return (loc + rng.standard_normal(shape)).astype(np.float32)


def test_puzzlelib_sequential_file_loads(backend, rng, tmp_path):
    """A PuzzleLib net Linear -> BatchNorm -> relu -> Linear named "net", its children unnamed
    (so "0".."3") except the BatchNorm called "bn"; outputs against a float64 reference."""
    w0, b0, w3, b3 = f32(rng, 7, 5), f32(rng, 5), f32(rng, 5, 3), f32(rng, 3)
    scale, bias = f32(rng, 1, 5, 1, 1, loc=1.0), f32(rng, 1, 5, 1, 1)
    mean, var = f32(rng, 1, 5, 1, 1), (1 + rng.random((1, 5, 1, 1))).astype(np.float32)
    path = str(tmp_path / "puzzlelib.hdf")
    puzzlelib_file(path, [("0", {"W": w0, "b": b0}, {}),
                          ("bn", {"scale": scale, "bias": bias}, {"mean": mean, "var": var}),
                          ("3", {"W": w3, "b": b3}, {})], container="net")

    net = Sequential([Linear(7, 5), BatchNorm(5, name="bn"), Activation(relu), Linear(5, 3)],
                     name="net")
    net.load(path)
    net.evalMode()
    x = rng.standard_normal((9, 7))
    h = ref.forward_eval(x @ w0.astype(np.float64) + b0, scale.reshape(5), bias.reshape(5),
                         mean.reshape(5), var.reshape(5), 1e-5)
    expect = np.maximum(h, 0) @ w3.astype(np.float64) + b3
    got = net(gpuarray.to_gpu(x.astype(np.float32))).get()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    assert net[1].numOfProps == 0  # PuzzleLib's files carry no counter: it keeps its value


@pytest.mark.parametrize("cls,nd", [(BatchNorm, 0), (BatchNorm1D, 1), (BatchNorm2D, 2),
                                    (BatchNorm3D, 3)])
def test_puzzlelib_batchnorm_file_loads_unnamed(rng, tmp_path, cls, nd):
    shape = (1, 6) + (1,) * max(nd, 2)
    arrays = {"scale": f32(rng, *shape), "bias": f32(rng, *shape), "mean": f32(rng, *shape),
              "var": (1 + rng.random(shape)).astype(np.float32)}
    path = str(tmp_path / "bn.hdf")
    puzzlelib_file(path, [("", {k: arrays[k] for k in ("scale", "bias")},
                           {k: arrays[k] for k in ("mean", "var")})])
    bn = cls(6, empty=True)
    bn.load(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(bn, k).get(), v)


def test_puzzlelib_instancenorm_file_loads(rng, tmp_path):
    """PuzzleLib's InstanceNorm2D: variables scale and bias of shape (1, C, 1, 1), no attributes."""
    from batchnorm_lib import interop

    cls = interop._family("InstanceNorm2D")
    if cls is None:
        pytest.skip("InstanceNorm2D is not part of this version")
    scale, bias = f32(rng, 1, 4, 1, 1, loc=1.0), f32(rng, 1, 4, 1, 1)
    path = str(tmp_path / "inorm.hdf")
    puzzlelib_file(path, [("inorm", {"scale": scale, "bias": bias}, {})], container="seq")
    net = Sequential([cls(4, name="inorm")], name="seq")
    net.load(path)
    x = rng.standard_normal((2, 4, 3, 5))
    mean = x.mean(axis=(2, 3), keepdims=True)
    var = x.var(axis=(2, 3), keepdims=True)
    expect = (x - mean) / np.sqrt(var + 1e-5) * scale + bias
    np.testing.assert_allclose(net(gpuarray.to_gpu(x.astype(np.float32))).get(), expect,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,args", [("InstanceNorm2D", (3,)), ("LayerNorm", ((4, 2),)),
                                       ("GroupNorm", (2, 4))])
def test_other_norms_round_trip(rng, name, args):
    """The generic mechanism carries modules it has never heard of."""
    from batchnorm_lib import interop

    cls = interop._family(name)
    if cls is None:
        pytest.skip("%s is not part of this version" % name)
    mod = cls(*args, name="n")
    for var in mod.vars.values():
        var.data.set(rng.standard_normal(var.data.shape).astype(np.float32))
    other = cls(*args, name="n")
    image = mod.save()
    other.load(image)
    with h5py.File(io.BytesIO(image), "r") as f:
        assert sorted(f["links"]) == sorted("n." + k for k in mod.vars)
    for k, var in mod.vars.items():
        np.testing.assert_array_equal(other.vars[k].data.get(), var.data.get())


def test_our_file_reads_as_puzzlelib_reads_it(backend, rng):
    np.random.seed(3)
    net = Sequential([Linear(4, 6), BatchNorm(6, name="norm"), Activation(relu), Linear(6, 2)],
                     name="model")
    net(gpuarray.to_gpu(f32(rng, 5, 4)))
    with h5py.File(io.BytesIO(net.save()), "r") as f:
        assert set(f) <= {"params", "links", "attrs", "meta"}
        for child, mod in (("0", net[0]), ("3", net[3])):
            got = read_puzzlelib(f, "model." + child, ("W", "b"), ())
            np.testing.assert_array_equal(got["W"], mod.W.get())
            np.testing.assert_array_equal(got["b"], mod.b.get())
        got = read_puzzlelib(f, "model.norm", ("scale", "bias"), ("mean", "var"))
        for k, v in got.items():
            np.testing.assert_array_equal(v, getattr(net[1], k).get())
        assert len(f["params"]) == 6
        assert int(f["meta"]["model.norm.numOfProps"][()]) == 1


def test_affine_false_keeps_puzzlelib_variables(rng):
    bn = BatchNorm2D(3, affine=False)
    with h5py.File(io.BytesIO(bn.save()), "r") as f:
        got = read_puzzlelib(f, "", ("scale", "bias"), ("mean", "var"))
    np.testing.assert_array_equal(got["scale"], np.ones((1, 3, 1, 1), np.float32))
    trained = BatchNorm2D(3, affine=True)
    trained.scale.set(f32(rng, 1, 3, 1, 1, loc=1.0))
    before = state(bn)
    with pytest.raises(ModuleError, match="affine=False"):
        bn.load(trained.save())
    assert_same(before, state(bn))


def test_shared_variable_stored_once(rng):
    a, b = Linear(4, 4), Linear(4, 4)
    b.setVar("W", a.vars["W"])
    net = Sequential([a, b])
    with h5py.File(io.BytesIO(net.save()), "r") as f:
        assert len(f["params"]) == 3
        assert f["links"][".0.W"][()] == f["links"][".1.W"][()]
    other = Sequential([Linear(4, 4), Linear(4, 4)])
    other.load(net.save())
    np.testing.assert_array_equal(other[1].W.get(), a.W.get())


def test_round_trip_every_form(backend, rng, tmp_path):
    net = Sequential([BatchNorm2D(3, name="a"), BatchNorm2D(3)])
    net(gpuarray.to_gpu(f32(rng, 4, 3, 5, 3)))
    net(gpuarray.to_gpu(f32(rng, 4, 3, 5, 3)))
    expect = state(net)

    def fresh():
        return Sequential([BatchNorm2D(3, name="a"), BatchNorm2D(3)])

    path = str(tmp_path / "net.h5")
    net.save(path)
    for source in (path, tmp_path / "net.h5", net.save()):
        other = fresh()
        other.load(source)
        assert_same(expect, state(other))
    with h5py.File(str(tmp_path / "two.h5"), "w") as f:
        net.save(f.create_group("first"))
        net.save(f, name="renamed")
    with h5py.File(str(tmp_path / "two.h5"), "r") as f:
        other = fresh()
        other.load(f["first"])
        assert_same(expect, state(other))
        other = fresh()
        other.load(f, name="renamed")
        assert_same(expect, state(other))
        assert sorted(f["links"]) == ["renamed.1.bias", "renamed.1.scale", "renamed.a.bias",
                                      "renamed.a.scale"]
    assert other[0].numOfProps == 2


def test_legacy_npz_loads(rng, tmp_path):
    """Archives written by earlier versions: np.savez with keys "vars.<n>", "attrs.<n>",
    "meta.<n>" ("<index>." in front inside a Sequential)."""
    shape = (1, 4, 1, 1)
    arrays = {"scale": f32(rng, *shape), "bias": f32(rng, *shape), "mean": f32(rng, *shape),
              "var": (1 + rng.random(shape)).astype(np.float32)}
    path = str(tmp_path / "old.npz")
    np.savez(path, **{"1.vars.scale": arrays["scale"], "1.vars.bias": arrays["bias"],
                      "1.attrs.mean": arrays["mean"], "1.attrs.var": arrays["var"],
                      "1.meta.numOfProps": np.asarray(7), "0.vars.W": f32(rng, 3, 4),
                      "0.vars.b": f32(rng, 4)})
    net = Sequential([Linear(3, 4), BatchNorm(4)])
    net.load(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(net[1], k).get(), v)
    assert net[1].numOfProps == 7


def _damaged(tmp_path, good):
    """(label, path) of broken files: missing, a directory, empty, truncated, bytes flipped in
    the middle, a text file, a damaged .npz, an HDF5 file of something else."""
    files = {"missing": str(tmp_path / "missing.h5"), "directory": str(tmp_path)}
    raw = {"empty": b"", "truncated": good[: len(good) // 2], "text": b"scale = 1.0\n" * 10,
           "npz": b"PK\x03\x04" + b"\0" * 40}
    flipped = bytearray(good)
    for i in range(0, len(flipped), 7):
        flipped[i] ^= 0x5A
    raw["flipped"] = bytes(flipped)
    archive = io.BytesIO()
    np.savez(archive, **{"vars.scale": np.ones((1, 3, 1, 1), np.float32)})
    raw["npz-truncated"] = archive.getvalue()[:-30]
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["data"] = np.arange(3)
    raw["other"] = buf.getvalue()
    for label, data in raw.items():
        path = str(tmp_path / ("%s.h5" % label))
        with open(path, "wb") as f:
            f.write(data)
        files[label] = path
    return files


def test_every_file_error_is_a_module_error(backend, rng, tmp_path):
    good = BatchNorm2D(3).save()
    bn = BatchNorm2D(3)
    bn(gpuarray.to_gpu(f32(rng, 4, 3, 2, 3)))
    before = state(bn)
    for label, path in _damaged(tmp_path, good).items():
        with pytest.raises(ModuleError) as info:
            bn.load(path)
        assert path in str(info.value), label
        assert_same(before, state(bn))
    with pytest.raises(ModuleError, match="bytes"):
        bn.load(good[:100])
    with pytest.raises(ModuleError, match="path, bytes or an h5py"):
        bn.load(3.5)
    assert_same(before, state(bn))


def _edit(good, edit):
    buf = io.BytesIO(good)
    with h5py.File(buf, "r+") as f:
        edit(f)
    return buf.getvalue()


@pytest.mark.parametrize("edit,match", [
    (lambda f: f["links"].__delitem__(".1.scale"), "lacks links/.1.scale"),
    (lambda f: f["attrs"].__delitem__(".1.var"), "lacks attrs/.1.var"),
    (lambda f: f["links"].move(".0.W", ".0.Wx"), "lacks links/.0.W"),
    (lambda f: f["params"].__delitem__("0"), "lacks params/0"),
    (lambda f: (f["links"].__delitem__(".1.bias"), f["links"].create_dataset(".1.bias", data=2.5)),
     "not an integer index"),
    (lambda f: (f["attrs"].__delitem__(".1.mean"),
                f["attrs"].create_dataset(".1.mean", data=np.zeros((1, 4, 1, 1), np.float32))),
     r"attrs/.1.mean in .* has shape \(1, 4, 1, 1\), expected \(1, 3, 1, 1\)"),
    (lambda f: (f["attrs"].__delitem__(".1.mean"),
                f["attrs"].create_dataset(".1.mean", data=np.array([[[[b"a"]], [[b"b"]],
                                                                     [[b"c"]]]]))),
     "has dtype"),
    (lambda f: (f["meta"].__delitem__(".1.numOfProps"),
                f["meta"].create_dataset(".1.numOfProps", data=-3)), "numOfProps"),
])
def test_wrong_entries_refused_whole(rng, edit, match):
    """The second child is wrong: the first, already checked, must not change either."""
    def make():
        return Sequential([Linear(3, 3), BatchNorm2D(3)])

    good = make().save()
    net = make()
    net[1](gpuarray.to_gpu(f32(rng, 2, 3, 2, 2)))
    before = state(net)
    with pytest.raises(ModuleError, match=match) as info:
        net.load(_edit(good, edit))
    assert "bytes given" in str(info.value)
    assert_same(before, state(net))


def test_wrong_module_name_refused(rng, tmp_path):
    path = str(tmp_path / "bn.h5")
    BatchNorm2D(3, name="first").save(path)
    bn = BatchNorm2D(3, name="second")
    before = state(bn)
    with pytest.raises(ModuleError, match="lacks links/second.scale") as info:
        bn.load(path)
    assert path in str(info.value)
    assert_same(before, state(bn))


def test_save_errors(tmp_path):
    bn = BatchNorm2D(3)
    with pytest.raises(FileNotFoundError):
        bn.save(str(tmp_path / "no" / "such" / "dir" / "bn.h5"))
    with pytest.raises(IsADirectoryError):
        bn.save(str(tmp_path))
    with pytest.raises(ModuleError, match="nothing to save"):
        BatchNorm2D(3, empty=True).save()
    clash = Sequential([BatchNorm2D(3, name="x"), BatchNorm2D(3, name="y")])
    clash[1].name = "x"  # append renames a taken name (PuzzleLib's acquire); a later rename can clash
    with pytest.raises(ModuleError, match="several children are named 'x'"):
        clash.save()
    with h5py.File(str(tmp_path / "f.h5"), "w") as f:
        bn.save(f)
        with pytest.raises(ModuleError, match="already holds links/.scale"):
            bn.save(f)
    with h5py.File(str(tmp_path / "f.h5"), "r") as f:
        with pytest.raises(ModuleError, match="cannot write to .*f.h5"):
            BatchNorm2D(3, name="other").save(f)
    assert os.listdir(str(tmp_path)) == ["f.h5"]
