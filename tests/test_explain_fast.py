"""Reading a whole fast-mode capture (a rollout, a save): each layer's map rebuilt, used and let go.

In ``mode='fast'`` a long map is held as its softmax inputs (query, key, mask)
and rebuilt when read. A rollout reads every map once, and so does saving the
capture, so both must leave the capture as they found it: holding the inputs,
not every layer's map.
"""
import gc
import types

import numpy as np
import pytest
import torch

import getlocal
from getlocal import explain

pytest.importorskip("timm")
pytest.importorskip("transformers")

from getlocal.adapters import openvla, tiny, vit  # noqa: E402


def _held_bytes(root) -> int:
    """The bytes of the arrays and tensors reachable from ``root`` (each storage once), code not followed.

    Functions, methods and modules (a rebuild's arithmetic, the model it came
    from) are not data the capture holds, so the walk stops there.
    """
    found, seen, pending = {}, set(), [root]
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            found[storage.data_ptr()] = max(found.get(storage.data_ptr(), 0), storage.nbytes())
        elif isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base.base is not None:  # a torch tensor's memory seen as numpy: counted as the tensor
                pending.append(base.base)
            else:
                found[base.ctypes.data] = max(found.get(base.ctypes.data, 0), base.nbytes)
        elif not (callable(obj) or isinstance(obj, types.ModuleType)):
            pending.extend(gc.get_referents(obj))
    return sum(found.values())


def _maps_bytes(maps) -> int:
    """What every map of ``maps`` takes as float32 (the dtype the rebuild gives here)."""
    return sum(int(np.prod(m.shape)) * 4 for m in maps)


def _vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=320).eval()  # 12 blocks, 401 tokens
    return model, torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))


def _openvla():
    # sdpa (an eager kernel computes its map anyway, and fast mode keeps it); 64 patches + 40 text tokens: the
    # prefill is held as query and key, rebuilt when read
    vla = tiny.openvla(image_size=112, llm_layers=8, attn_implementation=None)
    pixels, ids = tiny.openvla_inputs(vla, text_tokens=40)
    return vla, pixels, ids


def test_rollout_of_a_fast_vit_capture_equals_the_eager_one_and_leaves_the_capture_holding_its_inputs(adapters_off):
    model, x = _vit()
    with vit.capture(model) as eager, torch.no_grad():
        model(x)
    with vit.capture(model, mode="fast") as fast, torch.no_grad():
        model(x)
    before = _held_bytes(fast)
    got = explain.rollout(fast, rows="cls")
    after = _held_bytes(fast)
    want = explain.rollout(eager, rows="cls")
    maps = _maps_bytes(fast)
    print(f"fast capture: {before / 2**20:.1f} MiB before the rollout, {after / 2**20:.1f} MiB after; its 12 maps "
          f"as float32: {maps / 2**20:.1f} MiB")
    assert np.abs(got.values - want.values).max() < 1e-6
    assert np.abs(got.last_layer - want.last_layer).max() < 1e-6
    assert after == before  # still query and key per layer: 12 x 2 x 3 x 401 x 64 x 4 bytes = 7.0 MiB
    assert before < maps / 3  # the maps would be 12 x 3 x 401 x 401 x 4 bytes = 22.1 MiB
    assert np.array_equal(explain.rollout(fast, rows="cls").values, got.values)  # read again, rebuilt again
    first = fast[0]
    once = first.compute()
    assert _held_bytes(fast) == before and once.shape == first.shape
    assert np.array_equal(first.array, once) and first.array is first.array  # .array computes once and keeps it
    assert _held_bytes(fast) == before - 2 * 3 * 401 * 64 * 4 + once.nbytes  # that map in place of its inputs


def test_rollout_of_a_fast_openvla_generation_equals_the_eager_one_and_keeps_no_map(adapters_off):
    vla, pixels, ids = _openvla()
    captured = {}
    for mode in ("eager", "fast"):
        with openvla.capture(vla, mode=mode) as captured[mode]:
            tiny.generate(vla, pixels, ids, max_new_tokens=3)
    llm = captured["fast"].select(tower="llm")
    prefill = llm.select(phase="prefill")
    before = _held_bytes(llm)
    got = explain.rollout(llm, rows="generated", exclude="bos")
    after = _held_bytes(llm)
    want = explain.rollout(captured["eager"].select(tower="llm"), rows="generated", exclude="bos")
    print(f"fast llm capture: {before} bytes before the rollout, {after} after; its prefill maps as float32: "
          f"{_maps_bytes(prefill)} bytes")
    assert np.abs(got.values - want.values).max() < 1e-6
    assert after == before
    assert before < _maps_bytes(prefill) / 2


def test_a_fast_mode_recording_step_keeps_its_capture_at_its_inputs_size_through_the_explanation(tmp_path,
                                                                                                adapters_off):
    model, x = _vit()
    held = []

    def why(maps):
        before = _held_bytes(maps)
        r = explain.rollout(maps, rows="cls", exclude="cls")
        held.append((before, _held_bytes(maps), _maps_bytes(maps)))
        return r

    vit.activate(model, mode="fast")
    try:
        with getlocal.record(tmp_path / "run", collect=lambda: vit.collect(model), explain=why, maps=False,
                             durable=False) as rec, torch.no_grad():
            for t in range(2):
                model(x + t)
                rec.step()
    finally:
        vit.deactivate()
    print("per step: (capture bytes before the explanation, after it, the maps as float32)", held)
    assert len(held) == 2
    for before, after, maps in held:
        assert after == before and before < maps / 3
    run = getlocal.load(tmp_path / "run")
    assert [s.explanation.grid().shape for s in run] == [(20, 20), (20, 20)]


def test_saving_a_fast_vit_capture_writes_its_maps_and_leaves_it_holding_its_inputs(tmp_path, adapters_off):
    model, x = _vit()
    with vit.capture(model, mode="fast") as fast, torch.no_grad():
        model(x)
    before = _held_bytes(fast)
    path = getlocal.save(tmp_path / "capture", fast)
    assert _held_bytes(fast) == before < _maps_bytes(fast) / 3
    again = getlocal.load(path)
    assert np.array_equal(again[5].array, fast[5].compute())
