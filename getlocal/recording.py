"""Record a whole episode: each model call's captures streamed to disk as they arrive, memory flat.

>>> import numpy as np, tempfile
>>> from getlocal import get_local, record, load
>>> @get_local("attn")
... def attend(x):
...     attn = np.outer(x, x)
...     return attn.sum()
>>> with get_local.capture(), record(tempfile.mkdtemp() + "/run1") as rec:
...     for t in range(3):
...         _ = attend(np.arange(3.0) + t)
...         _ = rec.step(info={"reward": float(t)})
>>> run = load(rec.path)
>>> len(run), run[2].info, run[2].maps["attend"][0].shape
(3, {'reward': 2.0}, (3, 3))

Layout of a run directory (one part per recording process, never shared)::

    RUN/run.json                          marks the directory as a recorded run
    RUN/rank-00000/part.json              rank, world size, pid, host, the recording's info
    RUN/rank-00000/steps.log              one line per completed step: "<step> <sha256> <json>"
    RUN/rank-00000/step-00000000.safetensors   that step's arrays (maps, images, arrays in info)

A step's arrays are written to their own file first; then one line naming the
file, every array's offset, shape, dtype and sha256, and every label is
appended to ``steps.log`` with a single ``write``. The log line is the commit:
a process killed at any moment leaves complete steps and, at worst, a step
file no line names or a torn last line, both ignored when reading. Nothing is
ever rewritten, so earlier steps cannot be lost. With ``durable=True`` (the
default) the file, its folder and the log are also fsync'ed every step
(about 8 ms), so a power cut loses at most the step being written too.

Each process claims its part with ``mkdir`` (``rank-RRRRR``, or
``rank-RRRRR-N`` when taken): processes of a torchrun/accelerate job, or two
unrelated runs pointed at the same directory, never write into one folder.
Reading (``getlocal.load(RUN)``) opens the logs only; arrays are read, and
checked against their sha256, when they are touched.

With ``record(path, explain=...)`` a step's line also holds an explanation's
labels (method, rows, excluded keys, layers, the keys' layout) and its file
three small arrays (the rows' shares, the last layer's, the keys each row
reaches); ``maps=False`` leaves the maps out. Older readers ignore the field,
and runs written before it load with ``Step.explanation`` None, so the run
format keeps its number.

The values, labels and array bytes are those of a saved capture, written and read
by :mod:`getlocal._codec`. The cache written (without ``collect``) and emptied
every step is the ``get_local`` the front door hands to :mod:`getlocal._live`.
"""
import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from . import _check, _live
from ._codec import (CAPTURE_INDEX as INDEX, RUN_MARKER as RUN, DamagedRecord, DamagedRecordType, Plan, StoredArray,
                     corrupt, decode, dict_field, directory, encode, encode_cache, layout, little_endian, map_labels,
                     open_plain, optional, plain_json, rows_and_padding, safetensors_head, to_numpy)
from ._errors import GetLocalError
from ._files import fsync_dir, write_atomic
from .explain import Explanation
from .maps import AttentionMap, AttentionMaps

PART = "part.json"
LOG = "steps.log"
FORMAT = "getlocal.run"
FORMAT_VERSION = 1
_PART_NAME = re.compile(r"rank-([0-9]{5})(?:-([0-9]{1,6}))?")
_LINE = re.compile(rb"([0-9]{1,12}) ([0-9a-f]{64}) (\{.*\})")
_CHUNK = 1 << 24  # bytes written (and checked for zeros) at a time
_LABELS = ("tower", "layer", "phase", "path")  # what select= may filter maps by before they are written


# --------------------------------------------------------------------------- writing


def record(path, *, collect: Optional[Callable[[], Any]] = None, every: int = 1,
           select: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None,
           rank: Optional[int] = None, durable: bool = True, explain: Optional[Callable[[Any], Any]] = None,
           maps: bool = True) -> "Recorder":
    """Start recording into the run directory ``path``; returns a :class:`Recorder` (a context manager).

    Call ``rec.step(images=..., info=...)`` after each model call (one control
    step). What it writes is ``collect()`` (e.g. ``lambda: openvla.collect(model)``,
    which returns labelled ``AttentionMaps``) or, when ``collect`` is None, the
    raw ``get_local.cache`` with its calls. The cache is emptied after every
    step, recorded or not, so memory stays flat however long the episode.

    ``every``: write every n-th step (0, n, 2n, ...); the others are only cleared.
    ``select``: for maps, ``AttentionMaps.select`` arguments (``tower``,
    ``layer``, ``phase``, ``path``) applied before writing; for a raw cache,
    ``{"key": [cache keys]}``. ``info``: a dict of JSON values kept with this
    recording (model, task, episode; ``pad_to_square`` tells the episode
    figures that the frames were letterboxed). ``rank``: the part's rank; by
    default ``torch.distributed``'s when it is initialised, else ``$RANK``,
    else 0. ``durable``: fsync every step (False: safe against a killed
    process but not a power cut; about 8 ms a step less).

    ``explain``: a function of the step's capture (what ``collect()`` gives,
    before ``select``) returning an :class:`~getlocal.explain.Explanation` or
    a dict ``{str: Explanation}``, e.g. ``lambda m: explain.rollout(m.select(tower="llm"),
    rows="generated", exclude="bos")``; each step stores its result (the
    explanation's arrays, ``[batch, rows, keys]``, and what it says: method,
    rows, excluded keys, layers, the keys' layout, so ``grid(camera)`` and the
    even share ``even`` come back), read back as ``Step.explanation``.
    ``maps=False`` writes no maps (the explanation, images and info only:
    kilobytes a step instead of megabytes). A function that raises, or
    returns something else, never breaks the step: the step is written
    without its explanation, ``Step.explanation_error`` says why and a
    ``RuntimeWarning`` is issued.

    >>> import tempfile
    >>> rec = record(tempfile.mkdtemp() + "/run")
    >>> rec.part.name
    'rank-00000'
    >>> rec.close()
    """
    return Recorder(path, collect=collect, every=every, select=select, info=info, rank=rank, durable=durable,
                    explain=explain, maps=maps)


class Recorder:
    """Appends one step at a time to its own part of a run directory (see :func:`record`).

    ``path``: the run directory; ``part``: this recorder's folder in it;
    ``rank`` / ``world_size``; ``steps``: steps seen so far; ``written``: steps written.
    """

    def __init__(self, path, *, collect=None, every=1, select=None, info=None, rank=None, durable=True, explain=None,
                 maps=True):
        root = directory(path, "record")
        if collect is not None and not callable(collect):
            raise _check.ArgumentTypeError(
                f"collect must be a function returning AttentionMaps or a cache dict (e.g. lambda: "
                f"openvla.collect(model)) or None for get_local.cache; got {_check.show(collect)}")
        if explain is not None and not callable(explain):
            raise _check.ArgumentTypeError(
                f"explain must be a function of the step's maps returning an Explanation (e.g. lambda m: "
                f"getlocal.explain.rollout(m.select(tower='llm'), rows='generated')) or None; got "
                f"{_check.show(explain)}")
        self.explain = explain
        self.maps = _check.flag("maps", maps)
        if not maps and select is not None:
            raise _check.ArgumentError(f"select={_check.show(select)} picks the maps to write and maps=False writes "
                                       f"none: give one of them")
        self.every = _check.integer("every", every, low=1)
        self.select = _select_option(select)
        self.durable = _check.flag("durable", durable)
        self.info = plain_json(info or {}, "record(info=...)") if info is None or isinstance(info, dict) else None
        if self.info is None:
            raise _check.ArgumentTypeError(f"info must be a dict of JSON values or None; got {_check.show(info)}")
        self.rank, self.world_size = _rank(rank)
        self.collect = collect
        self.path = root
        self.steps = 0
        self.written = 0
        self._log = None
        self.part = _claim_part(root, self.rank)
        meta = {"format": FORMAT + "-part", "format_version": FORMAT_VERSION, "getlocal_version": _live.version(),
                "rank": self.rank, "world_size": self.world_size, "pid": os.getpid(),
                "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "info": self.info}
        text = json.dumps(meta, indent=1, allow_nan=False).encode("utf-8")
        write_atomic(self.part / PART, lambda f: f.write(text))
        self._log = os.open(self.part / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
        if self.durable:
            os.fsync(self._log)
            fsync_dir(self.part)

    # -- the public verbs ----------------------------------------------------

    def step(self, capture=None, *, images: Optional[Dict[str, Any]] = None,
             info: Optional[Dict[str, Any]] = None) -> Optional[int]:
        """Write this control step (its maps, ``images`` and ``info``), empty the cache; return its number.

        ``capture``: what to write instead of ``collect()`` (AttentionMaps or a
        cache dict). ``images``: ``{camera: HxWxC array}``, the frames the model
        saw. ``info``: ``{str: value}``: the instruction, the action taken, the
        reward (arrays, numbers, str, lists and dicts of them). Returns None for
        a step that ``every`` skips.
        """
        if self._log is None:
            raise GetLocalError(f"this recorder of {self.path} is closed; start another with getlocal.record()")
        live = _live.handed()  # the front door's get_local: its cache is written (without collect) and emptied
        number = self.steps
        self.steps += 1
        try:
            if number % self.every:
                return None
            if capture is None:
                capture = self.collect() if self.collect is not None else live.cache
            explained = _explain(self.explain, capture) if self.explain is not None else None
            line, arrays = _encode_step(number, capture if self.maps else _nothing(capture), images, info,
                                        self.select if self.maps else None, explained)
            if arrays:
                _write_step_file(self.part / _step_file(number), arrays, self.durable)
                if self.durable:
                    fsync_dir(self.part)
            os.write(self._log, line)  # one write: the commit of this step
            if self.durable:
                os.fsync(self._log)
            self.written += 1
            return number
        finally:
            capture = None
            live.clear()

    def close(self) -> None:
        """Stop recording (the steps written stay; the run can be loaded at any time, before or after)."""
        if self._log is not None:
            os.close(self._log)
            self._log = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self):
        return f"Recorder({str(self.part)!r}, rank {self.rank}, {self.written} of {self.steps} steps written)"


def _explain(function, capture):
    """``function(capture)`` checked, or the reason it failed (a str): a failed explanation never breaks the step."""
    try:
        result = function(capture)
        parts = result.items() if isinstance(result, dict) else [(None, result)]
        for name, value in parts:
            if name is not None and not isinstance(name, str):
                raise _check.ArgumentTypeError(f"its dict has the key {name!r}; name each explanation with a str")
            if not isinstance(value, Explanation):
                raise _check.ArgumentTypeError(
                    f"it returned {_check.show(value)}; return an Explanation (explain.rollout(...) or "
                    f"relevance(...)) or a dict of them")
        if isinstance(result, dict) and not result:
            raise _check.ArgumentError("it returned an empty dict; return an Explanation or a dict of them")
        return result
    except Exception as exc:  # noqa: BLE001 (the step is written whatever the explanation does)
        reason = f"record(explain=...) failed: {type(exc).__name__}: {str(exc)[:2000]}"  # one log line, kept short
        warnings.warn(f"getlocal: {reason}; the step is written without its explanation (Step.explanation_error "
                      f"gives the reason)", RuntimeWarning, stacklevel=3)
        return reason


def _nothing(capture):
    """What ``maps=False`` writes of a capture: its kind, without its maps or entries."""
    if isinstance(capture, AttentionMaps):
        return AttentionMaps([], {})
    return {} if isinstance(capture, dict) else capture


def _select_option(select):
    if select is None:
        return None
    if not isinstance(select, dict) or not all(k in _LABELS + ("key",) for k in select):
        raise _check.ArgumentError(
            f"select must be a dict with keys among {', '.join(_LABELS + ('key',))} (tower/layer/phase/path "
            f"for maps, key for a raw cache); got {_check.show(select)}")
    return dict(select)


def _rank(rank):
    world = 1
    if rank is None:
        dist = getattr(sys.modules.get("torch"), "distributed", None)
        if dist is not None and dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            env, size = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
            rank = int(env) if env.isdigit() else 0
            world = int(size) if size.isdigit() else 1
    rank = _check.integer("rank", rank, low=0, high=99999)
    return rank, max(world, rank + 1)


def _claim_part(root: Path, rank: int) -> Path:
    """This recorder's folder, created with mkdir (which fails if it exists: one writer per folder)."""
    if root.exists() and not root.is_dir():
        raise GetLocalError(f"cannot record into {root}: it is a file; give a directory path")
    if (root / INDEX).exists():
        raise GetLocalError(f"cannot record into {root}: it holds a saved capture ({INDEX}); give a new directory")
    if root.is_dir() and not (root / RUN).exists():
        foreign = sorted(n for n in os.listdir(root) if not _PART_NAME.fullmatch(n) and not n.startswith(".run.json"))
        if foreign:
            raise GetLocalError(f"cannot record into {root}: it is a directory with files ({', '.join(foreign[:3])}) "
                                f"but not a getlocal run (no {RUN}); give a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    if os.path.islink(root / RUN) or ((root / RUN).exists() and _run_marker(root) is None):
        raise GetLocalError(f"cannot record into {root}: its {RUN} is not one getlocal wrote; give a new directory")
    if not (root / RUN).exists():
        marker = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION}).encode()
        write_atomic(root / RUN, lambda f: f.write(marker))  # two processes may both write it: same bytes
    for n in range(1000000):
        part = root / (f"rank-{rank:05d}" if n == 0 else f"rank-{rank:05d}-{n}")
        try:
            part.mkdir()
        except FileExistsError:
            continue
        return part
    raise GetLocalError(f"cannot record into {root}: a million parts of rank {rank} exist already")


def _step_file(number: int) -> str:
    return f"step-{number:08d}.safetensors"


def _encode_step(number, capture, images, info, select, explained=None):
    """The log line of one step and the arrays its file holds."""
    plan = Plan()
    record: Dict[str, Any] = {"step": number}
    if isinstance(explained, str):
        record["explanation"] = {"error": explained}
    elif explained is not None:
        parts = explained.items() if isinstance(explained, dict) else [(None, explained)]
        record["explanation"] = {"named": isinstance(explained, dict),
                                 "parts": [_encode_explanation(name, e, plan) for name, e in parts]}
    if isinstance(capture, AttentionMaps):
        if select:
            if "key" in select:
                raise _check.ArgumentError("select={'key': ...} is for a raw cache; these are AttentionMaps: "
                                           "select by tower, layer, phase or path")
            capture = capture.select(**select)
        layouts: Dict[str, int] = {}
        table: List[Dict[str, Any]] = []

        def layout(lay):
            text = json.dumps(lay.to_dict(), sort_keys=True)
            if text not in layouts:
                layouts[text] = len(table)
                table.append(lay.to_dict())
            return layouts[text]

        record["kind"] = "maps"
        record["maps"] = [dict(m.meta(), array=plan.array(m.array, f"maps[{i}]"), queries=layout(m.queries),
                               keys=layout(m.keys)) for i, m in enumerate(capture)]
        record["token_layouts"] = table
        record["layouts"] = {k: v.to_dict() for k, v in capture.layouts.items()}
    elif isinstance(capture, dict):
        cache, calls = _live.frozen(capture, None)
        if select:
            if set(select) != {"key"}:
                raise _check.ArgumentError("select= for a raw cache takes {'key': [cache keys]} only")
            keys = select["key"]
            keys = [keys] if isinstance(keys, str) else list(keys)
            cache = {k: v for k, v in cache.items() if k in keys}
        record["kind"] = "cache"
        record["cache"] = encode_cache(cache, calls, plan)
    else:
        raise _check.ArgumentTypeError(
            f"step() writes AttentionMaps (an adapter's collect()) or a cache dict such as get_local.cache; "
            f"got {_check.show(capture)}")
    for name, value in (("images", images), ("info", info)):
        if value is not None and not isinstance(value, dict):
            raise _check.ArgumentTypeError(f"step({name}=...) takes a dict or None; got {_check.show(value)}")
        for key in value or {}:
            if not isinstance(key, str):
                raise _check.ArgumentTypeError(f"step({name}=...): the key {key!r} is not a str; name it with a str")
    record["images"] = {name: plan.array(im, f"images[{name!r}]") for name, im in (images or {}).items()}
    record["info"] = {k: encode(v, f"step(info=...)[{k!r}]", plan, 0) for k, v in (info or {}).items()}
    arrays = []
    offset = 0
    for value, key in plan.values:
        arr, source = to_numpy(value)
        arr = little_endian(arr)
        arrays.append((arr, dict(key=key, shape=list(arr.shape), dtype=arr.dtype.name, source=source,
                                 offset=offset, bytes=arr.nbytes)))
        offset += arr.nbytes
    if arrays:
        head = safetensors_head({str(i): (a, r["offset"]) for i, (a, r) in enumerate(arrays)})
        start = len(head)
        for arr, rec in arrays:
            rec["offset"] += start
            rec["sha256"] = hashlib.sha256(memoryview(arr.reshape(-1)).cast("B")).hexdigest()
        record["file"] = _step_file(number)
        record["file_bytes"] = start + offset
        arrays.insert(0, (np.frombuffer(head, np.uint8), None))
    record["arrays"] = [rec for _, rec in arrays if rec is not None]
    text = json.dumps(record, allow_nan=False, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(b"%d " % number + text).hexdigest().encode()
    return b"%d %s %s\n" % (number, digest, text), [a for a, _ in arrays]


def _encode_explanation(name, e: Explanation, plan: Plan) -> Dict[str, Any]:
    """One explanation as JSON labels and three arrays; ``values`` and ``last_layer`` stay float64 (exact)."""
    where = f"explanation {name!r}" if name is not None else "explanation"
    return {"name": name, "method": e.method, "tower": e.tower, "step": e.step, "phase": e.phase,
            "layers": [int(x) for x in e.layers], "rows": [int(r) for r in e.rows],
            "excluded": [int(x) for x in e.excluded], "keys": None if e.keys is None else e.keys.to_dict(),
            "values": plan.array(np.ascontiguousarray(e.values), f"{where}.values"),
            "last_layer": plan.array(np.ascontiguousarray(e.last_layer), f"{where}.last_layer"),
            "reach": plan.array(np.ascontiguousarray(e.reach, dtype=np.int64), f"{where}.reach")}


def _write_step_file(file: Path, arrays: List[np.ndarray], durable: bool) -> None:
    """The header and arrays, one after another; runs of zero bytes are skipped (the file stays sparse)."""
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        end = 0
        for arr in arrays:
            data = memoryview(arr.reshape(-1)).cast("B")
            for begin in range(0, len(data), _CHUNK):
                chunk = data[begin:begin + _CHUNK]
                if len(chunk) == _CHUNK and not np.frombuffer(chunk, np.uint8).any():
                    os.lseek(fd, len(chunk), os.SEEK_CUR)
                else:
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
            end += len(data)
        os.ftruncate(fd, end)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading


class Step:
    """One recorded control step: ``step`` (its number), ``rank``, ``part``, and, read when touched,
    ``maps`` (``AttentionMaps`` whose arrays stay on disk until used, or the cache dict),
    ``images`` (a mapping read per camera), ``info`` (the dict given to ``rec.step``),
    ``calls`` / ``owners`` for a raw cache."""

    def __init__(self, part: "_Part", step: int, line: bytes):
        self.part_info = part
        self.step = step
        self._line = line
        self._parsed = None

    @property
    def rank(self) -> int:
        return self.part_info.rank

    @property
    def part(self) -> str:
        return self.part_info.name

    @property
    def maps(self):
        return self._parse()["maps"]()

    @property
    def images(self) -> Mapping:
        return self._parse()["images"]

    @property
    def info(self) -> Dict[str, Any]:
        return self._parse()["info"]()

    @property
    def explanation(self):
        """What ``record(explain=...)`` stored for this step: an ``Explanation``, a dict of them, or None
        (recorded without ``explain``, or it failed: :attr:`explanation_error`). Read when touched."""
        return self._parse()["explanation"]()

    @property
    def explanation_error(self) -> Optional[str]:
        """Why ``record(explain=...)`` gave this step no explanation (the exception, as a str), else None."""
        return self._parse()["explanation_error"]

    @property
    def calls(self):
        return self._parse()["calls"]

    @property
    def owners(self):
        return self._parse()["owners"]

    @property
    def kind(self) -> str:
        return self._parse()["kind"]

    def _parse(self):
        if self._parsed is None:
            self._parsed = _parse_step(self.part_info, self.step, self._line)
        return self._parsed

    def __repr__(self):
        return f"Step({self.step}, rank {self.rank}, part {self.part!r})"


class Recording(Sequence):
    """A recorded run: its steps in order (part by part), opened without reading any array.

    ``steps``: the :class:`Step` list; ``parts``: ``{part name: {"rank", "world_size", "info", ...}}``;
    ``ranks``: the ranks present; ``torn``: log lines left half written by an interrupted step (ignored).
    ``run[i]`` is a Step, ``run[a:b]`` and :meth:`select` give Recordings.
    """

    def __init__(self, path: Path, steps: List[Step], parts: Dict[str, Dict[str, Any]], torn: int = 0, labels=None):
        self.path, self.steps, self.parts, self.torn = path, steps, parts, torn
        self._labels = labels or {}

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Recording(self.path, self.steps[i], self.parts, self.torn, self._labels)
        return _Selected(self.steps[i], self._labels) if self._labels else self.steps[i]

    def __iter__(self) -> Iterator[Step]:
        return (self[i] for i in range(len(self)))

    @property
    def ranks(self) -> List[int]:
        return sorted({s.rank for s in self.steps})

    def select(self, *, step=None, rank=None, part=None, **labels) -> "Recording":
        """The steps whose number / rank / part match (a value or a list), their maps filtered by
        ``tower``, ``layer``, ``phase``, ``path`` (as ``AttentionMaps.select``). A step without a
        chosen tower or phase gives no maps; one that no step holds raises, naming those the run holds.
        Reads no array.

        >>> # run.select(step=range(10, 20), rank=0, tower="llm", layer=[0, 31])
        """
        for name in labels:
            if name not in _LABELS:
                raise _check.ArgumentError(f"select() takes step, rank, part, {', '.join(_LABELS)}; got {name}=")
        wanted = {}
        for name, value in (("step", step), ("rank", rank), ("part", part)):
            if value is not None:
                wanted[name] = set(value) if isinstance(value, (list, tuple, set, range)) else {value}
        steps = [s for s in self.steps if all(getattr(s, k) in v for k, v in wanted.items())]
        _check_held(steps, labels)
        return Recording(self.path, steps, self.parts, self.torn, {**self._labels, **labels})

    def __repr__(self):
        return f"Recording({str(self.path)!r}, {len(self)} steps, ranks {self.ranks})"


class _Selected:
    """A Step seen through a Recording.select(tower=..., ...): its maps filtered."""

    def __init__(self, step: Step, labels):
        self._step, self._labels = step, labels

    def __getattr__(self, name):
        return getattr(self._step, name)

    @property
    def maps(self):
        maps = self._step.maps
        if not isinstance(maps, AttentionMaps):
            return maps
        # a step need not hold every tower or phase of the run (they were checked against the whole run)
        held = _held(maps)
        labels = {k: [x for x in _listed(v) if x in held[k]] if k in held else v for k, v in self._labels.items()}
        if any(k in held and not v for k, v in labels.items()):
            return AttentionMaps([], maps.layouts)
        return maps.select(**labels)

    def __repr__(self):
        return repr(self._step)


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else [value]


def _held(maps: AttentionMaps) -> Dict[str, set]:
    return {"tower": set(maps.towers), "phase": {phase for _, phase in maps.steps}}


def _check_held(steps, labels) -> None:
    """A tower or phase that no step of the run holds raises, naming those the run holds (labels only, no array)."""
    asked = [name for name in ("tower", "phase") if labels.get(name) is not None]
    if not asked:
        return
    held: Dict[str, set] = {"tower": set(), "phase": set()}
    for step in steps:
        if step.kind == "maps":
            for name, values in _held(step.maps).items():
                held[name] |= values
    for name in asked:
        for value in _listed(labels[name]):
            _check.choice(name, value, sorted(held[name]))


class _Part:
    __slots__ = ("root", "folder", "name", "rank", "meta")

    def __init__(self, root, folder, name, rank, meta):
        self.root, self.folder, self.name, self.rank, self.meta = root, folder, name, rank, meta


def is_run(path) -> bool:
    """Whether ``path`` is a recorded run (or one part of one) rather than a saved capture."""
    path = Path(path)
    return not os.path.lexists(path / INDEX) and (os.path.lexists(path / RUN) or os.path.lexists(path / PART))


def read_run(path) -> Recording:
    """The run (or the single part) in ``path``; what ``getlocal.load`` returns for a run directory."""
    root = directory(path, "load")
    if os.path.lexists(root / PART) and not os.path.lexists(root / RUN):
        folders = [(root, root.name)]
        base = root.parent
    else:
        if _run_marker(root) is None:
            raise GetLocalError(f"{root / RUN} is not a getlocal run marker; give the directory getlocal.record() wrote")
        base = root
        folders = []
        for name in sorted(os.listdir(root)):
            if _PART_NAME.fullmatch(name):
                folder = root / name
                if os.path.islink(folder) or not folder.is_dir():
                    raise GetLocalError(f"{folder} is a link or not a folder; a run holds plain folders only, so "
                                        "getlocal does not follow it: copy the folder it points to in its place")
                folders.append((folder, name))
    steps: List[Step] = []
    parts: Dict[str, Dict[str, Any]] = {}
    torn = 0
    for folder, name in folders:
        part = _read_part(base, folder, name)
        if part is None:  # a process killed between claiming its folder and describing it: no steps
            continue
        parts[name] = part.meta
        found, bad = _read_log(part)
        steps += found
        torn += bad
    return Recording(root, steps, parts, torn)


def _run_marker(root: Path):
    try:
        with open_plain(root / RUN) as f:
            data = json.loads(f.read(4096).decode("utf-8"))
    except (GetLocalError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if type(data.get("format_version")) is not int or data["format_version"] > FORMAT_VERSION:
        raise GetLocalError(f"{root} is a run in format {data.get('format_version')!r}; this getlocal "
                            f"{_live.version()} reads format {FORMAT_VERSION}: upgrade getlocal to load it")
    return data


def _read_part(root: Path, folder: Path, name: str) -> Optional[_Part]:
    if not os.path.lexists(folder / PART):
        return None
    with open_plain(folder / PART) as f:
        raw = f.read(1 << 20)
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT + "-part":
            raise DamagedRecord("not a part description")
        rank = meta["rank"]
        if type(rank) is not int or not 0 <= rank <= 99999 or not isinstance(meta.get("info", {}), dict):
            raise DamagedRecord(f"rank {rank!r}")
    except (ValueError, UnicodeDecodeError, KeyError, RecursionError) as exc:
        raise corrupt(folder, f"{PART} does not parse ({type(exc).__name__}: {str(exc)[:200]})") from None
    meta = {k: meta.get(k) for k in ("rank", "world_size", "pid", "host", "started", "getlocal_version", "info")}
    return _Part(root, folder, name, rank, meta)


def _read_log(part: _Part):
    """The committed steps of one part; a torn tail (the step being written when the process died) is left out."""
    if not os.path.lexists(part.folder / LOG):
        return [], 0
    with open_plain(part.folder / LOG) as f:
        raw = f.read()
    lines = raw.split(b"\n")
    torn = 1 if lines[-1] else 0  # no newline yet: the write of this line was cut
    steps: List[Step] = []
    bad = []
    last = -1
    for number, line in enumerate(lines[:-1]):
        match = _LINE.fullmatch(line)
        ok = match is not None and hashlib.sha256(match.group(1) + b" " + match.group(3)).hexdigest().encode() \
            == match.group(2)
        if not ok:
            bad.append(number)
            continue
        if bad:
            raise corrupt(part.folder, f"{LOG} line {bad[0] + 1} is damaged but later lines are whole")
        step = int(match.group(1))
        if step <= last:
            raise corrupt(part.folder, f"{LOG} line {number + 1} records step {step} after step {last}")
        last = step
        steps.append(Step(part, step, match.group(3)))
    return steps, torn + len(bad)


def _parse_step(part: _Part, number: int, text: bytes) -> Dict[str, Any]:
    where = part.folder / LOG
    try:
        rec = json.loads(text.decode("utf-8"))
        if not isinstance(rec, dict) or rec.get("step") != number:
            found = rec.get('step') if isinstance(rec, dict) else rec
            raise DamagedRecord(f"step {found!r} in a line of step {number}")
        records = rec.get("arrays", [])
        if type(records) is not list:
            raise DamagedRecordType("arrays is not a list")
        file = None
        if records:
            if rec.get("file") != _step_file(number) or type(rec.get("file_bytes")) is not int:
                raise DamagedRecord(f"file {rec.get('file')!r}, expected {_step_file(number)}")
            file = part.folder / rec["file"]
        refs = [StoredArray(file, rec["file_bytes"], r,
                            f"step {number} {r.get('key', i) if isinstance(r, dict) else i}")
                for i, r in enumerate(records)]

        def ref(number_):
            if type(number_) is not int or not 0 <= number_ < len(refs):
                raise DamagedRecord(f"array {number_!r} of {len(refs)}")
            return refs[number_]

        def array(value, where_):
            return ref(value.get("array") if isinstance(value, dict) else None).read()

        images = _LazyImages({str(k): ref(v) for k, v in dict_field(rec, "images").items()})
        kind = rec.get("kind")
        out: Dict[str, Any] = {"kind": kind, "images": images, "calls": None, "owners": None}
        info = dict_field(rec, "info")
        out["info"] = lambda: {k: decode(v, array, f"info[{k!r}]", 2, 0) for k, v in info.items()}
        out["explanation"], out["explanation_error"] = _explanation_reader(dict_field(rec, "explanation"), ref)
        if kind == "maps":
            table = [layout(t) for t in rec["token_layouts"]]
            maps = []
            for i, meta in enumerate(rec["maps"]):
                labels = map_labels(meta)
                queries, keys = table[meta["queries"]], table[meta["keys"]]
                r = ref(meta["array"])
                if len(r.shape) < 2 or tuple(r.shape[-2:]) != (len(queries), len(keys)):
                    raise DamagedRecord(f"maps[{i}] has shape {r.shape} for {len(queries)} queries and "
                                        f"{len(keys)} keys")
                maps.append(_StoredMap(r, queries=queries, keys=keys, camera=optional(meta.get("camera"), str),
                                       **labels, **rows_and_padding(meta, r.shape)))
            layouts = {str(k): layout(v) for k, v in dict_field(rec, "layouts").items()}
            out["maps"] = lambda: AttentionMaps(list(maps), dict(layouts))
        elif kind == "cache":
            cache = dict_field(rec, "cache")
            for key, entries in cache.items():
                if type(entries) is not list or not all(isinstance(e, dict) for e in entries):
                    raise DamagedRecord(f"cache[{key!r}] is not a list of entries")
            out["calls"] = {k: [optional(e.get("call"), int) for e in v] for k, v in cache.items()}
            out["owners"] = {k: [optional(e.get("owner"), str) for e in v] for k, v in cache.items()}
            out["maps"] = lambda: {k: [decode(e["value"], array, f"cache[{k!r}][{i}]", 2, 0) for i, e in enumerate(v)]
                                   for k, v in cache.items()}
        else:
            raise DamagedRecord(f"kind {kind!r}")
        return out
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
        raise corrupt(where.parent, f"{LOG}: step {number} does not parse ({type(exc).__name__}: {str(exc)[:200]})") \
            from None


def _explanation_reader(stored: Dict[str, Any], ref):
    """``(function reading the step's explanation, its error or None)``, the labels checked now, the arrays later."""
    error = optional(stored.get("error"), str)
    if error is not None or not stored:
        return (lambda: None), error
    parts = stored["parts"]
    if type(parts) is not list or not parts or type(stored["named"]) is not bool:
        raise DamagedRecordType("explanation is not a list of parts")
    checked = []
    for part in parts:
        if not isinstance(part, dict):
            raise DamagedRecordType("an explanation part is not a dict")
        labels = {k: optional(part[k], t) for k, t in (("name", str), ("method", str), ("tower", str),
                                                          ("step", int), ("phase", str))}
        lists = {k: part[k] for k in ("layers", "rows", "excluded")}
        if not all(type(v) is list and all(type(x) is int for x in v) for v in lists.values()):
            raise DamagedRecordType("an explanation's layers, rows or excluded are not lists of int")
        keys = None if part["keys"] is None else layout(part["keys"])
        refs = {k: ref(part[k]) for k in ("values", "last_layer", "reach")}
        batch_rows = tuple(refs["values"].shape[:2])
        if len(refs["values"].shape) != 3 or refs["last_layer"].shape != refs["values"].shape \
                or refs["reach"].shape != batch_rows or batch_rows[1] != len(lists["rows"]) \
                or (keys is not None and len(keys) != refs["values"].shape[2]):
            raise DamagedRecord(f"explanation {labels['name']!r} has arrays of shapes "
                                f"{[r.shape for r in refs.values()]} for {len(lists['rows'])} rows")
        checked.append((labels, lists, keys, refs))

    def read():
        out = {}
        for labels, lists, keys, refs in checked:
            out[labels["name"]] = Explanation(
                values=refs["values"].read(), rows=np.asarray(lists["rows"], dtype=np.int64), keys=keys,
                excluded=tuple(lists["excluded"]), reach=refs["reach"].read(), last_layer=refs["last_layer"].read(),
                method=labels["method"] or "", layers=list(lists["layers"]), tower=labels["tower"],
                step=labels["step"], phase=labels["phase"])
        return out if stored["named"] else out[None]

    return read, None


class _StoredMap(AttentionMap):
    """An AttentionMap whose array is read from its step file when ``.array`` is first used.

    The array is kept only while someone holds it (a weak reference), so walking
    a long recording does not pull it all into memory.
    """

    def __init__(self, ref: StoredArray, **labels):
        self._ref, self._given, self._held = ref, None, None
        super().__init__(None, **labels)

    @property
    def array(self):
        if self._given is not None:
            return self._given
        arr = self._held() if self._held is not None else None
        if arr is None:
            arr = self._ref.read()
            self._held = weakref.ref(arr)
        return arr

    @array.setter
    def array(self, value):
        if value is not None:
            self._given = value

    @property
    def shape(self):
        return tuple(self._given.shape) if self._given is not None else self._ref.shape


class _LazyImages(Mapping):
    """``{camera: picture}``, each read from disk when looked up."""

    def __init__(self, refs: Dict[str, StoredArray]):
        self._refs = refs

    def __getitem__(self, name):
        return self._refs[name].read()

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: <{'x'.join(map(str, r.shape))} {r.dtype}>" for k, r in self._refs.items()) + "}"


__all__ = ["record", "Recorder", "Recording", "Step", "read_run", "is_run"]
