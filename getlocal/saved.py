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
``get_local.cache`` itself). ``load`` gives back the same type, and every value
equal and of the same type (torch tensors come back as numpy arrays).

The directory holds ``capture.json`` (the index) and one generation folder
``arrays-<16 hex>/NNNNN.safetensors`` (one array per file). The index records
the format version, the getlocal version, its generation folder and per array
its file, key, shape, dtype, byte size and sha256; then the labels. Loading
checks every file against the index before reading it, refuses links and
anything that is not a plain file, and never executes anything from the files
(JSON and safetensors only, no pickle).

Saving never leaves the path without a complete capture: the new arrays go into
a new generation folder, flushed to disk, and the index is then replaced in one
rename (the index is the switch); older generations are removed afterwards. A
lock file ``.getlocal-save.lock`` naming the saving process serialises saves to
one path; a lock left by a killed process is taken over. Captures written in
format 1 (``arrays/``) still load.
"""
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._convert import is_tensor
from ._errors import GetLocalError
from ._files import fsync_dir, write_atomic
from .maps import AttentionMap, AttentionMaps, Lazy, TokenLayout

INDEX = "capture.json"
FORMAT = "getlocal.capture"
FORMAT_VERSION = 2
LOCK = ".getlocal-save.lock"
_READS = (1, 2)  # format 1: one arrays/ folder, dicts as {str: value}, no numpy scalars
_TENSOR = "data"  # the tensor's name inside each safetensors file
_MAX_DEPTH = 100  # nested lists/dicts in one value; deeper ones are refused at save and at load
_LOCK_WAIT = 120.0  # seconds a save waits for another live save of the same path
_FILE = re.compile(r"(arrays|arrays-[0-9a-f]{16})/[0-9]{5,9}\.safetensors")
_OURS = re.compile(r"arrays|arrays-[0-9a-f]{16}|capture\.json|\.capture\.json\..*\.tmp|\.getlocal-save\.lock.*")
# safetensors' dtype codes and the numpy dtype each is read as; bfloat16 (not in numpy) is read as float32
_CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
          "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "F32": "float32", "F64": "float64",
          "BF16": "bfloat16"}
_DTYPES = {name: code for code, name in _CODES.items() if name != "bfloat16"}  # what save writes
_ITEMSIZE = {"bfloat16": 2, **{name: np.dtype(name).itemsize for name in _DTYPES}}


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
    are arrays, tensors, numpy scalars, None, bools, ints, floats (NaN and
    infinities too), strings, and lists/tuples/dicts of these (dict keys: any
    of these scalars or tuples of them); a ``maps.Lazy`` value (what an
    adapter's ``mode='fast'`` keeps) is saved as the value it computes. ``calls``: the matching
    ``get_local.calls`` (taken from ``get_local`` when ``capture`` is
    ``get_local.cache``). ``images``: pictures to keep beside the maps
    (``{name: HxWxC array}``), e.g. for overlays drawn later. ``info``: a dict
    of JSON values (str keys, finite numbers, lists not tuples).
    Anything else is refused before a file is written, naming the value.

    >>> import numpy as np, tempfile
    >>> p = save(tempfile.mkdtemp() + "/c", {"f": [np.zeros(2)]}, info={"model": "toy"})
    >>> [name.split("-")[0] for name in sorted(os.listdir(p))]
    ['arrays', 'capture.json']
    """
    target = _path(path, "save")
    for name, value in (("calls", calls), ("images", images), ("info", info)):
        if value is not None and not isinstance(value, dict):
            raise GetLocalError(f"save({name}=...) takes a dict or None; got {type(value).__name__}")
    plan = _Plan()
    index: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                             "getlocal_version": _version()}
    if isinstance(capture, AttentionMaps):
        index["kind"] = "maps"
        index["maps"] = [dict(m.meta(), array=plan.array(m.array, f"maps[{i}]")) for i, m in enumerate(capture)]
        index["layouts"] = {k: v.to_dict() for k, v in capture.layouts.items()}
    elif isinstance(capture, dict):
        index["kind"] = "cache"
        cache, calls = _frozen(capture, calls)
        index["cache"] = _encode_cache(cache, calls, plan)
    else:
        raise GetLocalError(
            f"save() takes AttentionMaps (an adapter's collect()) or a cache dict such as get_local.cache; "
            f"got {type(capture).__name__}")
    if images is not None and not isinstance(images, dict):
        raise GetLocalError(f"save(images=...) takes a dict {{name: HxWxC array}}; got {type(images).__name__}")
    for name in images or {}:
        if not isinstance(name, str):
            raise GetLocalError(f"save(images=...): the name {name!r} is not a string; name each picture with a str")
    index["images"] = {name: {"array": plan.array(im, f"images[{name!r}]")} for name, im in (images or {}).items()}
    index["info"] = _plain_json(info or {}, "save(info=...)")
    _check_target(target)
    target.mkdir(parents=True, exist_ok=True)
    with _SaveLock(target):
        _check_target(target)  # again: another process may have changed it while we waited
        generation = f"arrays-{secrets.token_hex(8)}"
        index["generation"] = generation
        try:
            index["arrays"] = plan.write(target, generation)
            text = json.dumps(index, indent=1, allow_nan=False)
            write_atomic(target / INDEX, lambda f: f.write(text.encode("utf-8")))  # the switch
        except BaseException:
            shutil.rmtree(target / generation, ignore_errors=True)
            raise
        _remove_leftovers(target, keep=generation)
    return target


def _path(path, function: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path):
        raise GetLocalError(f"{function}(path={path!r}): give a directory path, a str or pathlib.Path without NUL")
    return Path(path)


def _version() -> str:
    from . import __version__

    return __version__


def _frozen(cache, calls):
    """A copy of ``cache`` (and its calls) that other threads cannot change while it is written."""
    from . import get_local

    if cache is not get_local.cache:
        return {key: (list(values) if isinstance(values, list) else values) for key, values in list(cache.items())}, calls
    if calls is not None:
        return get_local.snapshot(), calls
    error = None
    for _ in range(20):  # calls are read beside the snapshot: retry until no call landed in between
        before = get_local.snapshot()
        try:
            live = get_local.calls
        except GetLocalError as exc:  # a call was half recorded, or the cache was changed by hand
            error = exc
            continue
        after = get_local.snapshot()
        if all(len(after.get(k, ())) >= len(v) and all(a is b for a, b in zip(v, after[k])) for k, v in before.items()):
            return before, {k: live.get(k, [])[:len(v)] for k, v in before.items()}
    if error is not None:
        raise error
    return get_local.snapshot(), None  # calls kept coming and old ones were dropped: no provenance


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise GetLocalError(f"cannot save to {target}: it is a file; give a directory path")
    if target.is_dir():
        foreign = sorted(name for name in os.listdir(target) if not _OURS.fullmatch(name))
        if foreign and not (target / INDEX).is_file():
            raise GetLocalError(
                f"cannot save to {target}: it is a directory with files ({', '.join(foreign[:3])}) but not a "
                f"getlocal capture (no {INDEX}); give a new or empty directory, or remove it first")


def _remove_leftovers(target: Path, keep: str) -> None:
    """Older generations and the temporary files of saves that were killed (only names getlocal writes)."""
    for name in os.listdir(target):
        if name not in (keep, INDEX, LOCK) and _OURS.fullmatch(name):
            path = target / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


class _SaveLock:
    """``.getlocal-save.lock`` in the capture directory, created with O_EXCL and holding the saver's pid."""

    def __init__(self, folder: Path):
        self.file = folder / LOCK

    def __enter__(self):
        deadline = time.monotonic() + _LOCK_WAIT
        pause = 0.005
        while True:
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder(self.file)
                if holder is not None and not _alive(holder):
                    self._take_over(holder)
                    continue
                if time.monotonic() > deadline:
                    raise GetLocalError(
                        f"cannot save to {self.file.parent}: another save (pid {holder or '?'}) has held {self.file} "
                        f"for over {_LOCK_WAIT:.0f} s; wait for it to finish, or delete {self.file} if no getlocal "
                        "save is running") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            with open(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            os.unlink(self.file)

    @staticmethod
    def _holder(file: Path) -> Optional[int]:
        """The pid in the lock; 0 for a lock left empty by a process killed right after creating it."""
        try:
            text = file.read_text(encoding="ascii", errors="replace").strip()
            age = time.time() - file.stat().st_mtime
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        return 0 if age > 10 else None

    def _take_over(self, dead: int) -> None:
        grave = self.file.with_name(f"{LOCK}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.file, grave)
        except OSError:
            return
        if self._holder(grave) != dead:  # a live saver took the lock between our look and our rename
            with contextlib.suppress(OSError):
                os.link(grave, self.file)
        with contextlib.suppress(OSError):
            os.unlink(grave)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid() or os.name == "nt":  # another thread of ours; Windows' kill() would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class _Plan:
    """The arrays of a capture, checked when listed, written one file each by :meth:`write`."""

    def __init__(self):
        self.values: List[Tuple[Any, str]] = []

    def array(self, value, key: str) -> int:
        if not _is_array(value):
            value = np.asarray(value)
            if value.dtype == object:
                raise GetLocalError(f"cannot save {key}: it is not an array of numbers")
        name = str(value.dtype).replace("torch.", "")
        if name not in _DTYPES and name != "bfloat16":
            raise GetLocalError(
                f"cannot save {key}: dtype {value.dtype} is not one safetensors stores "
                f"({', '.join(sorted(_DTYPES))}); convert it first, e.g. .astype('float32')")
        self.values.append((value, key))
        return len(self.values) - 1

    def write(self, target: Path, generation: str) -> List[Dict[str, Any]]:
        folder = target / generation
        folder.mkdir()
        records = []
        for number, (value, key) in enumerate(self.values):
            arr, source = _to_numpy(value)
            name = f"{generation}/{number:05d}.safetensors"
            records.append(dict(_write_array(target / name, arr), file=name, key=key, shape=list(arr.shape),
                                dtype=arr.dtype.name, source=source))
        _flush([target / rec["file"] for rec in records])
        fsync_dir(folder)
        return records


def _flush(files: List[Path]) -> None:
    """Put the files on disk before the index names them.

    One sync() for all: an fsync per file costs milliseconds each, minutes for a capture of many maps.
    """
    if hasattr(os, "sync"):
        os.sync()
        return
    for file in files:  # Windows
        with open(file, "rb+") as f:
            os.fsync(f.fileno())


def _write_array(file: Path, arr: np.ndarray) -> Dict[str, Any]:
    """One safetensors file holding ``arr`` as ``data``, written without a copy of the array."""
    arr = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    header = json.dumps({_TENSOR: {"dtype": _DTYPES[arr.dtype.name], "shape": list(arr.shape),
                                   "data_offsets": [0, arr.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data on 8 bytes
    digest = hashlib.sha256()
    with open(file, "wb") as f:
        for part in (struct.pack("<Q", len(header)), header, memoryview(arr.reshape(-1)).cast("B")):
            f.write(part)
            digest.update(part)
    return {"bytes": 8 + len(header) + arr.nbytes, "sha256": digest.hexdigest()}


def _is_array(value) -> bool:
    return type(value) is np.ndarray or is_tensor(value)


def _to_numpy(value):
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
        return t.numpy(), source
    arr = np.asarray(value)
    return arr, f"numpy.{arr.dtype.name}"


def _encode_cache(cache, calls, plan: _Plan) -> Dict[str, Any]:
    out = {}
    for key, values in cache.items():
        if not isinstance(key, str):
            raise GetLocalError(f"cannot save the cache: key {key!r} is not a string")
        if type(values) is not list:
            raise GetLocalError(f"cannot save cache[{key!r}]: it is a {type(values).__name__}, not a list of entries")
        provenance = list(calls.get(key, ())) if calls is not None else []
        if provenance and len(provenance) != len(values):
            raise GetLocalError(
                f"cannot save cache[{key!r}]: {len(values)} entries but calls[{key!r}] has {len(provenance)}; "
                "pass the calls of the same cache")
        entries = []
        for i, value in enumerate(values):
            entry = {"value": _encode(value, f"cache[{key!r}][{i}]", plan, 0)}
            if provenance:
                call = provenance[i]
                entry["call"] = int(getattr(call, "index", call))
                owner = getattr(call, "owner", None)
                entry["owner"] = None if owner is None else type(owner).__qualname__
            entries.append(entry)
        out[key] = entries
    return out


def _float(x: float):
    """A float as JSON: the number, or "nan" / "inf" / "-inf", which JSON cannot spell."""
    return x if math.isfinite(x) else str(x)


def _encode(value, key: str, plan: _Plan, depth: int):
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return {"json": value}
    if kind is float:
        return {"json": value} if math.isfinite(value) else {"float": str(value)}
    if isinstance(value, np.generic) and value.dtype.name in _DTYPES:
        item = value.item()
        return {"scalar": [value.dtype.name, _float(item) if isinstance(item, float) else item]}
    if _is_array(value):
        return {"array": plan.array(value, key)}
    if isinstance(value, Lazy):  # a map not computed yet (an adapter's mode='fast'): saved as what it stands for
        return _encode(value.materialize(), key, plan, depth)
    if kind in (list, tuple, dict):
        if depth >= _MAX_DEPTH:
            raise GetLocalError(f"cannot save {key}: nested more than {_MAX_DEPTH} lists/tuples/dicts deep")
        if kind is dict:
            pairs = []
            for k, v in value.items():
                if _is_array(k):
                    raise GetLocalError(f"cannot save {key}: the dict key {k!r} is a tensor; use a plain value")
                pairs.append([_encode(k, f"{key} key {k!r}", plan, depth + 1),
                              _encode(v, f"{key}[{k!r}]", plan, depth + 1)])
            return {"dict": pairs}
        return {kind.__name__: [_encode(v, f"{key}[{i}]", plan, depth + 1) for i, v in enumerate(value)]}
    raise GetLocalError(
        f"cannot save {key}: a {kind.__module__}.{kind.__qualname__}; a capture holds arrays, tensors, numpy "
        "scalars, None, bool, int, float, str and lists/tuples/dicts of them (exactly these types, so that load "
        "gives back what was saved); capture with convert= a function that turns it into one of those, or "
        "drop it from the dict you save")


def _plain_json(value, where: str, depth: int = 0):
    """``value`` if JSON gives it back unchanged (types included), else a GetLocalError naming the part."""
    kind = type(value)
    if depth > _MAX_DEPTH:
        raise GetLocalError(f"{where} is nested more than {_MAX_DEPTH} deep")
    if value is None or kind in (bool, int, str) or (kind is float and math.isfinite(value)):
        return value
    if kind is list:
        return [_plain_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if kind is dict:
        for k in value:
            if type(k) is not str:
                raise GetLocalError(f"{where}: the key {k!r} is not a str; JSON keys are strings")
        return {k: _plain_json(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
    raise GetLocalError(f"{where} holds {value!r} ({kind.__name__}), which JSON does not give back as it was; "
                        "use str, int, finite float, bool, None, lists and dicts with str keys")


# --------------------------------------------------------------------------- load


def load(path):
    """The capture saved in ``path``: ``AttentionMaps`` or a cache dict, as it was saved.

    For a run directory written by ``getlocal.record``, a ``Recording`` of its
    steps (every part, each step tagged with its rank), opened without reading
    any array.

    Raises ``GetLocalError`` naming the file and the way out when the
    directory is not a capture or a file is missing, truncated, altered or a link.
    Use :func:`read` for the images, info and call indices saved beside it.
    """
    return read(path).data


class _Missing(GetLocalError):
    """An array file the index names is not there (perhaps a save replaced the capture meanwhile)."""


def read(path) -> Saved:
    """Everything in the capture directory ``path``, checked against its index (see :class:`Saved`)."""
    root = _path(path, "load")
    from . import recording

    if recording.is_run(root):  # a recorded episode (getlocal.record): its steps, arrays read when touched
        return Saved(root, recording.read_run(root), version=_version())
    for attempt in range(3):
        raw = _index_bytes(root)
        try:
            return _read(root, raw)
        except _Missing:
            # a save that switched the index while we read removes the older generation: read the new one
            if attempt == 2 or _index_bytes(root) == raw:
                raise
    raise AssertionError("unreachable")


def _read(root: Path, raw: bytes) -> Saved:
    index = _parse_index(root, raw)
    version = index["format_version"]
    records = _list(index, "arrays", root)
    arrays = [_read_array(root, i, rec, version) for i, rec in enumerate(_unique(records, root))]

    def array(ref, where):
        number = ref.get("array") if isinstance(ref, dict) else None
        if type(number) is not int or not 0 <= number < len(arrays):
            raise _corrupt(root, f"{where} points to array {number!r}, but the index lists {len(arrays)} arrays")
        return arrays[number]

    try:
        images = {str(name): array(ref, f"images[{name!r}]") for name, ref in _dict(index, "images").items()}
        info = _dict(index, "info")
        out = Saved(root, None, images, info, version=str(index.get("getlocal_version", "")))
        if index["kind"] == "maps":
            out.data = _decode_maps(root, index, array)
        else:
            out.data, out.calls, out.owners = {}, {}, {}
            for key, entries in _dict(index, "cache").items():
                if type(entries) is not list or not all(isinstance(e, dict) for e in entries):
                    raise ValueError(f"cache[{key!r}] is not a list of entries")
                out.data[key] = [_decode(e["value"], array, f"cache[{key!r}][{i}]", version, 0)
                                 for i, e in enumerate(entries)]
                out.calls[key] = [_optional(e.get("call"), int) for e in entries]
                out.owners[key] = [_optional(e.get("owner"), str) for e in entries]
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, GetLocalError) as exc:
        if isinstance(exc, GetLocalError) and str(exc).startswith(str(root)):
            raise
        raise _corrupt(root, f"the labels do not parse ({type(exc).__name__}: {exc})") from None
    return out


def _optional(value, kind):
    if value is not None and type(value) is not kind:
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value


def _dict(index, name):
    value = index.get(name, {})
    if not isinstance(value, dict):
        raise TypeError(f"{INDEX}: {name!r} is a {type(value).__name__}, not a dict")
    return value


def _decode_maps(root: Path, index, array) -> AttentionMaps:
    maps = []
    for i, meta in enumerate(_list(index, "maps", root)):
        if not isinstance(meta, dict):
            raise TypeError(f"maps[{i}] is not a dict")
        arr = array(meta, f"maps[{i}]")
        labels = {name: _optional(meta[name], kind) for name, kind in
                  (("tower", str), ("layer", int), ("path", str), ("step", int), ("phase", str), ("call", int))}
        camera = _optional(meta.get("camera"), str)
        queries, keys = _layout(meta["queries"]), _layout(meta["keys"])
        if list(arr.shape) != meta["shape"] or arr.ndim < 2 or arr.shape[-2:] != (len(queries), len(keys)):
            raise _corrupt(root, f"maps[{i}] has shape {list(arr.shape)} but its labels say {meta['shape']} with "
                                 f"{len(queries)} queries and {len(keys)} keys")
        maps.append(AttentionMap(arr, labels["tower"], labels["layer"], labels["path"], labels["step"],
                                 labels["phase"], labels["call"], queries, keys, camera,
                                 **_rows_and_padding(meta, arr.shape)))
    return AttentionMaps(maps, {str(k): _layout(v) for k, v in _dict(index, "layouts").items()})


def _rows_and_padding(meta, shape) -> Dict[str, Any]:
    """``AttentionMap.padding`` and ``.rows`` from their JSON (positions), checked against the map's shape."""
    batch, queries, keys = (shape[0] if len(shape) > 2 else 1), shape[-2], shape[-1]
    out: Dict[str, Any] = {"padding": None, "rows": None}
    padding, rows = meta.get("padding"), meta.get("rows")
    if padding is not None:
        if type(padding) is not list or len(padding) != batch or not all(
                type(row) is list and all(type(p) is int and 0 <= p < keys for p in row) for row in padding):
            raise ValueError(f"padding is not {batch} lists of key positions below {keys}")
        out["padding"] = np.zeros((batch, keys), dtype=bool)
        for item, row in enumerate(padding):
            out["padding"][item, row] = True
    if rows is not None:
        if type(rows) is not list or len(rows) != queries or not all(type(r) is int and 0 <= r < keys for r in rows):
            raise ValueError(f"rows is not {queries} key positions below {keys}")
        out["rows"] = np.asarray(rows, dtype=np.int64)
    return out


def _layout(data) -> TokenLayout:
    """A token layout from the index, every field checked (a layout from a colleague's capture indexes arrays)."""
    segments = data["segments"] if isinstance(data, dict) else None
    if type(segments) is not list:
        raise TypeError(f"{data!r} is not a token layout")
    for s in segments:
        if not isinstance(s, dict) or type(s["kind"]) is not str or type(s["start"]) is not int \
                or type(s["stop"]) is not int or not 0 <= s["start"] <= s["stop"]:
            raise ValueError(f"{s!r} is not a token segment")
        _optional(s.get("camera"), str)
        grid = s.get("grid")
        if grid is not None and (type(grid) is not list or len(grid) != 2 or not all(type(n) is int and n > 0 for n in grid)
                                 or grid[0] * grid[1] != s["stop"] - s["start"]):
            raise ValueError(f"{s!r} has a grid that does not cover its tokens")
    return TokenLayout.from_dict(data)


def _decode(ref, array, where, version, depth):
    if not isinstance(ref, dict) or len(ref) != 1:
        raise ValueError(f"{where}: {ref!r} is not a value record")
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {_MAX_DEPTH} deep")
    (kind, body), = ref.items()
    if kind == "json":
        if body is not None and type(body) not in (bool, int, str, float):
            raise TypeError(f"{where}: {body!r} is not a plain value")
        return body
    if kind == "array":
        return array(ref, where)
    if kind == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if kind == "scalar" and type(body) is list and len(body) == 2 and body[0] in _DTYPES:
        if type(body[1]) not in (bool, int, float, str):
            raise TypeError(f"{where}: {body[1]!r} is not a number")
        return np.dtype(body[0]).type(body[1])
    if kind in ("list", "tuple") and type(body) is list:
        items = [_decode(v, array, f"{where}[{i}]", version, depth + 1) for i, v in enumerate(body)]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and version == 1 and type(body) is dict:
        return {k: _decode(v, array, f"{where}[{k!r}]", version, depth + 1) for k, v in body.items()}
    if kind == "dict" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError(f"{where}: {pair!r} is not a [key, value] pair")
            k = _decode(pair[0], array, f"{where} key", version, depth + 1)
            out[k] = _decode(pair[1], array, f"{where}[{k!r}]", version, depth + 1)
        return out
    raise ValueError(f"{where}: unknown record {kind!r}: {body!r}"[:300])


def _corrupt(root: Path, what: str) -> GetLocalError:
    return GetLocalError(f"{root}: {what}; the capture is damaged: copy the whole directory again or save it again")


def _list(index, name, root):
    value = index.get(name)
    if not isinstance(value, list):
        raise _corrupt(root, f"{INDEX} has no list {name!r}")
    return value


def _unique(records, root):
    seen = set()
    for rec in records:
        name = rec.get("file") if isinstance(rec, dict) else None
        if isinstance(name, str) and name in seen:
            raise _corrupt(root, f"{INDEX} lists the file {name!r} twice")
        seen.add(name)
    return records


def _index_bytes(root: Path) -> bytes:
    if not root.is_dir():
        raise GetLocalError(f"{root} is not a directory; give the directory that getlocal.save() "
                            "or `python -m getlocal demo` wrote (e.g. getlocal-demo/capture)")
    file = root / INDEX
    if not os.path.lexists(file):
        raise GetLocalError(f"{root} is not a getlocal capture: it has no {INDEX}; give the directory that "
                            "getlocal.save() or `python -m getlocal demo` wrote (e.g. getlocal-demo/capture)")
    with _open_plain(file) as f:
        return f.read()


@contextlib.contextmanager
def _open_plain(file: Path):
    """``file`` opened for reading if it is a plain file: never through a link, never a pipe or a device."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        if os.path.islink(file) or os.path.islink(file.parent):
            raise OSError(40, "link")
        fd = os.open(file, flags)
    except FileNotFoundError:
        raise _Missing(f"{file} is missing; the capture is incomplete: copy the whole directory again") from None
    except OSError as exc:
        if exc.errno == 40 or os.path.islink(file):  # ELOOP: O_NOFOLLOW met a link
            raise GetLocalError(f"{file} is a symbolic link; a capture holds plain files only, so getlocal does not "
                                "follow it: copy the file it points to in its place") from None
        raise GetLocalError(f"cannot read {file} ({exc.strerror or exc})") from None
    f = open(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GetLocalError(f"{file} is not a plain file; a capture holds plain files only")
        yield f
    finally:
        f.close()


def _parse_index(root: Path, raw: bytes) -> Dict[str, Any]:
    file = root / INDEX
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _corrupt(root, f"{INDEX} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise GetLocalError(f"{file} is not a getlocal capture index (no \"format\": \"{FORMAT}\")")
    version = index.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise GetLocalError(
            f"{root} was written by getlocal {index.get('getlocal_version', '?')} in capture format {version}; "
            f"this getlocal {_version()} reads formats {', '.join(map(str, _READS))}: upgrade getlocal to load it")
    if type(version) is not int or version not in _READS:
        raise _corrupt(root, f"{INDEX} says format_version {version!r}, which no getlocal wrote "
                             f"(known: {', '.join(map(str, _READS))})")
    if index.get("kind") not in ("maps", "cache"):
        raise _corrupt(root, f"{INDEX} says kind {index.get('kind')!r}, expected 'maps' or 'cache'")
    return index


def _read_array(root: Path, number: int, rec, version: int) -> np.ndarray:
    try:
        name, size, digest, key = rec["file"], rec["bytes"], rec["sha256"], rec.get("key", f"array {number}")
        shape, dtype = list(rec["shape"]), rec["dtype"]
        if not (isinstance(name, str) and type(size) is int and isinstance(digest, str) and isinstance(key, str)
                and all(type(n) is int and n >= 0 for n in shape) and dtype in _ITEMSIZE):
            raise TypeError
    except (KeyError, TypeError):
        raise _corrupt(root, f"{INDEX}: the record of array {number} is incomplete: {str(rec)[:200]}") from None
    # only names getlocal writes: never a path that leaves the capture directory
    if not _FILE.fullmatch(name) or (version == 1) != name.startswith("arrays/"):
        raise _corrupt(root, f"{INDEX} names the file {name!r} for {key}, which is not "
                             f"{'arrays' if version == 1 else 'arrays-<16 hex>'}/NNNNN.safetensors")
    file = root / name
    with _open_plain(file) as f:
        have = os.fstat(f.fileno()).st_size
        if have != size:
            raise GetLocalError(f"{file} is {have} bytes but the index says {size} ({key}); it was truncated or "
                                "replaced: copy the whole directory again")
        digester = hashlib.sha256()
        header = _read_header(f, file, have, key, digester)
        got = [int(n) for n in header["shape"]]
        wanted = [1] if got == [1] and shape == [] else shape  # format 1 wrote a 0-d array as [1]
        if got != wanted or _CODES[header["dtype"]] != dtype:
            raise _corrupt(root, f"{file} holds {_CODES[header['dtype']]} {got} but the index says {dtype} {shape} "
                                 f"({key})")
        try:
            data = np.empty(header["data_offsets"][1], dtype=np.uint8)
        except MemoryError:
            raise GetLocalError(f"{file} ({key}) holds {have} bytes, more than this machine can hold") from None
        view = memoryview(data)
        done = 0
        while done < len(data):  # in chunks: the checksum is computed while reading, the file read once
            n = f.readinto(view[done:done + (1 << 24)])
            if not n:
                raise GetLocalError(f"{file} became shorter while it was read ({key}); copy the whole directory again")
            digester.update(view[done:done + n])
            done += n
    if digester.hexdigest() != digest:
        raise GetLocalError(f"{file} does not match its sha256 in the index ({key}); it was altered or damaged: "
                            "copy the whole directory again")
    if dtype == "bfloat16":  # the high half of a float32: shift the 16 bits into place
        arr = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = data.view(np.dtype(dtype).newbyteorder("<"))
        if arr.dtype.byteorder not in ("=", "|") and sys.byteorder == "big":
            arr = arr.astype(np.dtype(dtype))
        elif dtype == "bool":
            arr = data != 0
    return arr.reshape(shape)


def _read_header(f, file: Path, size: int, key: str, digester) -> Dict[str, Any]:
    """The safetensors header of ``file``, checked against the file's size before any data is read."""
    def bad(why):
        return GetLocalError(f"{file} is not a readable safetensors file ({why}; {key}); copy the whole "
                             "directory again")

    head = f.read(8)
    if len(head) < 8:
        raise bad("shorter than a header")
    (length,) = struct.unpack("<Q", head)
    if length > min(size - 8, 1 << 20):
        raise bad(f"its header claims {length} bytes in a file of {size}")
    text = f.read(length)
    digester.update(head)
    digester.update(text)
    try:
        header = json.loads(text.decode("utf-8"))
        tensor = header[_TENSOR]
        dtype, shape, (begin, end) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        raise bad(f"no tensor named {_TENSOR!r} in its header") from None
    if set(header) - {_TENSOR, "__metadata__"}:
        raise bad(f"it holds {sorted(header)}, expected one tensor named {_TENSOR!r}")
    if dtype not in _CODES or type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
        raise bad(f"dtype {dtype!r} shape {shape!r}")
    if begin != 0 or end != size - 8 - length or end != math.prod(shape) * _ITEMSIZE[_CODES[dtype]]:
        raise bad(f"{_CODES[dtype]} {shape} does not fill its {size - 8 - length} bytes of data")
    return tensor


__all__ = ["save", "load", "read", "Saved", "INDEX", "FORMAT_VERSION"]
