"""Save a capture to a directory and load it back, in another process, without the model.

>>> import numpy as np, tempfile
>>> from getlocal import saved
>>> path = saved.save(tempfile.mkdtemp() + "/run1", {"Attention.forward": [np.eye(3, dtype=np.float32)]})
>>> saved.load(path)["Attention.forward"][0].shape
(3, 3)

A capture is either an :class:`~getlocal.maps.AttentionMaps` (what an adapter's
``collect()`` returns: labels, steps and token layouts) or a raw cache
(``get_local.cache``, a dict ``{key: [value per call]}``, saved with the call
index and owner type of each entry when ``calls=`` is given or the cache is
``get_local.cache`` itself). ``load`` gives back the same type.

The directory holds ``capture.json`` (the index) and ``arrays/NNNNN.safetensors``
(one array per file). The index records the format version, the getlocal
version, and per array its file, key, shape, dtype, byte size and sha256;
then the labels. Loading checks every file against the index before reading
it and never executes anything from the files (JSON and safetensors only, no
pickle). Arrays come back as numpy arrays. Torch tensors are saved as their
numpy values; bfloat16, which numpy lacks, is saved as float32 (exact: every
bfloat16 is a float32) and the index keeps ``"source": "torch.bfloat16"``.

Saving is atomic: everything is written into a temporary directory beside
the target, which is renamed into place only when complete, so an
interrupted save never damages a capture already there.
"""
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ._convert import is_tensor
from ._errors import GetLocalError
from .maps import AttentionMap, AttentionMaps, TokenLayout

INDEX = "capture.json"
FORMAT = "getlocal.capture"
FORMAT_VERSION = 1
_ARRAYS = "arrays"
_TENSOR = "data"  # the tensor's name inside each safetensors file
# dtypes safetensors' numpy API writes and reads
_DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
           "float16", "float32", "float64"}


@dataclass
class Saved:
    """Everything :func:`read` found in a capture directory.

    ``data``: the ``AttentionMaps`` or cache dict (what :func:`load` returns);
    ``calls``: for a cache, ``{key: [call index per entry]}`` (None where
    unknown); ``owners``: ``{key: [type name of the call's owner per entry]}``;
    ``images``: ``{name: array}`` saved beside it; ``info``: the free-form dict
    given to :func:`save`; ``version``: the getlocal version that wrote it.
    """

    path: Path
    data: Union[AttentionMaps, Dict[str, List[Any]]]
    images: Dict[str, np.ndarray] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    calls: Optional[Dict[str, List[Optional[int]]]] = None
    owners: Optional[Dict[str, List[Optional[str]]]] = None
    version: str = ""


# --------------------------------------------------------------------------- save


def save(path, capture, *, calls=None, images: Optional[Dict[str, Any]] = None,
         info: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``capture`` to the directory ``path`` (replacing a capture there) and return its path.

    ``capture``: ``AttentionMaps`` or a cache dict ``{key: [values]}``; values
    are arrays, tensors, plain JSON values, or lists/tuples/dicts of these
    (several captured names give ``{name: value}`` dicts). ``calls``: the
    matching ``get_local.calls`` (taken from ``get_local`` when ``capture`` is
    ``get_local.cache``). ``images``: pictures to keep beside the maps
    (``{name: HxWxC array}``), e.g. for overlays drawn later. ``info``: any
    JSON-serialisable dict (model name, weights, preprocessing).

    >>> import numpy as np, tempfile
    >>> p = save(tempfile.mkdtemp() + "/c", {"f": [np.zeros(2)]}, info={"model": "toy"})
    >>> sorted(os.listdir(p))
    ['arrays', 'capture.json']
    """
    target = Path(path)
    _check_target(target)
    writer = _Writer()
    index: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                             "getlocal_version": _version()}
    if isinstance(capture, AttentionMaps):
        index["kind"] = "maps"
    elif isinstance(capture, dict):
        index["kind"] = "cache"
        calls = _default_calls(capture, calls)
    else:
        raise GetLocalError(
            f"save() takes AttentionMaps (an adapter's collect()) or a cache dict such as get_local.cache; "
            f"got {type(capture).__name__}")
    try:
        info_json = json.loads(json.dumps(info or {}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise GetLocalError(f"save(info=...) must be JSON-serialisable (str keys, finite numbers): {exc}") from None

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        writer.root = tmp
        (tmp / _ARRAYS).mkdir()
        if index["kind"] == "maps":
            index["maps"] = [dict(m.meta(), array=writer.add(m.array, f"maps[{i}]"))
                             for i, m in enumerate(capture)]
            index["layouts"] = {k: v.to_dict() for k, v in capture.layouts.items()}
        else:
            index["cache"] = _encode_cache(capture, calls, writer)
        index["images"] = {str(name): {"array": writer.add(np.asarray(im), f"images[{name!r}]")}
                           for name, im in (images or {}).items()}
        index["info"] = info_json
        index["arrays"] = writer.records
        with open(tmp / INDEX, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1, allow_nan=False)
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _version() -> str:
    from . import __version__

    return __version__


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise GetLocalError(f"cannot save to {target}: it is a file; give a directory path")
    if target.is_dir() and any(target.iterdir()) and not (target / INDEX).is_file():
        raise GetLocalError(
            f"cannot save to {target}: it is a directory with files but not a getlocal capture "
            f"(no {INDEX}); give a new or empty directory, or remove it first")


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished capture into place; the old one is removed only after the new one is there."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "capture")
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:  # put the old capture back
            os.replace(old / "capture", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _default_calls(cache, calls):
    if calls is not None:
        return calls
    from . import get_local

    return get_local.calls if cache is get_local.cache else None


class _Writer:
    """Writes one safetensors file per array and keeps its index record."""

    def __init__(self):
        self.root: Optional[Path] = None
        self.records: List[Dict[str, Any]] = []

    def add(self, value, key: str) -> int:
        _serialize = _safetensors().save
        arr, source = _to_numpy(value, key)
        number = len(self.records)
        name = f"{_ARRAYS}/{number:05d}.safetensors"
        # safetensors writes a 0-d array as shape [1]; the index keeps [] and load reshapes
        blob = _serialize({_TENSOR: np.ascontiguousarray(arr.reshape(arr.shape or (1,)))})
        with open(self.root / name, "wb") as f:
            f.write(blob)
        self.records.append({"file": name, "key": key, "shape": list(arr.shape), "dtype": arr.dtype.name,
                             "source": source, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
        return number


def _is_array(value) -> bool:
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, (np.str_, np.bytes_)):
        return True
    return is_tensor(value)


def _to_numpy(value, key):
    if is_tensor(value):
        torch = sys.modules["torch"]
        source = str(value.dtype)  # 'torch.bfloat16'
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact; the index keeps the original dtype in "source"
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        arr = t.numpy()
    else:
        arr = np.asarray(value)
        source = f"numpy.{arr.dtype.name}"
    if arr.dtype.name not in _DTYPES:
        raise GetLocalError(
            f"cannot save {key}: dtype {arr.dtype} is not one safetensors stores "
            f"({', '.join(sorted(_DTYPES))}); convert it first, e.g. .astype('float32')")
    return arr, source


def _encode_cache(cache, calls, writer: _Writer) -> Dict[str, Any]:
    out = {}
    for key, values in cache.items():
        if not isinstance(key, str):
            raise GetLocalError(f"cannot save the cache: key {key!r} is not a string")
        if not isinstance(values, (list, tuple)):
            raise GetLocalError(f"cannot save cache[{key!r}]: it is a {type(values).__name__}, not a list of entries")
        provenance = list(calls.get(key, ())) if calls is not None else []
        if provenance and len(provenance) != len(values):
            raise GetLocalError(
                f"cannot save cache[{key!r}]: {len(values)} entries but calls[{key!r}] has {len(provenance)}; "
                "pass the calls of the same cache")
        entries = []
        for i, value in enumerate(values):
            entry = {"value": _encode(value, f"cache[{key!r}][{i}]", writer)}
            if provenance:
                call = provenance[i]
                entry["call"] = int(getattr(call, "index", call))
                owner = getattr(call, "owner", None)
                entry["owner"] = None if owner is None else type(owner).__qualname__
            entries.append(entry)
        out[key] = entries
    return out


def _encode(value, key: str, writer: _Writer):
    if _is_array(value):
        if isinstance(value, np.generic) or getattr(value, "ndim", 1) == 0:
            item = value.item()
            if isinstance(item, (bool, int)) or (isinstance(item, float) and math.isfinite(item)):
                return {"json": item}
        return {"array": writer.add(value, key)}
    if value is None or isinstance(value, (bool, int, str)):
        return {"json": value}
    if isinstance(value, float) and math.isfinite(value):
        return {"json": value}
    if isinstance(value, float):  # nan / inf: JSON has no spelling for them
        return {"array": writer.add(np.float64(value), key)}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode(v, f"{key}[{i}]", writer) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, f"{key}[{k!r}]", writer) for k, v in value.items()}}
    raise GetLocalError(
        f"cannot save {key}: a {type(value).__module__}.{type(value).__qualname__}; a capture holds arrays, "
        "tensors, plain numbers/strings and lists/tuples/dicts of them; capture with convert= a function that "
        "turns it into one of those, or drop it from the dict you save")


# --------------------------------------------------------------------------- load


def load(path) -> Union[AttentionMaps, Dict[str, List[Any]]]:
    """The capture saved in ``path``: ``AttentionMaps`` or a cache dict, as it was saved.

    Raises ``GetLocalError`` naming the file and the way out when the
    directory is not a capture or a file is missing, truncated or altered.
    Use :func:`read` for the images, info and call indices saved beside it.
    """
    return read(path).data


def read(path) -> Saved:
    """Everything in the capture directory ``path``, checked against its index (see :class:`Saved`)."""
    root = Path(path)
    index = _read_index(root)
    arrays = [_read_array(root, i, rec) for i, rec in enumerate(_list(index, "arrays", root))]

    def array(ref, where):
        number = ref.get("array") if isinstance(ref, dict) else None
        if not isinstance(number, int) or not 0 <= number < len(arrays):
            raise _corrupt(root, f"{where} points to array {number!r}, but the index lists {len(arrays)} arrays")
        return arrays[number]

    images = {name: array(ref, f"images[{name!r}]") for name, ref in index.get("images", {}).items()}
    out = Saved(root, None, images, index.get("info", {}), version=str(index.get("getlocal_version", "")))
    try:
        if index["kind"] == "maps":
            maps = []
            for i, meta in enumerate(_list(index, "maps", root)):
                arr = array(meta, f"maps[{i}]")
                maps.append(AttentionMap(
                    arr, meta["tower"], meta["layer"], meta["path"], meta["step"], meta["phase"], meta["call"],
                    TokenLayout.from_dict(meta["queries"]), TokenLayout.from_dict(meta["keys"]), meta.get("camera")))
                if list(arr.shape) != list(meta["shape"]):
                    raise _corrupt(root, f"maps[{i}] has shape {list(arr.shape)} but its labels say {meta['shape']}")
            layouts = {k: TokenLayout.from_dict(v) for k, v in index.get("layouts", {}).items()}
            out.data = AttentionMaps(maps, layouts)
        else:
            out.data, out.calls, out.owners = {}, {}, {}
            for key, entries in index["cache"].items():
                out.data[key] = [_decode(e["value"], array, f"cache[{key!r}][{i}]") for i, e in enumerate(entries)]
                out.calls[key] = [e.get("call") for e in entries]
                out.owners[key] = [e.get("owner") for e in entries]
    except (KeyError, TypeError, ValueError, GetLocalError) as exc:
        if isinstance(exc, GetLocalError) and str(exc).startswith(str(root)):
            raise
        raise _corrupt(root, f"the labels do not parse ({type(exc).__name__}: {exc})") from None
    return out


def _decode(ref, array, where):
    if not isinstance(ref, dict) or len(ref) != 1:
        raise ValueError(f"{where}: {ref!r} is not a value record")
    (kind, body), = ref.items()
    if kind == "json":
        return body
    if kind == "array":
        return array(ref, where)
    if kind in ("list", "tuple"):
        items = [_decode(v, array, f"{where}[{i}]") for i, v in enumerate(body)]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(v, array, f"{where}[{k!r}]") for k, v in body.items()}
    raise ValueError(f"{where}: unknown record kind {kind!r}")


def _corrupt(root: Path, what: str) -> GetLocalError:
    return GetLocalError(f"{root}: {what}; the capture is damaged: copy the whole directory again or save it again")


def _list(index, name, root):
    value = index.get(name)
    if not isinstance(value, list):
        raise _corrupt(root, f"{INDEX} has no list {name!r}")
    return value


def _read_index(root: Path) -> Dict[str, Any]:
    if not root.is_dir():
        raise GetLocalError(f"{root} is not a directory; give the directory that getlocal.save() "
                            "or `python -m getlocal demo` wrote (e.g. getlocal-demo/capture)")
    file = root / INDEX
    if not file.is_file():
        raise GetLocalError(f"{root} is not a getlocal capture: it has no {INDEX}; give the directory that "
                            "getlocal.save() or `python -m getlocal demo` wrote (e.g. getlocal-demo/capture)")
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(root, f"{INDEX} is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise GetLocalError(f"{file} is not a getlocal capture index (no \"format\": \"{FORMAT}\")")
    version = index.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GetLocalError(
            f"{root} was written by getlocal {index.get('getlocal_version', '?')} in capture format {version!r}; "
            f"this getlocal {_version()} reads format {FORMAT_VERSION} and older: upgrade getlocal to load it")
    if index.get("kind") not in ("maps", "cache"):
        raise _corrupt(root, f"{INDEX} says kind {index.get('kind')!r}, expected 'maps' or 'cache'")
    return index


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise GetLocalError("saved captures need safetensors: python -m pip install safetensors "
                            "(it comes with getlocal's [demo] extra)") from None
    return safetensors.numpy


def _read_array(root: Path, number: int, rec) -> np.ndarray:
    from safetensors import SafetensorError

    _deserialize = _safetensors().load

    try:
        name, size, digest = rec["file"], int(rec["bytes"]), rec["sha256"]
        shape, dtype, key = [int(n) for n in rec["shape"]], rec["dtype"], rec.get("key", f"array {number}")
    except (KeyError, TypeError, ValueError):
        raise _corrupt(root, f"{INDEX}: the record of array {number} is incomplete: {rec!r}") from None
    parts = Path(name).parts
    # only names this module writes: never a path that leaves the capture directory
    if len(parts) != 2 or parts[0] != _ARRAYS or not parts[1].endswith(".safetensors") or name != "/".join(parts):
        raise _corrupt(root, f"{INDEX} names the file {name!r} for {key}, which is not arrays/NNNNN.safetensors")
    file = root / name
    if not file.is_file():
        raise GetLocalError(f"{file} is missing ({key}); the capture is incomplete: copy the whole directory again")
    have = file.stat().st_size
    if have != size:
        raise GetLocalError(f"{file} is {have} bytes but the index says {size} ({key}); it was truncated or "
                            "replaced: copy the whole directory again")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != digest:
        raise GetLocalError(f"{file} does not match its sha256 in the index ({key}); it was altered or damaged: "
                            "copy the whole directory again")
    try:
        tensors = _deserialize(blob)
    except (SafetensorError, ValueError) as exc:
        raise _corrupt(root, f"{file} is not a readable safetensors file ({exc})") from None
    if set(tensors) != {_TENSOR}:
        raise _corrupt(root, f"{file} holds {sorted(tensors)}, expected one tensor named {_TENSOR!r}")
    arr = tensors[_TENSOR]
    if not shape and arr.shape == (1,):
        arr = arr.reshape(())
    if list(arr.shape) != shape or arr.dtype.name != dtype:
        raise _corrupt(root, f"{file} holds {arr.dtype.name} {list(arr.shape)} but the index says {dtype} {shape} "
                             f"({key})")
    return arr


__all__ = ["save", "load", "read", "Saved", "INDEX", "FORMAT_VERSION"]
