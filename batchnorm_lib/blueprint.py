"""Blueprints: a network's construction recipe stored beside its weights.

``net.save(path, withBlueprint=True)`` writes the HDF5 file of ``Module.save`` plus a ``blueprint``
dataset: the JSON of ``net.getBlueprint()`` (``{"classname", "scheme"}``, and for a Sequential its
``modules`` and ``graph``), as PuzzleLib does. ``load(path)`` builds the network from it and loads
the weights::

    >>> from batchnorm_lib import blueprint
    >>> net = blueprint.load("model.hdf")        # doctest: +SKIP
"""

import enum
import io
import json

import numpy as np

from batchnorm_lib.modules.module import ModuleError

# constructor arguments that are process resources, not recipe: stored as None
RUNTIME_ARGUMENTS = ("comm",)


class BlueprintError(ModuleError):
    """A blueprint that cannot be stored or built."""


def _factory():
    from batchnorm_lib import modules

    return {name: getattr(modules, name) for name in modules.__all__
            if isinstance(getattr(modules, name), type)
            and issubclass(getattr(modules, name), modules.Module)
            and name != "Module"}


def _jsonable(value, where):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (np.dtype, type)) and np.dtype(value).kind in "fiub":
        return str(np.dtype(value))
    if isinstance(value, np.generic):
        return value.item()
    raise BlueprintError("cannot store %r (%s) in a blueprint" % (value, where))


def dumps(module):
    """The JSON text of ``module.getBlueprint()``."""
    def scrub(bp):
        scheme = {k: (None if k in RUNTIME_ARGUMENTS else v) for k, v in bp["scheme"].items()}
        out = dict(bp, scheme=scheme)
        if "modules" in bp:
            out["modules"] = {k: scrub(v) for k, v in bp["modules"].items()}
        return out

    bp = scrub(module.getBlueprint())
    try:
        return json.dumps(bp, indent=4, sort_keys=True,
                          default=lambda v: _jsonable(v, bp["classname"]))
    except (TypeError, ValueError) as e:
        raise BlueprintError("%s: %s" % (module, e)) from None


def save(module, hdf=None, name=None, compress="gzip"):
    """``Module.save(..., withBlueprint=True)``: the file ``Module.save`` writes, plus the
    ``blueprint`` dataset."""
    from batchnorm_lib.modules import hdf5

    text = dumps(module)  # refused before any file is touched
    if hdf is not None and hdf5.is_h5(hdf):
        if "blueprint" in hdf:
            raise ModuleError("%s: %s already holds a blueprint" % (module, hdf5.describe(hdf)))
        hdf5.save(module, hdf, name, compress)
        _write_text(hdf, text)
        return None
    buffer = io.BytesIO(hdf5.save(module, None, name, compress))
    with _h5py().File(buffer, "r+") as f:
        _write_text(f, text)
    if hdf is None:
        return buffer.getvalue()
    with open(hdf, "wb") as f:  # written whole: a refused save leaves no partial file
        f.write(buffer.getvalue())
    return None


def _h5py():
    import h5py

    return h5py


def _write_text(group, text):
    group.create_dataset("blueprint", data=text, dtype=_h5py().string_dtype())


def build(blueprint):
    """A new module (untrained weights) from a blueprint dict."""
    factory = _factory()
    try:
        classname, scheme = blueprint["classname"], dict(blueprint["scheme"])
    except (KeyError, TypeError):
        raise BlueprintError("not a blueprint: %r" % (blueprint,)) from None
    cls = factory.get(classname)
    if cls is None:
        raise BlueprintError("cannot build a module of class %r (known: %s)"
                             % (classname, ", ".join(sorted(factory))))
    if classname == "Sequential":
        seq = cls(name=scheme.get("name"))
        for child in blueprint.get("graph", []):
            seq.append(build(blueprint["modules"][child]))
        return seq
    if "initscheme" in scheme:
        scheme["initscheme"] = "none"  # the weights come from the file
    if isinstance(scheme.get("initscheme"), list):
        scheme["initscheme"] = tuple(scheme["initscheme"])
    try:
        return cls(**scheme)
    except TypeError as e:
        raise BlueprintError("cannot build %s from %r: %s" % (classname, scheme, e)) from None


def load(hdf, name=None):
    """Build the network stored with ``save(..., withBlueprint=True)`` in ``hdf`` (a path, the
    bytes ``save()`` returned, or an open h5py File) and load its weights."""
    from batchnorm_lib.modules import hdf5

    group, where, close = hdf5.open_source(hdf, "blueprint.load")
    try:
        if group is None or "blueprint" not in group:
            raise BlueprintError("%s holds no blueprint (save it with withBlueprint=True)" % where)
        raw = group["blueprint"][()]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            blueprint = json.loads(text)
        except ValueError as e:
            raise BlueprintError("%s: the blueprint is not valid JSON: %s" % (where, e)) from None
        module = build(blueprint)
        module.load(group, name=name)
    finally:
        if close is not None:
            close()
    return module
