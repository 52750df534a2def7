"""Write the on-disk fixtures of tests/test_saved_formats.py: one of each format getlocal has written.

Made with getlocal at commit 5606dcc (before the storage modules were restructured, issue 17), by
``python tests/data/make_fixtures.py`` from the repository root. Do not re-run it on later code: the
point of these files is that they were written by the old code, and every later getlocal must load
them as they are. To add the fixtures of a new format version, add a new folder beside these.

- ``capture-v2-maps/``: ``saved.save`` of labelled ``AttentionMaps`` (padding=, rows=, a camera),
  with an image and info.
- ``capture-v2-cache/``: ``saved.save`` of a cache dict with nested values (lists, tuples, dicts with
  tuple keys, numpy scalars, None, NaN, a 0-d array, a bfloat16 torch tensor) and its calls.
- ``capture-v1-cache/``: format 1 (getlocal 0.1.0: ``arrays/``, a 0-d array stored as [1], str-keyed
  dicts), written by hand from that layout, with one bfloat16 array as another tool writes it.
- ``run-v1/``: ``getlocal.record`` of 3 steps: labelled maps with an image and info, a plain cache
  dict, and ``get_local.cache`` with its calls.

The files name the machine that wrote them nowhere: part.json's pid, host and start time are set to
fixed values after recording (they are free-form provenance, read back as they are).
"""
import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import getlocal  # noqa: E402
from getlocal import get_local, saved  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402

MADE_WITH = "5606dcc"


def layouts():
    queries = TokenLayout([Segment("text", 0, 2), Segment("action", 2, 3)])
    keys = TokenLayout([Segment("padding", 0, 1), Segment("image", 1, 5, camera="wrist", grid=(2, 2)),
                        Segment("text", 5, 7)])
    return queries, keys


def maps():
    queries, keys = layouts()
    first = np.arange(2 * 3 * 7, dtype=np.float32).reshape(1, 2, 3, 7) / 100
    padding = np.zeros((2, 7), bool)
    padding[0, 0] = padding[1, [0, 6]] = True
    second = (np.arange(2 * 1 * 3 * 7, dtype=np.float16).reshape(2, 1, 3, 7) / 50).astype(np.float16)
    return AttentionMaps([
        AttentionMap(first, "llm", 0, "model.layers.0.self_attn", 0, "prefill", 3, queries, keys, camera="wrist"),
        AttentionMap(second, "llm", 1, "model.layers.1.self_attn", 1, "decode", 7, queries, keys,
                     padding=padding, rows=np.array([4, 5, 6])),
    ], {"llm": keys})


def image():
    return (np.arange(4 * 4 * 3) * 5 % 256).astype(np.uint8).reshape(4, 4, 3)


def cache():
    return {
        "Attention.forward": [np.eye(3, dtype=np.float32), torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16)],
        "nested": [[1, 2.5, "x", None, True, float("nan"), float("-inf")],
                   (np.float32(0.5), np.int64(-3), np.bool_(True)),
                   {"a": [1, {"b": None}], (1, "k"): np.array(2.0), 3: np.arange(4, dtype=np.int16)}],
    }


def calls():
    return {"Attention.forward": [0, 5], "nested": [1, 2, 9]}


def fixed_parts(run: Path):
    for part in run.glob("rank-*/part.json"):
        meta = json.loads(part.read_text())
        meta.update(pid=1, host="fixture", started="2026-01-01T00:00:00+0000")
        part.write_text(json.dumps(meta, indent=1))


def format_1(path: Path):
    """A capture in format 1, from its documented layout (as tests/test_saved_untrusted.py builds one)."""
    (path / "arrays").mkdir(parents=True)
    blobs = []
    for dtype, shape, data in (("F64", [1], struct.pack("<d", 1.5)),  # a 0-d array: format 1 stored it as [1]
                               ("BF16", [2, 2], struct.pack("<4H", 0x3F80, 0x4000, 0xBF80, 0x3E00))):
        header = json.dumps({"data": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}},
                            separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        blobs.append(struct.pack("<Q", len(header)) + header + data)
    records = []
    for i, (blob, shape, dtype) in enumerate(zip(blobs, ([], [2, 2]), ("float64", "bfloat16"))):
        name = f"arrays/{i:05d}.safetensors"
        (path / name).write_bytes(blob)
        records.append({"file": name, "key": f"cache['f'][0]", "shape": shape, "dtype": dtype,
                        "source": f"numpy.{dtype}", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
    index = {"format": "getlocal.capture", "format_version": 1, "getlocal_version": "0.1.0", "kind": "cache",
             "cache": {"f": [{"value": {"dict": {"a": {"array": 0}, "b": {"json": 2},
                                                 "c": {"list": [{"array": 1}, {"tuple": [{"json": "t"}]}]}}},
                              "call": 4, "owner": "Attention"}]},
             "images": {}, "info": {"model": "by hand"}, "arrays": records}
    (path / "capture.json").write_text(json.dumps(index, indent=1))


def main():
    for name in ("capture-v2-maps", "capture-v2-cache", "capture-v1-cache", "run-v1"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    saved.save(HERE / "capture-v2-maps", maps(), images={"wrist": image()}, info={"model": "fixture", "n": [1, 2.5]})
    saved.save(HERE / "capture-v2-cache", cache(), calls=calls(), info={})
    format_1(HERE / "capture-v1-cache")

    @get_local("attn")
    def attend(x):
        attn = np.outer(x, x)
        return attn.sum()

    with get_local.capture(), getlocal.record(HERE / "run-v1", durable=False, info={"task": "fixture"}) as rec:
        rec.step(maps(), images={"wrist": image()}, info={"action": np.array([0.5, -1.0]), "reward": 1.0})
        rec.step({"plain": [np.ones(2, np.int32), {"k": (1, None)}]}, info={"text": "two"})
        attend(np.arange(3.0))
        attend(np.arange(3.0) + 1)
        rec.step()
    fixed_parts(HERE / "run-v1")
    total = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file())
    print(f"fixtures written with {MADE_WITH}: {total} bytes")


if __name__ == "__main__":
    main()
