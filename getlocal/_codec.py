"""The codec under both file formats: array files, dtypes, JSON values, labels, and opening files safely.

>>> import numpy as np
>>> plan = Plan()
>>> ref = encode({"scores": np.eye(2), "step": 3, "seen": (None, float("nan"))}, "v", plan, 0)
>>> decode(ref, lambda r, where: plan.values[r["array"]][0], "v", 2, 0)["seen"]
(None, nan)

A saved capture (:mod:`getlocal.saved`) and a recorded run
(:mod:`getlocal.recording`) are two layouts of the same pieces, which live here:

- array files: safetensors (an 8-byte header length, a JSON header, the
  little-endian bytes), written without a copy of the array
  (:func:`safetensors_head`, :func:`write_array`), read with every header field
  checked against the file's size before any data is read, and the bytes
  checked against their sha256 (:func:`read_array_file`, :class:`StoredArray`,
  the lazy one: an array inside a file, read and checked when asked for);
- dtypes: safetensors' codes (:data:`CODES`), what save writes
  (:data:`DTYPES`), bfloat16 (which numpy lacks) read as float32
  (:func:`decode_array`);
- values: any cache entry as JSON records with its arrays set aside in a
  :class:`Plan` (:func:`encode`, :func:`decode`, :func:`encode_cache`), nested at most
  :data:`MAX_DEPTH` deep at save and at load; ``info`` dicts as plain JSON (:func:`plain_json`);
- labels: an ``AttentionMap``'s labels, token layouts, padding and rows, every
  field checked (:func:`map_labels`, :func:`layout`, :func:`rows_and_padding`);
- files: :func:`open_plain` opens plain files only, never through a link;
  :func:`corrupt` is the error for a damaged file.

Nothing here is pickled or executed: a file from a colleague is data only.

Format versions. Each format keeps its own number, written in its files:
a capture's ``capture.json`` says ``"format": "getlocal.capture"`` and
``format_version`` 2 (1 for the captures of getlocal 0.1.0: ``arrays/``,
str-keyed dicts, a 0-d array stored as [1]); a run's ``run.json`` and
``part.json`` say ``getlocal.run`` / ``getlocal.run-part`` and version 1.
A reader accepts every version it lists (a capture: 1 and 2; a run: 1) and
refuses a higher one with an error that says to upgrade getlocal, and any
other value as damage. Files once written are never rewritten to a newer
version. A change to what is written (a field a reader must understand, a
new layout) takes a new number for that format alone, a reader of the old
ones kept beside the new (as format 1 captures are read today), and a fixture
written by the old code in ``tests/data/`` that must keep loading. A field
that older readers can ignore needs no new number.
"""
import contextlib
import hashlib
import json
import math
import os
import stat
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ._convert import Lazy, is_tensor
from ._errors import GetLocalError
from .maps import TokenLayout

#: the index of a saved capture, and the marker of a recorded run: each format refuses the other's directory
CAPTURE_INDEX = "capture.json"
RUN_MARKER = "run.json"
MAX_DEPTH = 100  # nested lists/dicts in one value; deeper ones are refused at save and at load
TENSOR = "data"  # the tensor's name inside each safetensors file of a capture
# safetensors' dtype codes and the numpy dtype each is read as; bfloat16 (not in numpy) is read as float32
CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
         "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "F32": "float32", "F64": "float64",
         "BF16": "bfloat16"}
DTYPES = {name: code for code, name in CODES.items() if name != "bfloat16"}  # what save writes
ITEMSIZE = {"bfloat16": 2, **{name: np.dtype(name).itemsize for name in DTYPES}}
#: the labels of an AttentionMap and the JSON type of each
LABELS = (("tower", str), ("layer", int), ("path", str), ("step", int), ("phase", str), ("call", int))


class DamagedRecord(GetLocalError, ValueError):
    """A record of an index or log that no getlocal wrote; the readers name the file it is in."""


class DamagedRecordType(GetLocalError, TypeError):
    """A record of an index or log with a value of the wrong type; the readers name the file it is in."""


class Missing(GetLocalError):
    """A file the index names is not there (perhaps a save replaced the capture meanwhile)."""


def corrupt(root: Path, what: str) -> GetLocalError:
    return GetLocalError(f"{root}: {what}; the capture is damaged: copy the whole directory again or save it again")


def directory(path, function: str) -> Path:
    """``path`` as a Path, if it can name a directory (the argument of save, load and record)."""
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path):
        raise GetLocalError(f"{function}(path={path!r}): give a directory path, a str or pathlib.Path without NUL")
    return Path(path)


@contextlib.contextmanager
def open_plain(file: Path):
    """``file`` opened for reading if it is a plain file: never through a link, never a pipe or a device."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        if os.path.islink(file) or os.path.islink(file.parent):
            raise OSError(40, "link")
        fd = os.open(file, flags)
    except FileNotFoundError:
        raise Missing(f"{file} is missing; the capture is incomplete: copy the whole directory again") from None
    except OSError as exc:
        if exc.errno == 40 or os.path.islink(file):  # ELOOP: O_NOFOLLOW met a link
            raise GetLocalError(f"{file} is a symbolic link; a capture holds plain files only, so getlocal does not "
                                "follow it: copy the file it points to in its place") from None
        raise GetLocalError(f"cannot read {file} ({exc.strerror or exc})") from None
    try:  # checked on the descriptor before any read (a directory opens read-only too), closed if refused
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a plain file"
            raise GetLocalError(f"{file} is {what}; a capture holds plain files only: copy the whole directory "
                                "again")
        f = open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        yield f
    finally:
        f.close()


# --------------------------------------------------------------------------- arrays


def is_array(value) -> bool:
    return type(value) is np.ndarray or is_tensor(value)


def to_numpy(value):
    """``value`` as a numpy array and the dtype it came with (``'torch.bfloat16'``, ``'numpy.float32'``)."""
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


def little_endian(arr: np.ndarray) -> np.ndarray:
    """``arr`` contiguous and little-endian, as safetensors stores it (no copy when it already is)."""
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)


def safetensors_head(arrays: Dict[str, Tuple[np.ndarray, int]]) -> bytes:
    """The header length and header of a safetensors file holding ``{name: (array, data offset)}``.

    The header is padded with spaces to 8 bytes: safetensors aligns the data.
    """
    header = json.dumps({name: {"dtype": DTYPES[a.dtype.name], "shape": list(a.shape),
                                "data_offsets": [begin, begin + a.nbytes]}
                         for name, (a, begin) in arrays.items()}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def write_array(file: Path, arr: np.ndarray) -> Dict[str, Any]:
    """One safetensors file holding ``arr`` as ``data``, written without a copy of the array."""
    arr = little_endian(arr)
    head = safetensors_head({TENSOR: (arr, 0)})
    digest = hashlib.sha256()
    with open(file, "wb") as f:
        for part in (head, memoryview(arr.reshape(-1)).cast("B")):
            f.write(part)
            digest.update(part)
    return {"bytes": len(head) + arr.nbytes, "sha256": digest.hexdigest()}


def decode_array(data: np.ndarray, dtype: str, shape) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` whose little-endian bytes are ``data`` (uint8)."""
    if dtype == "bfloat16":  # the high half of a float32: shift the 16 bits into place
        arr = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype == "bool":
        arr = data != 0
    else:
        arr = data.view(np.dtype(dtype).newbyteorder("<"))
        if arr.dtype.byteorder not in ("=", "|") and sys.byteorder == "big":
            arr = arr.astype(np.dtype(dtype))
    return arr.reshape(shape)


def read_array_file(root: Path, file: Path, size: int, digest: str, key: str, shape, dtype: str) -> np.ndarray:
    """The one array of the safetensors ``file``, checked against its size, sha256, dtype and shape."""
    with open_plain(file) as f:
        have = os.fstat(f.fileno()).st_size
        if have != size:
            raise GetLocalError(f"{file} is {have} bytes but the index says {size} ({key}); it was truncated or "
                                "replaced: copy the whole directory again")
        digester = hashlib.sha256()
        header = _read_header(f, file, have, key, digester)
        got = [int(n) for n in header["shape"]]
        wanted = [1] if got == [1] and shape == [] else shape  # format 1 wrote a 0-d array as [1]
        if got != wanted or CODES[header["dtype"]] != dtype:
            raise corrupt(root, f"{file} holds {CODES[header['dtype']]} {got} but the index says {dtype} {shape} "
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
    return decode_array(data, dtype, shape)


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
        tensor = header[TENSOR]
        dtype, shape, (begin, end) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        raise bad(f"no tensor named {TENSOR!r} in its header") from None
    if set(header) - {TENSOR, "__metadata__"}:
        raise bad(f"it holds {sorted(header)}, expected one tensor named {TENSOR!r}")
    if dtype not in CODES or type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
        raise bad(f"dtype {dtype!r} shape {shape!r}")
    if begin != 0 or end != size - 8 - length or end != math.prod(shape) * ITEMSIZE[CODES[dtype]]:
        raise bad(f"{CODES[dtype]} {shape} does not fill its {size - 8 - length} bytes of data")
    return tensor


class StoredArray:
    """Where one array lies in a file of several; :meth:`read` checks the file and the bytes, then returns it.

    Nothing is read until :meth:`read`: opening a long run costs its labels only.
    """

    __slots__ = ("file", "file_bytes", "offset", "bytes", "shape", "dtype", "sha256", "key")

    def __init__(self, file: Optional[Path], file_bytes: int, rec, key: str):
        if file is None or not isinstance(rec, dict):
            raise DamagedRecord(f"{key}: an array record without a file")
        self.file, self.file_bytes, self.key = file, file_bytes, key
        self.offset, self.bytes, self.shape, self.dtype, self.sha256 = (
            rec["offset"], rec["bytes"], rec["shape"], rec["dtype"], rec["sha256"])
        if not (type(self.offset) is int and type(self.bytes) is int and type(self.shape) is list
                and all(type(n) is int and n >= 0 for n in self.shape) and self.dtype in ITEMSIZE
                and isinstance(self.sha256, str) and 8 <= self.offset and self.offset + self.bytes <= file_bytes
                and self.bytes == math.prod(self.shape) * ITEMSIZE[self.dtype]):
            raise DamagedRecord(f"{key}: the array record {str(rec)[:200]} does not fit its file of {file_bytes} bytes")
        self.shape = tuple(self.shape)

    def read(self) -> np.ndarray:
        with open_plain(self.file) as f:
            have = os.fstat(f.fileno()).st_size
            if have != self.file_bytes:
                raise GetLocalError(f"{self.file} is {have} bytes but the log says {self.file_bytes} ({self.key}); "
                                    "it was truncated or replaced: copy the whole run directory again")
            f.seek(self.offset)
            data = np.empty(self.bytes, dtype=np.uint8)
            if f.readinto(memoryview(data)) != self.bytes:
                raise GetLocalError(f"{self.file} became shorter while it was read ({self.key})")
        if hashlib.sha256(memoryview(data)).hexdigest() != self.sha256:
            raise GetLocalError(f"{self.file} does not match the sha256 of {self.key} in the log; it was altered "
                                "or damaged: copy the whole run directory again")
        return decode_array(data, self.dtype, self.shape)


# --------------------------------------------------------------------------- values


class Plan:
    """The arrays of a capture or step, checked when listed (``values``: ``[(array, key)]``), written later."""

    def __init__(self):
        self.values: List[Tuple[Any, str]] = []

    def array(self, value, key: str) -> int:
        if not is_array(value):
            value = np.asarray(value)
            if value.dtype == object:
                raise GetLocalError(f"cannot save {key}: it is not an array of numbers")
        name = str(value.dtype).replace("torch.", "")
        if name not in DTYPES and name != "bfloat16":
            raise GetLocalError(
                f"cannot save {key}: dtype {value.dtype} is not one safetensors stores "
                f"({', '.join(sorted(DTYPES))}); convert it first, e.g. .astype('float32')")
        self.values.append((value, key))
        return len(self.values) - 1


def encode_cache(cache, calls, plan: Plan) -> Dict[str, Any]:
    """``{key: [{"value", "call", "owner"}]}``: a cache dict's entries, with their calls when given."""
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
            entry = {"value": encode(value, f"cache[{key!r}][{i}]", plan, 0)}
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


def encode(value, key: str, plan: Plan, depth: int):
    """``value`` as a JSON record (``{"json": 3}``, ``{"array": 0}``, ``{"dict": [[k, v], ...]}``, ...)."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return {"json": value}
    if kind is float:
        return {"json": value} if math.isfinite(value) else {"float": str(value)}
    if isinstance(value, np.generic) and value.dtype.name in DTYPES:
        item = value.item()
        return {"scalar": [value.dtype.name, _float(item) if isinstance(item, float) else item]}
    if is_array(value):
        return {"array": plan.array(value, key)}
    if isinstance(value, Lazy):  # a map not computed yet (an adapter's mode='fast'): saved as what it stands for,
        return encode(value.compute(), key, plan, depth)  # computed for the file, not kept in the capture
    if kind in (list, tuple, dict):
        if depth >= MAX_DEPTH:
            raise GetLocalError(f"cannot save {key}: nested more than {MAX_DEPTH} lists/tuples/dicts deep")
        if kind is dict:
            pairs = []
            for k, v in value.items():
                if is_array(k):
                    raise GetLocalError(f"cannot save {key}: the dict key {k!r} is a tensor; use a plain value")
                pairs.append([encode(k, f"{key} key {k!r}", plan, depth + 1),
                              encode(v, f"{key}[{k!r}]", plan, depth + 1)])
            return {"dict": pairs}
        return {kind.__name__: [encode(v, f"{key}[{i}]", plan, depth + 1) for i, v in enumerate(value)]}
    raise GetLocalError(
        f"cannot save {key}: a {kind.__module__}.{kind.__qualname__}; a capture holds arrays, tensors, numpy "
        "scalars, None, bool, int, float, str and lists/tuples/dicts of them (exactly these types, so that load "
        "gives back what was saved); capture with convert= a function that turns it into one of those, or "
        "drop it from the dict you save")


def decode(ref, array: Callable[[Any, str], Any], where: str, version: int, depth: int):
    """The value a record of :func:`encode` stands for; ``array(record, where)`` gives its arrays.

    ``version``: the capture format (1 wrote dicts as ``{str: record}``). Raises DamagedRecord(Type)
    on a record no getlocal wrote; the format modules turn those into :func:`corrupt`.
    """
    if not isinstance(ref, dict) or len(ref) != 1:
        raise DamagedRecord(f"{where}: {ref!r} is not a value record")
    if depth > MAX_DEPTH:
        raise DamagedRecord(f"{where}: nested more than {MAX_DEPTH} deep")
    (kind, body), = ref.items()
    if kind == "json":
        if body is not None and type(body) not in (bool, int, str, float):
            raise DamagedRecordType(f"{where}: {body!r} is not a plain value")
        return body
    if kind == "array":
        return array(ref, where)
    if kind == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if kind == "scalar" and type(body) is list and len(body) == 2 and body[0] in DTYPES:
        if type(body[1]) not in (bool, int, float, str):
            raise DamagedRecordType(f"{where}: {body[1]!r} is not a number")
        return np.dtype(body[0]).type(body[1])
    if kind in ("list", "tuple") and type(body) is list:
        items = [decode(v, array, f"{where}[{i}]", version, depth + 1) for i, v in enumerate(body)]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and version == 1 and type(body) is dict:
        return {k: decode(v, array, f"{where}[{k!r}]", version, depth + 1) for k, v in body.items()}
    if kind == "dict" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise DamagedRecord(f"{where}: {pair!r} is not a [key, value] pair")
            k = decode(pair[0], array, f"{where} key", version, depth + 1)
            out[k] = decode(pair[1], array, f"{where}[{k!r}]", version, depth + 1)
        return out
    raise DamagedRecord(f"{where}: unknown record {kind!r}: {body!r}"[:300])


def plain_json(value, where: str, depth: int = 0):
    """``value`` if JSON gives it back unchanged (types included), else a GetLocalError naming the part."""
    kind = type(value)
    if depth > MAX_DEPTH:
        raise GetLocalError(f"{where} is nested more than {MAX_DEPTH} deep")
    if value is None or kind in (bool, int, str) or (kind is float and math.isfinite(value)):
        return value
    if kind is list:
        return [plain_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if kind is dict:
        for k in value:
            if type(k) is not str:
                raise GetLocalError(f"{where}: the key {k!r} is not a str; JSON keys are strings")
        return {k: plain_json(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
    raise GetLocalError(f"{where} holds {value!r} ({kind.__name__}), which JSON does not give back as it was; "
                        "use str, int, finite float, bool, None, lists and dicts with str keys")


# --------------------------------------------------------------------------- labels


def optional(value, kind):
    """``value`` if it is None or exactly a ``kind``, else DamagedRecordType."""
    if value is not None and type(value) is not kind:
        raise DamagedRecordType(f"{value!r} is not a {kind.__name__}")
    return value


def dict_field(record: Dict[str, Any], name: str, where: str = "") -> Dict[str, Any]:
    """The dict ``record[name]`` ({} when absent), else DamagedRecordType (its message begins with ``where``)."""
    value = record.get(name, {})
    if not isinstance(value, dict):
        raise DamagedRecordType(f"{where}{name!r} is a {type(value).__name__}, not a dict")
    return value


def map_labels(meta: Dict[str, Any]) -> Dict[str, Any]:
    """An AttentionMap's labels (tower, layer, path, step, phase, call) from their JSON, each of its type."""
    return {name: optional(meta[name], kind) for name, kind in LABELS}


def rows_and_padding(meta, shape) -> Dict[str, Any]:
    """``AttentionMap.padding`` and ``.rows`` from their JSON (positions), checked against the map's shape."""
    batch, queries, keys = (shape[0] if len(shape) > 2 else 1), shape[-2], shape[-1]
    out: Dict[str, Any] = {"padding": None, "rows": None}
    padding, rows = meta.get("padding"), meta.get("rows")
    if padding is not None:
        if type(padding) is not list or len(padding) != batch or not all(
                type(row) is list and all(type(p) is int and 0 <= p < keys for p in row) for row in padding):
            raise DamagedRecord(f"padding is not {batch} lists of key positions below {keys}")
        out["padding"] = np.zeros((batch, keys), dtype=bool)
        for item, row in enumerate(padding):
            out["padding"][item, row] = True
    if rows is not None:
        if type(rows) is not list or len(rows) != queries or not all(type(r) is int and 0 <= r < keys for r in rows):
            raise DamagedRecord(f"rows is not {queries} key positions below {keys}")
        out["rows"] = np.asarray(rows, dtype=np.int64)
    return out


def layout(data) -> TokenLayout:
    """A token layout from its JSON, every field checked (a layout from a colleague's file indexes arrays)."""
    segments = data["segments"] if isinstance(data, dict) else None
    if type(segments) is not list:
        raise DamagedRecordType(f"{data!r} is not a token layout")
    for s in segments:
        if not isinstance(s, dict) or type(s["kind"]) is not str or type(s["start"]) is not int \
                or type(s["stop"]) is not int or not 0 <= s["start"] <= s["stop"]:
            raise DamagedRecord(f"{s!r} is not a token segment")
        optional(s.get("camera"), str)
        grid = s.get("grid")
        if grid is not None and (type(grid) is not list or len(grid) != 2 or not all(type(n) is int and n > 0 for n in grid)
                                 or grid[0] * grid[1] != s["stop"] - s["start"]):
            raise DamagedRecord(f"{s!r} has a grid that does not cover its tokens")
    return TokenLayout.from_dict(data)
