"""Selection at capture time, in both modes: what is kept equals the same part of the whole map, and only it.

``towers``, ``layers``, ``queries`` (row indices), ``heads`` and ``dtype`` are
applied as each call returns; the tests compare against a capture of every
map from the same model and inputs, and count the bytes the cache holds.
"""
import numpy as np
import pytest
from required import import_or_skip

torch = import_or_skip("openvla", "torch")
import_or_skip("openvla", "timm")
transformers = import_or_skip("openvla", "transformers")

from getlocal import GetLocalError, get_local, load, save  # noqa: E402
from getlocal.adapters import openvla, tiny, vit  # noqa: E402

pytestmark = pytest.mark.usefixtures("adapters_off")


def _fast_supported() -> bool:
    try:
        with openvla.capture(tiny.openvla(attn_implementation=None).language_model, mode="fast"):
            pass
    except GetLocalError:
        return False
    return True


MODES = ["eager", pytest.param("fast", marks=pytest.mark.skipif(
    not _fast_supported(), reason=f"mode='fast' refuses this model under transformers {transformers.__version__}"))]


def _model(mode):
    return tiny.openvla(attn_implementation="eager" if mode == "eager" else None)


def _run(model, pixels, ids):
    tiny.generate(model, pixels, ids, max_new_tokens=3)


def _held(keys):
    return sum(int(v.nbytes) for key in keys for v in get_local.cache.get(key, ()))


@pytest.mark.parametrize("mode", MODES)
def test_selected_towers_layers_rows_and_heads_equal_that_part_of_the_whole_maps(mode):
    model = _model(mode)
    pixels, ids = tiny.openvla_inputs(model, batch=2)
    with openvla.capture(model, mode=mode) as whole:
        _run(model, pixels, ids)
    with openvla.capture(model, mode=mode, towers=["dinov2", "llm"], layers=[0, -1], queries=[0, -1],
                         heads=[1]) as part:
        _run(model, pixels, ids)
    last = {t: max(m.layer for m in whole.select(tower=t)) for t in whole.towers}
    expected = [m for m in whole if m.tower in ("dinov2", "llm") and m.layer in (0, last[m.tower])]
    assert [(m.tower, m.layer, m.step, m.phase) for m in part] == [(m.tower, m.layer, m.step, m.phase)
                                                                   for m in expected]
    for got, full in zip(part, expected):
        q = full.shape[-2]
        rows = [0, q - 1] if q > 1 else [0]
        np.testing.assert_array_equal(got.array, np.asarray(full.array)[:, [1]][:, :, rows])
        start = full.shape[-1] - q  # where the whole map's queries sit among its keys
        assert got.rows.tolist() == [start + r for r in rows]
        assert got.queries == full.queries.take(rows) and got.keys == full.keys
    cls = part.select(tower="dinov2")[0]
    assert repr(cls.queries).startswith("TokenLayout(cls 0:1, image")  # the class token's row, then the last patch


@pytest.mark.parametrize("mode", MODES)
def test_generated_rows_mean_over_heads_every_layer_hold_kilobytes_as_the_shapes_imply(mode):
    model = _model(mode)
    pixels, ids = tiny.openvla_inputs(model)
    with openvla.capture(model, mode=mode) as whole:
        _run(model, pixels, ids)
    with openvla.capture(model, mode=mode, queries="generated", heads="mean") as part:
        _run(model, pixels, ids)
        held = _held([k for k in get_local.cache if "Attention" in k or "attention" in k])
    decode = whole.select(phase="decode")
    assert [(m.layer, m.step) for m in part] == [(m.layer, m.step) for m in decode] and len(decode) > 0
    for got, full in zip(part, decode):
        np.testing.assert_allclose(got.array, np.asarray(full.array).mean(1, keepdims=True), atol=1e-7)
    implied = sum(m.shape[0] * 1 * 1 * m.shape[-1] * 4 for m in decode)  # batch x 1 head x 1 row x keys, float32
    padding_masks = held - implied  # a fast prefill left out keeps only its [batch, keys] padding, if any
    assert 0 <= padding_masks <= 2 * ids.shape[1] * 8 * len(whole.select(phase="prefill"))
    full_bytes = sum(np.asarray(m.array).nbytes for m in whole)
    assert held < 0.05 * full_bytes, (held, full_bytes)  # at OpenVLA's sizes under 2%: benchmarks/bench_fast.py


@pytest.mark.parametrize("dtype", ["float16", torch.float16])
def test_dtype_keeps_the_maps_in_that_precision(dtype):
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    with openvla.capture(model) as whole:
        _run(model, pixels, ids)
    with openvla.capture(model, dtype=dtype) as half:
        _run(model, pixels, ids)
    assert {np.asarray(m.array).dtype for m in half} == {np.dtype("float16")}
    for got, full in zip(half, whole):
        np.testing.assert_array_equal(got.array, np.asarray(full.array).astype(np.float16))
    with openvla.capture(model, convert="cpu", dtype="bfloat16", towers="llm") as bf16:
        _run(model, pixels, ids)
    assert {m.array.dtype for m in bf16} == {torch.bfloat16} and bf16.towers == ["llm"]


def test_a_vit_class_token_row_is_kept_alone_labelled_and_saved(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with vit.capture(model) as whole, torch.no_grad():
        model(x)
    with vit.capture(model, queries=0, layers=-1) as cls, torch.no_grad():
        model(x)
    assert len(cls) == 1 and cls[0].layer == 1 and cls[0].shape == (2, 3, 1, 5)
    np.testing.assert_array_equal(cls[0].array, whole[1].array[:, :, :1])
    assert repr(cls[0].queries) == "TokenLayout(cls 0:1)" and cls[0].rows.tolist() == [0]
    back = load(save(tmp_path / "cls", cls))
    assert back[0].rows.tolist() == [0] and back[0].queries == cls[0].queries
    np.testing.assert_array_equal(back[0].array, cls[0].array)


def test_padding_survives_a_save_and_load(tmp_path):
    llm = tiny.openvla().language_model
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with openvla.capture(llm) as maps, torch.no_grad():
        llm(input_ids=ids, attention_mask=mask)
    assert maps[0].padding is not None
    back = load(save(tmp_path / "padded", maps))
    np.testing.assert_array_equal(back[0].padding, maps[0].padding)


@pytest.mark.parametrize("choice, match", [
    ({"towers": "vision"}, r"towers='vision' is not one of 'dinov2', 'siglip', 'llm'"),
    ({"towers": []}, "towers must be one of the tower names"),
    ({"layers": "last"}, "layers must be an int"),
    ({"queries": []}, "queries=\\[\\] keeps no row"),
    ({"queries": "text"}, "queries='text' is not one of 'generated', 'action'"),
    ({"queries": slice(None, None, -1)}, "step must be positive"),
    ({"heads": []}, "heads=\\[\\] keeps no head"),
    ({"heads": -1}, "heads must be >= 0"),
    ({"dtype": "int8"}, "dtype='int8' is not one of"),
    ({"dtype": "bfloat16"}, "numpy has no bfloat16"),
])
def test_a_bad_selection_names_the_keyword_and_changes_nothing(choice, match):
    with pytest.raises((TypeError, ValueError), match=match):
        openvla.activate(**choice)
    with pytest.raises((TypeError, ValueError), match=match):
        openvla.capture(**choice)
    assert not openvla.is_active() and not get_local.is_active()


def test_an_active_adapter_refuses_another_selection_naming_both():
    openvla.activate(heads="mean")
    with pytest.raises(GetLocalError, match=r"active with mode='eager', heads='mean'.*deactivate\(\).*heads='max'"):
        openvla.activate(heads="max")
    openvla.deactivate()
