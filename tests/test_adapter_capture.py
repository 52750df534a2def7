"""``with adapter.capture(model) as maps:``: activated for the block, maps filled on exit, state restored."""
import pytest
from required import import_or_skip, skip_unless

torch = import_or_skip("vit", "torch")
timm = import_or_skip("vit", "timm")

from getlocal import GetLocalError, get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny, vit  # noqa: E402


pytestmark = pytest.mark.usefixtures("adapters_off")


def make_local():
    def double(x):
        attn = 2 * x
        return attn

    return double


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0).eval()


def _run_vit(model):
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))


def _needs_paligemma():
    from transformers.models.gemma import modeling_gemma

    skip_unless("paligemma", hasattr(modeling_gemma, "eager_attention_forward"),
                "the PaliGemma adapter needs transformers >= 4.48")


def test_capture_yields_empty_maps_that_are_filled_when_the_block_ends():
    model = _vit()
    with vit.capture(model) as maps:
        assert vit.is_active() and len(maps) == 0
        _run_vit(model)
        assert len(maps) == 0
    assert [(m.tower, m.path, m.phase) for m in maps] == [("vit", "blocks.0.attn", "encode"),
                                                         ("vit", "blocks.1.attn", "encode")]
    assert repr(maps.layouts["vit"]) == "TokenLayout(cls 0:1, image 2x2 1:5)"
    assert not vit.is_active() and not get_local.is_active()


def test_capture_labels_only_the_calls_made_in_the_block():
    model = _vit()
    vit.activate(model)
    _run_vit(model)  # before the block: in the cache, not in the block's maps
    with vit.capture(model) as maps:
        _run_vit(model)
    assert len(vit.collect(model)) == 4
    assert [m.step for m in maps] == [0, 0] and len(maps) == 2


def test_capture_deactivates_and_puts_the_model_back_on_error():
    model = _vit()
    fused = [block.attn.fused_attn for block in model.blocks]
    with pytest.raises(RuntimeError, match="in the block"):
        with vit.capture(model) as maps:
            assert not any(block.attn.fused_attn for block in model.blocks)
            raise RuntimeError("in the block")
    assert not vit.is_active() and not get_local.is_active()
    assert [block.attn.fused_attn for block in model.blocks] == fused
    assert len(maps) == 0


def test_capture_takes_the_blocks_calls_out_of_the_cache_and_leaves_the_rest():
    model = _vit()
    mine = get_local("attn")(make_local())
    get_local.activate()
    mine(3)
    with vit.capture(model) as maps:
        _run_vit(model)
        assert len(vit.collect(model)) == 2  # inside the block the calls are in the cache
    assert len(maps) == 2 and maps[0].array.shape == (1, 3, 5, 5)
    assert list(get_local.cache) == [get_local.key_of(mine)]  # the user's own capture is untouched
    assert get_local.is_active()  # it was on before the block: it stays on
    get_local.remove(mine)


def test_capture_leaves_an_adapter_that_was_active_before_the_block_active():
    model = _vit()
    vit.activate(model, convert="cpu")
    with vit.capture(model) as maps:
        _run_vit(model)
    assert vit.is_active() and get_local.is_active()
    assert isinstance(maps[0].array, torch.Tensor)  # the block ran under the activation in force
    vit.deactivate()
    assert not vit.is_active() and not get_local.is_active()


def test_capture_leaves_the_adapter_active_after_an_error_when_it_was_active_before():
    vit.activate()
    with pytest.raises(RuntimeError):
        with vit.capture(_vit()):
            raise RuntimeError("in the block")
    assert vit.is_active()


def test_wrong_capture_arguments_raise_when_it_is_called_before_anything_changes():
    with pytest.raises(GetLocalError, match="model"):
        vit.capture("not a model")
    with pytest.raises(GetLocalError, match="cameras"):
        paligemma.capture(cameras="wrist")
    with pytest.raises(GetLocalError, match="convert"):
        openvla.capture(convert="nonsense")
    assert not (vit.is_active() or openvla.is_active() or paligemma.is_active())


def test_capture_gives_the_maps_that_activate_and_collect_give_on_tiny_openvla():
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate(model)
    tiny.generate(model, pixels, ids, max_new_tokens=3)
    want = openvla.collect(model)
    openvla.deactivate()
    get_local.clear()
    with openvla.capture(model) as maps:
        tiny.generate(model, pixels, ids, max_new_tokens=3)
    assert [(m.tower, m.layer, m.step, m.phase, m.path) for m in maps] == \
        [(m.tower, m.layer, m.step, m.phase, m.path) for m in want]
    assert maps.layouts == want.layouts
    assert not openvla.is_active()


def test_capture_passes_cameras_and_state_tokens_to_the_labels_on_tiny_pi0():
    _needs_paligemma()
    model = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(model, cameras=2)
    with paligemma.capture(model, cameras=["base", "wrist"], state_tokens=1) as maps:
        model.sample_actions(images, ids, state, horizon=4, steps=2)
    assert maps.steps == [(0, "prefix"), (1, "denoise"), (2, "denoise")]
    expert = maps.select(tower="expert")[-1]
    assert [s.camera for s in expert.keys.segments if s.kind == "image"] == ["base", "wrist"]
    assert [s.kind for s in expert.keys.segments][-2:] == ["state", "action"]
    assert not paligemma.is_active()


def test_capture_works_on_tiny_paligemma_generate():
    _needs_paligemma()
    model = tiny.paligemma()
    inputs = tiny.paligemma_inputs(model)
    with paligemma.capture(model) as maps, torch.no_grad():
        model(**inputs)
    assert maps.steps == [(0, "prefill")]
    assert set(maps.towers) == {"vision", "language"}
