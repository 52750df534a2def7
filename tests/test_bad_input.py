"""Wrong arguments to the public API of maps, patterns, plot and the adapters end in a clear error.

Every public function and method is found by enumeration (a new one fails
``test_every_public_function_has_a_baseline`` until it gets a row in
``_baselines``), called once with valid arguments, then once per wrong value
of each parameter. Each call must return, or raise GetLocalError / TypeError /
ValueError whose message names the parameter: never an IndexError,
ZeroDivisionError, AttributeError or numpy error from deep inside.
"""
import inspect
import os
import math
import random

import numpy as np

import getlocal
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("timm")
pytest.importorskip("transformers")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from getlocal import GetLocalError, maps, patterns, plot  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny, vit  # noqa: E402

MODULES = (maps, patterns, plot, vit, openvla, paligemma)
ADAPTERS = (vit, openvla, paligemma)


class _Hostile:
    """An argument that breaks on every probe but type()."""

    def __getattr__(self, name):
        raise RuntimeError(f"probed .{name}")

    def __len__(self):
        raise RuntimeError("probed len()")


def _wrong_values(seed: int):
    rng = np.random.default_rng(seed)
    return [
        None, "nonsense", "", float("nan"), float("inf"), -float("inf"), -1, 0, 10**12, -(10**12), 2.5, True,
        np.zeros(0), np.zeros((0, 3)), rng.random(5), rng.random((2, 3, 4, 5, 6)), np.array([[np.nan, 1.0]]),
        np.array(["a", "b"]), [], [None], ["nonsense"], (1, 2, 3), {"nonsense": 1}, slice(5, 1), object(), _Hostile(),
    ]


class _Ready:
    """A ``maps.Lazy`` whose map is known (the adapters' mode='fast' subclasses it)."""

    def __new__(cls):
        from getlocal.maps import Lazy

        class Ready(Lazy):
            shape = (1, 1, 1, 1)

            def materialize(self):
                return np.ones(self.shape)

        return Ready()


def _public(module):
    """``{qualified name: function}`` of a module's public functions and of its public classes' methods."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    found = {}
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            found[f"{module.__name__}.{name}"] = obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr, value in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(value):
                    found[f"{module.__name__}.{name}.{attr}"] = value
    return found


def _picture():
    return np.random.default_rng(0).random((28, 28, 3))


def _baselines(tmp):
    """``{qualified name: (callable, valid keyword arguments)}``; methods are bound to a valid object."""
    rng = np.random.default_rng(0)
    layer = rng.random((2, 16, 16)).astype(np.float32)
    layer /= layer.sum(-1, keepdims=True)
    prompt = maps.TokenLayout([maps.Segment("bos", 0, 1), maps.Segment("image", 1, 5, grid=(2, 2)),
                               maps.Segment("text", 5, 7)])
    m = maps.AttentionMap(np.full((1, 2, 7, 7), 1 / 7), "llm", 0, "layers.0", 0, "prefill", 0, prompt, prompt)
    labelled = maps.AttentionMaps([m], {"llm": prompt})
    table = patterns.summarize([layer, layer], grid=(4, 4), patch_size=14)
    shares = labelled.kind_shares()
    vla = np.full((1, 2, 9, 9), 1 / 9)
    fig = plt.figure()
    P, M, PL = "getlocal.patterns", "getlocal.maps", "getlocal.plot"
    rows = {
        f"{M}.Lazy.materialize": (_Ready().materialize, {}),
        f"{M}.Lazy.parts": (_Ready().parts, {}),
        f"{M}.TokenLayout.take": (prompt.take, {"positions": [0, 2, 3]}),
        f"{M}.TokenLayout.find": (prompt.find, {"kind": "image", "camera": None}),
        f"{M}.TokenLayout.indices": (prompt.indices, {"kind": "text"}),
        f"{M}.TokenLayout.image": (prompt.image, {}),
        f"{M}.TokenLayout.grid": (prompt.grid, {}),
        f"{M}.TokenLayout.to_grid": (prompt.to_grid, {"values": np.ones(4)}),
        f"{M}.TokenLayout.window": (prompt.window, {"start": 1, "stop": 5}),
        f"{M}.TokenLayout.to_dict": (prompt.to_dict, {}),
        f"{M}.TokenLayout.from_dict": (maps.TokenLayout.from_dict, {"data": prompt.to_dict()}),
        f"{M}.Segment.to_dict": (prompt.segments[0].to_dict, {}),
        f"{M}.AttentionMap.between": (m.between, {"query": "text", "key": "image"}),
        f"{M}.AttentionMap.meta": (m.meta, {}),
        f"{M}.AttentionMap.compute": (m.compute, {}),
        f"{M}.AttentionMaps.select": (labelled.select, {"tower": "llm", "phase": "prefill"}),
        f"{M}.AttentionMaps.meta": (labelled.meta, {}),
        f"{P}.summarize": (patterns.summarize, {"layers": [layer], "grid": (4, 4), "patch_size": 14}),
        f"{P}.PatternTable.to_records": (table.to_records, {"level": "layer"}),
        f"{P}.offset_profile": (patterns.offset_profile, {"attn": layer, "max_offset": 2}),
        f"{P}.neighbour_map": (patterns.neighbour_map, {"attn": layer, "grid": (4, 4), "radius": 1}),
        f"{P}.dominant_offsets": (patterns.dominant_offsets, {"attn": layer, "grid": (4, 4), "radius": 1, "top": 2}),
        f"{P}.top_key_mass": (patterns.top_key_mass, {"attn": layer, "fraction": 0.1}),
        f"{P}.sink_keys": (patterns.sink_keys, {"attn": layer, "threshold": 0.2}),
        f"{P}.mean_attention_distance": (patterns.mean_attention_distance,
                                         {"attn": layer, "grid": (4, 4), "patch_size": 14}),
        f"{P}.head_scores": (patterns.head_scores, {"attn": layer, "image_tokens": slice(0, 16), "patch_size": 14}),
        f"{PL}.attention_map": (plot.attention_map, {"attn": layer, "head": 1}),
        f"{PL}.layer_heads": (plot.layer_heads, {"attn": layer, "ncols": 2}),
        f"{PL}.patch_grid": (plot.patch_grid, {"image": _picture(), "grid": (2, 2), "cells": [(0, 1)]}),
        f"{PL}.grid_to_grid": (plot.grid_to_grid, {"attn": vla, "image": _picture(), "query": (0, 1),
                                                   "image_tokens": slice(1, 5), "cls_token": 0, "head": 0}),
        f"{PL}.query_heatmap": (plot.query_heatmap, {"attn": vla, "image_tokens": slice(1, 5), "queries": [5, 6]}),
        f"{PL}.image_attention": (plot.image_attention, {"image": _picture(), "attn": vla,
                                                         "image_tokens": slice(1, 5), "queries": [5, 6]}),
        f"{PL}.camera_attention": (plot.camera_attention, {"images": [_picture(), _picture()], "attn": vla,
                                                           "image_tokens": [slice(1, 5), slice(5, 9)],
                                                           "queries": [0], "titles": ["a", "b"]}),
        f"{M}.AttentionMap.kind_shares": (m.kind_shares, {}),
        f"{M}.AttentionMaps.kind_shares": (labelled.kind_shares, {}),
        f"{P}.KindShares.share": (shares.share, {"query": "text", "key": "image"}),
        f"{P}.KindShares.to_records": (shares.to_records, {}),
        f"{P}.block_score": (patterns.block_score, {"attn": layer, "segments": [0, 8], "causal": True}),
        f"{P}.diagonal_offset": (patterns.diagonal_offset, {"attn": layer}),
        f"{P}.kind_shares": (patterns.kind_shares, {"attn": m.array, "queries": prompt, "keys": prompt,
                                                    "padding": np.zeros(7, bool)}),
        f"{PL}.image_share": (plot.image_share, {"shares": shares}),
        f"{PL}.label_map": (plot.label_map, {"table": table}),
        f"{PL}.pattern_scores": (plot.pattern_scores, {"table": table}),
        f"{PL}.attention_distance": (plot.attention_distance, {"table": table, "pixels": True}),
        f"{PL}.figure_path": (plot.figure_path, {"root": str(tmp), "name": "n", "phase": "prefill", "layer": 0,
                                                 "mode": "mean"}),
        f"{PL}.save_figure": (plot.save_figure, {"fig": fig, "root": str(tmp), "name": "n", "phase": "prefill",
                                                 "layer": 0, "mode": "mean", "ext": "png"}),
    }
    rec_path = os.path.join(str(tmp), "episode")
    if not os.path.exists(rec_path):
        with getlocal.record(rec_path, durable=False) as rec:
            keys = maps.TokenLayout(list(prompt.segments) + [maps.Segment("action", 7, 9)])
            rec.step(maps.AttentionMaps([maps.AttentionMap(np.full((1, 2, 2, 9), 1 / 9), "expert", 0, "l.0", 0,
                                                           "denoise", 0, keys.window(7, 9), keys)]),
                     images={"image": _picture()})
    run = getlocal.load(rec_path)
    rows[f"{PL}.episode_gif"] = (plot.episode_gif, {"run": run, "path": os.path.join(str(tmp), "e.gif"),
                                                    "layers": [0], "pad_to_square": True, "height": 32})
    rows[f"{PL}.episode_grid"] = (plot.episode_grid, {"run": run, "layers": [0], "pad_to_square": False,
                                                      "max_steps": 2, "alpha": 0.5, "panel_size": 1.0})
    rows[f"{PL}.episode_image_share"] = (plot.episode_image_share, {"run": run, "layers": [0]})
    for name in ("self_mass", "received_attention", "query_key_nmi", "attention_entropy", "classify_heads",
                 "neighbour_mass"):
        rows[f"{P}.{name}"] = (getattr(patterns, name), {"attn": layer})
    for adapter in ADAPTERS:
        a = adapter.__name__
        rows[f"{a}.activate"] = (adapter.activate, {"model": None, "convert": "numpy", "max_calls": 10})
        rows[f"{a}.deactivate"] = (adapter.deactivate, {})
        rows[f"{a}.is_active"] = (adapter.is_active, {})
        rows[f"{a}.collect"] = (adapter.collect, {})
        rows[f"{a}.capture"] = (adapter.capture, {})  # arguments are checked when it is called, not entered
    rows["getlocal.adapters.vit.patch_size"] = (vit.patch_size, {"model": _vit_model()})
    return rows


def _vit_model():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0)


@pytest.fixture
def activated():
    """Each adapter on, so that its collect() is asked about its arguments rather than about being off."""
    for adapter in ADAPTERS:
        adapter.activate()
    yield
    for adapter in ADAPTERS:
        adapter.deactivate()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_every_public_function_has_a_baseline(tmp_path):
    missing = sorted(set().union(*map(_public, MODULES)) - set(_baselines(tmp_path)))
    assert not missing, f"add valid arguments for {missing} to _baselines"


def _allowed(exc, parameter, wrong=None, others=()) -> bool:
    """A clear error: it names the parameter, quotes the user's wrong word (a colour or keyword matplotlib
    rejects), or, for a map that does not fit the other arguments, names the argument it disagrees with."""
    if not isinstance(exc, (GetLocalError, TypeError, ValueError)):
        return False
    message = str(exc)
    quoted = [wrong] if isinstance(wrong, str) and wrong else list(wrong) if isinstance(wrong, dict) else []
    mismatch = list(others) if isinstance(wrong, np.ndarray) else []
    return any(name in message for name in [parameter] + mismatch) or any(repr(w) in message for w in quoted)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_wrong_arguments_end_in_an_error_that_names_them(module, activated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a wrong root= of save_figure writes relative to here
    rows = _baselines(tmp_path)
    escaped = []
    for qualified in sorted(_public(module)):
        func, valid = rows[qualified]
        if module in ADAPTERS and qualified.endswith((".activate", ".deactivate")):
            continue  # covered by test_wrong_activate_arguments_leave_the_adapter_off
        func(**valid)  # the baseline itself is valid
        parameters = [p for p in inspect.signature(func).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        seed = sum(map(ord, qualified))
        for p in parameters:
            for wrong in _wrong_values(seed):
                if p.name.endswith("_kws") and isinstance(wrong, dict):
                    continue  # forwarded to matplotlib, whose AttributeError names the unknown keyword
                args = {**valid, p.name: wrong}
                try:
                    func(**args)
                except Exception as exc:  # noqa: BLE001 - what escapes is the finding
                    if not _allowed(exc, p.name, wrong, [q.name for q in parameters]):
                        escaped.append(f"{qualified}({p.name}={_show(wrong)}): {type(exc).__name__}: {exc}"[:300])
                plt.close("all")
    assert not escaped, f"{len(escaped)} wrong arguments escaped:\n" + "\n".join(escaped)


def _show(value):
    text = repr(value) if not isinstance(value, np.ndarray) else f"array{value.shape}"
    return text[:40]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_wrong_activate_arguments_leave_the_adapter_off(adapter):
    from getlocal import get_local

    escaped = []
    for name in ("model", "convert", "max_calls", "max_bytes"):
        for wrong in _wrong_values(len(name)):
            if name == "model" and wrong is None or name in ("max_calls", "max_bytes") and wrong is None:
                continue
            try:
                adapter.activate(**{name: wrong})
            except Exception as exc:  # noqa: BLE001
                if not _allowed(exc, name):
                    escaped.append(f"activate({name}={_show(wrong)}): {type(exc).__name__}: {exc}"[:300])
                assert not adapter.is_active(), f"activate({name}={_show(wrong)}) failed but left the adapter on"
            adapter.deactivate()
    assert not escaped, "\n".join(escaped)
    assert not get_local.is_active()
