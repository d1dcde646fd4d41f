"""Module files in PuzzleLib's HDF5 layout (through h5py).

For a module called ``name`` (``""`` when unnamed; inside a container ``<container>.<child>``):

``params/<i>``
    the data of one Variable; a Variable shared by several modules is stored once
``links/<name>.<var>``
    the integer ``i`` of that variable's ``params`` entry
``attrs/<name>.<attr>``
    the module's other arrays (running mean and variance, ...)
``meta/<name>.<key>``
    state of this library that PuzzleLib's loader never reads (``numOfProps``)

The functions here are the building blocks of ``Module.save``/``Module.load``: ``write_module``
and ``read_module`` work on an open h5py File or Group, ``open_source`` turns a path, bytes or an
h5py object into one, so other file features (a blueprint next to the weights) reuse them.
"""

import io
import os
import zipfile

import numpy as np

from batchnorm_lib.modules.module import ModuleError, check_state_entry

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
GROUPS = {"vars": "links", "attrs": "attrs", "meta": "meta"}


def _h5py():
    # imported on first use: h5py is a dependency, but most programs never touch a file
    import h5py

    return h5py


def is_h5(obj):
    h5py = _h5py()
    return isinstance(obj, (h5py.File, h5py.Group))


def describe(group):
    """How error messages name an open h5py File/Group: its file name, and the group if not root."""
    filename = group.file.filename
    return filename if group.name == "/" else "%s:%s" % (filename, group.name)


def _name_of(group):
    try:
        return describe(group)
    except Exception:  # a closed file has no name left to ask for
        return repr(group)


def root_name(module, name=None):
    if name is not None:
        return str(name)
    return module.name if module.name is not None else ""


# -- writing -------------------------------------------------------------------------------------
def write_module(module, group, name=None, compress="gzip"):
    """Write ``module`` (and its children) into the open h5py ``group`` in PuzzleLib's layout,
    under ``name`` (default: the module's own)."""
    arrays = module.stateArrays()
    entries = list(module.stateEntries(root_name(module, name)))
    missing = [key for key, _, _, _ in entries if key not in arrays]
    if missing:
        raise ModuleError("%s: nothing to save for %s (parameters not initialized: built with "
                          "empty=True?)" % (module, ", ".join(missing)))
    taken = [GROUPS[kind] + "/" + entry for _, kind, entry, _ in entries
             if GROUPS[kind] in group and entry in group[GROUPS[kind]]]
    if taken:
        raise ModuleError("%s: %s already holds %s" % (module, describe(group), ", ".join(taken)))

    params = group.require_group("params")
    stored = {}  # id(Variable) -> its params index, so a shared variable is written once
    for key, kind, entry, var in entries:
        data = np.asarray(arrays[key])
        if kind == "vars":
            index = stored.get(id(var)) if var is not None else None
            if index is None:
                index = len(params)
                while str(index) in params:
                    index += 1
                _dataset(params, str(index), data, compress)
                if var is not None:
                    stored[id(var)] = index
            group.require_group("links")[entry] = index
        else:
            _dataset(group.require_group(GROUPS[kind]), entry, data,
                     compress if kind == "attrs" else None)


def _dataset(group, name, data, compress):
    # HDF5 cannot compress scalars or empty arrays
    if compress is None or data.ndim == 0 or data.size == 0:
        group.create_dataset(name, data=data)
    else:
        group.create_dataset(name, data=data, compression=compress)


def save(module, hdf=None, name=None, compress="gzip"):
    """``Module.save``: into an open h5py File/Group, to a path, or (``hdf=None``) return bytes."""
    if hdf is not None and is_h5(hdf):
        try:
            write_module(module, hdf, name, compress)
        except ModuleError:
            raise
        except Exception as e:  # h5py's refusals: a read-only file, a closed one, ...
            raise ModuleError("%s: cannot write to %s: %s" % (module, _name_of(hdf), e)) from None
        return None
    image = file_image(lambda f: write_module(module, f, name, compress))
    if hdf is None:
        return image
    # the image is complete before the file is opened: a refused save leaves no partial file, and
    # an unwritable path raises the operating system's own OSError
    with open(hdf, "wb") as f:
        f.write(image)
    return None


def file_image(write):
    """Bytes of a new HDF5 file that ``write(h5py_file)`` fills."""
    buffer = io.BytesIO()
    with _h5py().File(buffer, "w") as f:
        write(f)
    return buffer.getvalue()


# -- reading -------------------------------------------------------------------------------------
def read_module(module, group, where=None, name=None):
    """Read and check everything ``module`` needs from ``group``; return ``{key: ndarray}`` with
    the keys of ``module.stateSpec()`` (plus ``meta.`` keys found). Nothing is changed; every
    problem is a ModuleError naming the HDF5 key and the file."""
    where = where or describe(group)
    spec = module.stateSpec()
    contents = {}
    for key, kind, entry, _ in module.stateEntries(root_name(module, name)):
        label = GROUPS[kind] + "/" + entry
        try:
            if kind == "meta" and not (GROUPS[kind] in group and entry in group[GROUPS[kind]]):
                continue  # PuzzleLib's files have no meta group: counters keep their values
            if kind == "vars":
                link = group[label][()]
                if np.ndim(link) != 0 or not np.issubdtype(np.asarray(link).dtype, np.integer):
                    raise ModuleError("%s: %s in %s is not an integer index into params/"
                                      % (module, label, where))
                label = "params/%d (from %s)" % (int(link), label)
                value = group["params/%d" % int(link)][()]
            else:
                value = group[label][()]
        except KeyError:
            raise ModuleError("%s: %s lacks %s" % (module, where, label)) from None
        except ModuleError:
            raise
        except Exception as e:  # h5py reports damage as OSError, RuntimeError, ValueError, ...
            raise ModuleError("%s: cannot read %s from %s: %s" % (module, label, where, e)) from None
        value = np.asarray(value)
        if key in spec:
            shape, dtype = spec[key]
            value = check_state_entry(module, label, value, shape, dtype, where)
        contents[key] = value
    return contents


def open_source(source, owner):
    """``(h5py File or Group, where, close)`` for a path, the bytes ``save()`` returned, or an open
    h5py File/Group; legacy ``.npz`` paths give ``(None, where, None)``. Any failure to open is a
    ModuleError naming the file."""
    h5py = _h5py()
    if is_h5(source):
        return source, describe(source), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = "the %d bytes given" % len(source)
        try:
            f = h5py.File(io.BytesIO(bytes(source)), "r")
        except Exception as e:
            raise ModuleError("%s: cannot read %s as HDF5: %s" % (owner, where, e)) from None
        return f, where, f.close
    try:
        path = os.fspath(source)
    except TypeError:
        raise ModuleError("%s: load takes a path, bytes or an h5py File/Group, got %s"
                          % (owner, type(source).__name__)) from None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModuleError("%s: cannot read %s: %s" % (owner, path, e)) from None
    if head.startswith(ZIP_SIGNATURE):
        return None, path, None
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        kind = "damaged or truncated HDF5 file" if head == HDF5_SIGNATURE else \
            "neither an HDF5 file nor an .npz archive"
        raise ModuleError("%s: cannot read %s: %s (%s)" % (owner, path, kind, e)) from None
    return f, path, f.close


def load(module, source, name=None):
    """``Module.load``: check the whole file, then apply it."""
    group, where, close = open_source(source, module)
    try:
        if group is None:
            contents = read_npz(module, where)
        else:
            contents = read_module(module, group, where, name)
    finally:
        if close is not None:
            close()
    for apply in module.stageState(contents, "", where):
        apply()


def read_npz(module, path):
    """The ``.npz`` archives of earlier versions (keys as ``stateArrays``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ModuleError("%s: cannot read %s: damaged .npz archive (%s)"
                          % (module, path, e)) from None
