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
format 1 (``arrays/``) still load (the versions policy: :mod:`getlocal._codec`).

The array files, values and labels are written and read by :mod:`getlocal._codec`,
which :mod:`getlocal.recording` shares; :func:`load` and :func:`read` also open a
recorded run, through ``recording``'s public :func:`~getlocal.recording.read_run`.
"""
import contextlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ._codec import (CAPTURE_INDEX as INDEX, ITEMSIZE, DamagedRecord, DamagedRecordType, Missing, Plan, corrupt,
                     decode, dict_field, directory, encode_cache, layout, map_labels, open_plain, optional,
                     plain_json, read_array_file, rows_and_padding, to_numpy, write_array)
from ._errors import GetLocalError
from ._files import fsync_dir, write_atomic
from . import _live
from .maps import AttentionMap, AttentionMaps
from .recording import is_run, read_run

FORMAT = "getlocal.capture"
FORMAT_VERSION = 2
LOCK = ".getlocal-save.lock"
_READS = (1, 2)  # format 1: one arrays/ folder, dicts as {str: value}, no numpy scalars
_LOCK_WAIT = 120.0  # seconds a save waits for another live save of the same path
_FILE = re.compile(r"(arrays|arrays-[0-9a-f]{16})/[0-9]{5,9}\.safetensors")
_OURS = re.compile(r"arrays|arrays-[0-9a-f]{16}|capture\.json|\.capture\.json\..*\.tmp|\.getlocal-save\.lock.*")


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
    target = directory(path, "save")
    for name, value in (("calls", calls), ("images", images), ("info", info)):
        if value is not None and not isinstance(value, dict):
            raise GetLocalError(f"save({name}=...) takes a dict or None; got {type(value).__name__}")
    plan = Plan()
    index: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                             "getlocal_version": _live.version()}
    if isinstance(capture, AttentionMaps):
        index["kind"] = "maps"
        index["maps"] = [dict(m.meta(), array=plan.array(m.compute(), f"maps[{i}]")) for i, m in enumerate(capture)]
        index["layouts"] = {k: v.to_dict() for k, v in capture.layouts.items()}
    elif isinstance(capture, dict):
        index["kind"] = "cache"
        cache, calls = _live.frozen(capture, calls)
        index["cache"] = encode_cache(cache, calls, plan)
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
    index["info"] = plain_json(info or {}, "save(info=...)")
    _check_target(target)
    target.mkdir(parents=True, exist_ok=True)
    with _SaveLock(target):
        _check_target(target)  # again: another process may have changed it while we waited
        generation = f"arrays-{secrets.token_hex(8)}"
        index["generation"] = generation
        try:
            index["arrays"] = _write(plan, target, generation)
            text = json.dumps(index, indent=1, allow_nan=False)
            write_atomic(target / INDEX, lambda f: f.write(text.encode("utf-8")))  # the switch
        except BaseException:
            shutil.rmtree(target / generation, ignore_errors=True)
            raise
        _remove_leftovers(target, keep=generation)
    return target


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


def _write(plan: Plan, target: Path, generation: str) -> List[Dict[str, Any]]:
    """The arrays of ``plan``, one file each in the new generation folder, put on disk; their index records."""
    folder = target / generation
    folder.mkdir()
    records = []
    for number, (value, key) in enumerate(plan.values):
        arr, source = to_numpy(value)
        name = f"{generation}/{number:05d}.safetensors"
        records.append(dict(write_array(target / name, arr), file=name, key=key, shape=list(arr.shape),
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


def read(path) -> Saved:
    """Everything in the capture directory ``path``, checked against its index (see :class:`Saved`)."""
    root = directory(path, "load")
    if is_run(root):  # a recorded episode (getlocal.record): its steps, arrays read when touched
        return Saved(root, read_run(root), version=_live.version())
    for attempt in range(3):
        raw = _index_bytes(root)
        try:
            return _read(root, raw)
        except Missing:
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
            raise corrupt(root, f"{where} points to array {number!r}, but the index lists {len(arrays)} arrays")
        return arrays[number]

    try:
        images = {str(name): array(ref, f"images[{name!r}]")
                  for name, ref in dict_field(index, "images", f"{INDEX}: ").items()}
        info = dict_field(index, "info", f"{INDEX}: ")
        out = Saved(root, None, images, info, version=str(index.get("getlocal_version", "")))
        if index["kind"] == "maps":
            out.data = _decode_maps(root, index, array)
        else:
            out.data, out.calls, out.owners = {}, {}, {}
            for key, entries in dict_field(index, "cache", f"{INDEX}: ").items():
                if type(entries) is not list or not all(isinstance(e, dict) for e in entries):
                    raise DamagedRecord(f"cache[{key!r}] is not a list of entries")
                out.data[key] = [decode(e["value"], array, f"cache[{key!r}][{i}]", version, 0)
                                 for i, e in enumerate(entries)]
                out.calls[key] = [optional(e.get("call"), int) for e in entries]
                out.owners[key] = [optional(e.get("owner"), str) for e in entries]
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, GetLocalError) as exc:
        if isinstance(exc, GetLocalError) and not isinstance(exc, (TypeError, ValueError)) \
                and str(exc).startswith(str(root)):  # a damaged record's message names a value, not the file
            raise
        raise corrupt(root, f"the labels do not parse ({type(exc).__name__}: {exc})") from None
    return out


def _decode_maps(root: Path, index, array) -> AttentionMaps:
    maps = []
    for i, meta in enumerate(_list(index, "maps", root)):
        if not isinstance(meta, dict):
            raise DamagedRecordType(f"maps[{i}] is not a dict")
        arr = array(meta, f"maps[{i}]")
        labels = map_labels(meta)
        camera = optional(meta.get("camera"), str)
        queries, keys = layout(meta["queries"]), layout(meta["keys"])
        if list(arr.shape) != meta["shape"] or arr.ndim < 2 or arr.shape[-2:] != (len(queries), len(keys)):
            raise corrupt(root, f"maps[{i}] has shape {list(arr.shape)} but its labels say {meta['shape']} with "
                                f"{len(queries)} queries and {len(keys)} keys")
        maps.append(AttentionMap(arr, queries=queries, keys=keys, camera=camera, **labels,
                                 **rows_and_padding(meta, arr.shape)))
    return AttentionMaps(maps, {str(k): layout(v) for k, v in dict_field(index, "layouts", f"{INDEX}: ").items()})


def _list(index, name, root):
    value = index.get(name)
    if not isinstance(value, list):
        raise corrupt(root, f"{INDEX} has no list {name!r}")
    return value


def _unique(records, root):
    seen = set()
    for rec in records:
        name = rec.get("file") if isinstance(rec, dict) else None
        if isinstance(name, str) and name in seen:
            raise corrupt(root, f"{INDEX} lists the file {name!r} twice")
        seen.add(name)
    return records


def _index_bytes(root: Path) -> bytes:
    if not root.is_dir():
        raise GetLocalError(f"{root} is not a directory; give the directory that getlocal.save() or "
                            "`python -m getlocal demo` wrote (e.g. getlocal-demo/vit_small_patch16_224/capture)")
    file = root / INDEX
    if not os.path.lexists(file):
        raise GetLocalError(f"{root} is not a getlocal capture: it has no {INDEX}; give the directory that "
                            "getlocal.save() or `python -m getlocal demo` wrote "
                            "(e.g. getlocal-demo/vit_small_patch16_224/capture)")
    with open_plain(file) as f:
        return f.read()


def _parse_index(root: Path, raw: bytes) -> Dict[str, Any]:
    file = root / INDEX
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise corrupt(root, f"{INDEX} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise GetLocalError(f"{file} is not a getlocal capture index (no \"format\": \"{FORMAT}\")")
    version = index.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise GetLocalError(
            f"{root} was written by getlocal {index.get('getlocal_version', '?')} in capture format {version}; "
            f"this getlocal {_live.version()} reads formats {', '.join(map(str, _READS))}: upgrade getlocal to load it")
    if type(version) is not int or version not in _READS:
        raise corrupt(root, f"{INDEX} says format_version {version!r}, which no getlocal wrote "
                            f"(known: {', '.join(map(str, _READS))})")
    if index.get("kind") not in ("maps", "cache"):
        raise corrupt(root, f"{INDEX} says kind {index.get('kind')!r}, expected 'maps' or 'cache'")
    return index


def _read_array(root: Path, number: int, rec, version: int) -> np.ndarray:
    try:
        name, size, digest, key = rec["file"], rec["bytes"], rec["sha256"], rec.get("key", f"array {number}")
        shape, dtype = list(rec["shape"]), rec["dtype"]
        if not (isinstance(name, str) and type(size) is int and isinstance(digest, str) and isinstance(key, str)
                and all(type(n) is int and n >= 0 for n in shape) and dtype in ITEMSIZE):
            raise TypeError
    except (KeyError, TypeError):
        raise corrupt(root, f"{INDEX}: the record of array {number} is incomplete: {str(rec)[:200]}") from None
    # only names getlocal writes: never a path that leaves the capture directory
    if not _FILE.fullmatch(name) or (version == 1) != name.startswith("arrays/"):
        raise corrupt(root, f"{INDEX} names the file {name!r} for {key}, which is not "
                            f"{'arrays' if version == 1 else 'arrays-<16 hex>'}/NNNNN.safetensors")
    return read_array_file(root, root / name, size, digest, key, shape, dtype)


__all__ = ["save", "load", "read", "Saved", "INDEX", "FORMAT_VERSION"]
