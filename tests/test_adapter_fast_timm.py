"""mode='fast' on timm ViTs: every block keeps its fused kernel, and the maps equal eager mode's.

Real timm models with random weights and tiny dimensions, batch 2; eager mode
(the default) switches the same model non-fused for the reference maps. Runs on
timm 0.9.10 (OpenVLA's pin) and 1.0.x.
"""
import warnings

import numpy as np
import pytest
from required import import_or_skip

torch = import_or_skip("vit", "torch")
timm = import_or_skip("vit", "timm")

from getlocal import GetLocalError, get_local  # noqa: E402
from getlocal.adapters import openvla, tiny, vit  # noqa: E402
from getlocal.maps import Lazy  # noqa: E402

pytestmark = pytest.mark.usefixtures("adapters_off")

FLOAT32 = 1e-5  # fast and eager run the same arithmetic; later blocks differ by what fused vs not did to x
BFLOAT16 = 2 ** -7  # two bfloat16 steps at 1.0: a later block sees a hidden state that the kernels rounded apart

#: name -> (timm model, image side): a class token only; a class token and 4 registers (DINOv2, as OpenVLA's);
#: 37 tokens of 16 dims, whose map is larger than q and k and so is rebuilt on first read.
MODELS = {
    "cls": ("vit_tiny_patch16_224", dict(img_size=32, depth=2)),
    "registers": ("vit_large_patch14_reg4_dinov2", dict(img_size=28, embed_dim=32, depth=2, num_heads=2)),
    "rebuilt": ("vit_tiny_patch16_224", dict(img_size=96, embed_dim=32, depth=2, num_heads=2)),
}


def _vit(kind, seed=0):
    name, options = MODELS[kind]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **options).eval()
    side = options["img_size"]
    return model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _fused(model):
    return [block.attn.fused_attn for block in model.blocks]


def _run(model, images, **kwargs):
    with torch.no_grad():
        return model(images, **kwargs)


def _max_difference(fast_maps, eager_maps):
    """The largest |fast - eager| over every map, after checking that every label agrees."""
    assert len(fast_maps) == len(eager_maps) > 0
    worst = 0.0
    for a, b in zip(fast_maps, eager_maps):
        assert (a.tower, a.layer, a.path, a.step, a.phase, a.shape) == (b.tower, b.layer, b.path, b.step, b.phase,
                                                                         b.shape)
        assert (a.queries, a.keys) == (b.queries, b.keys)
        worst = max(worst, float(np.abs(np.asarray(a.array, np.float32) - np.asarray(b.array, np.float32)).max()))
    return worst


def _fast_and_eager(model, images, **kwargs):
    with vit.capture(model, mode="fast") as fast:
        _run(model, images, **kwargs)
    with vit.capture(model) as eager:
        _run(model, images, **kwargs)
    return fast, eager


@pytest.mark.parametrize("kind", list(MODELS))
def test_fast_vit_maps_equal_eager_every_block_float32(kind):
    model, images = _vit(kind)
    fast, eager = _fast_and_eager(model, images)
    assert [m.path for m in fast] == ["blocks.0.attn", "blocks.1.attn"] and fast.towers == ["vit"]
    if kind == "registers":
        assert [(s.kind, s.stop - s.start) for s in fast[0].keys.segments] == [("cls", 1), ("register", 4),
                                                                               ("image", 4)]
    if kind == "rebuilt":
        assert all(isinstance(m.__dict__["_array"], Lazy) for m in fast)  # q and k held, the map not yet built
    worst = _max_difference(fast, eager)
    assert worst <= FLOAT32, f"fast vs eager: max |difference| {worst:.3g}"
    np.testing.assert_allclose(np.asarray(fast[0].array).sum(-1), 1, atol=1e-6)


@pytest.mark.parametrize("kind", list(MODELS))
def test_fast_vit_maps_equal_eager_every_block_bfloat16(kind):
    model, images = _vit(kind)
    model, images = model.to(torch.bfloat16), images.to(torch.bfloat16)
    fast, eager = _fast_and_eager(model, images)
    # the first block sees the same input in both modes: timm's arithmetic repeated on the same q and k
    first = _max_difference(fast[:1], eager[:1])
    assert first <= 2 ** -8, f"block 0, bfloat16: max |difference| {first:.3g}"
    worst = _max_difference(fast, eager)
    assert worst <= BFLOAT16, f"fast vs eager, bfloat16: max |difference| {worst:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fast_mode_leaves_vit_outputs_bit_identical_and_fused_attn_as_it_was(dtype):
    model, images = _vit("registers")
    model, images = model.to(dtype), images.to(dtype)
    model.blocks[0].attn.fused_attn = False  # the user's own choice for one block: its attn is read as it is
    before = _fused(model)
    assert before == [False, True]
    plain = _run(model, images)
    with vit.capture(model, mode="fast") as fast:
        captured = _run(model, images)
        assert _fused(model) == before  # during the block too
    assert torch.equal(plain, captured), "mode='fast' must not change a single bit of the output"
    assert _fused(model) == before
    with vit.capture(model) as eager:
        _run(model, images)
    assert _fused(model) == before
    worst = _max_difference(fast, eager)
    assert worst <= (FLOAT32 if dtype == torch.float32 else BFLOAT16), f"max |difference| {worst:.3g}"
    assert not isinstance(fast[0].__dict__["_array"], Lazy)  # the non-fused block's map itself


@pytest.mark.parametrize("heads", ["mean", "max"])
def test_fast_vit_heads_selection_equals_the_reduced_full_map_and_holds_only_that(heads):
    model, images = _vit("rebuilt")
    with vit.capture(model, mode="fast") as full:
        _run(model, images)
    get_local.clear()
    with vit.capture(model, mode="fast", heads=heads) as reduced:
        _run(model, images)
        held = sum(int(v.nbytes) for key in get_local.cache if "Attention.forward" in key
                   for v in get_local.cache[key])
    assert len(reduced) == len(full) == 2
    for a, b in zip(reduced, full):
        whole = np.asarray(b.array)
        expected = whole.mean(1, keepdims=True) if heads == "mean" else whole.max(1, keepdims=True)
        assert a.shape == expected.shape == (2, 1, 37, 37)
        np.testing.assert_allclose(np.asarray(a.array), expected, atol=1e-6)
    implied = sum(int(np.prod(m.shape)) * 4 for m in reduced)  # one float32 map per block, heads reduced
    assert held == implied, (held, implied)


def test_fast_vit_generated_queries_keep_no_vit_map():
    model, images = _vit("cls")
    with vit.capture(model, mode="fast", queries="generated") as maps:
        _run(model, images)
        held = sum(int(v.nbytes) for key in get_local.cache if "Attention.forward" in key
                   for v in get_local.cache[key])
    assert len(maps) == 0 and held == 0  # a ViT has no generated tokens: nothing kept, nothing held


@pytest.mark.skipif(not hasattr(timm.layers, "resolve_self_attn_mask"),
                    reason=f"timm {timm.__version__} passes no attention mask to its ViT blocks (timm >= 1.0 does)")
@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal"])
def test_fast_vit_maps_equal_eager_under_timms_attention_masks(mask_kind):
    model, images = _vit("registers")
    n = 9
    visible = torch.ones(2, 1, n, n, dtype=torch.bool)
    visible[0, :, :, -2:] = False  # item 0 hides its last two patches from every query
    kwargs = {"bool": dict(attn_mask=visible),
              "float": dict(attn_mask=torch.zeros(2, 1, n, n).masked_fill(~visible, -1e4)),
              "causal": dict(is_causal=True)}[mask_kind]
    plain = _run(model, images, **kwargs)
    fast, eager = _fast_and_eager(model, images, **kwargs)
    with vit.capture(model, mode="fast"):
        assert torch.equal(plain, _run(model, images, **kwargs))
    worst = _max_difference(fast, eager)
    assert worst <= FLOAT32, f"{mask_kind} mask: max |difference| {worst:.3g}"
    hidden = np.asarray(fast[0].array)[0, ..., -2:] if mask_kind != "causal" else np.triu(
        np.asarray(fast[0].array), 1)
    assert (hidden == 0).all()


def _training_with_dropout():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2,
                             attn_drop_rate=0.1).train()


def test_fast_mode_refuses_a_fused_block_training_with_attention_dropout_naming_it_and_the_way_out():
    model = _training_with_dropout()
    with pytest.raises(GetLocalError, match=r"Attention \(blocks\.0\.attn\).*dropout.*mode='eager'"):
        vit.activate(model, mode="fast")
    assert not vit.is_active() and not get_local.is_active()
    assert _fused(model) == [True, True]
    with pytest.raises(GetLocalError, match=r"blocks\.0\.attn.*mode='eager'"):
        with vit.capture(model, mode="fast"):
            pass
    assert not vit.is_active()


def test_fast_mode_skips_with_a_warning_a_block_put_in_training_after_activation():
    model = _training_with_dropout().eval()
    images = torch.randn(2, 3, 32, 32)
    with vit.capture(model, mode="fast") as maps:
        model.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(images)
    assert len(maps) == 0, "a map the fused kernel dropped at random must not be rebuilt as if it had not"
    assert any("dropout" in str(w.message) and "mode='eager'" in str(w.message) for w in caught)


def test_fast_mode_reads_a_non_fused_training_block_as_it_is():
    model = _training_with_dropout()
    for block in model.blocks:
        block.attn.fused_attn = False  # the way out the refusal names
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    with vit.capture(model, mode="fast") as maps:
        model(images)
    assert len(maps) == 2
    a = np.asarray(maps[0].array)
    # dropped and rescaled (1 / 0.9) weights, whose rows no longer sum to 1: the map the block used
    assert (a == 0).any() and not np.allclose(a.sum(-1), 1)
    assert _fused(model) == [False, False]


def _openvla_pair():
    fast = tiny.openvla(attn_implementation=None)
    eager = tiny.openvla(attn_implementation="eager")
    eager.load_state_dict(fast.state_dict())
    return fast, eager


def _openvla_fast_supported():
    try:
        from transformers.integrations import sdpa_attention  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _openvla_fast_supported(),
                    reason="openvla mode='fast' refuses this transformers' language model (< 4.48); "
                           "the timm towers are checked through the vit adapter here")
def test_fast_openvla_dinov2_and_siglip_towers_equal_eager_and_stay_fused():
    fast, eager = _openvla_pair()
    pixels, ids = tiny.openvla_inputs(fast, batch=2)
    backbone = fast.vision_backbone
    before = [_fused(backbone.featurizer), _fused(backbone.fused_featurizer)]
    with torch.no_grad():
        plain = fast(pixels, ids).logits
    with openvla.capture(fast, mode="fast") as fm, torch.no_grad():
        captured = fast(pixels, ids).logits
    with openvla.capture(eager) as em, torch.no_grad():
        eager(pixels, ids)
    assert torch.equal(plain, captured)
    assert [_fused(backbone.featurizer), _fused(backbone.fused_featurizer)] == before == [[True] * 3] * 2
    assert fm.towers == ["dinov2", "siglip", "llm"]
    for tower in ("dinov2", "siglip"):
        worst = _max_difference(fm.select(tower=tower), em.select(tower=tower))
        assert worst <= FLOAT32, f"{tower}: max |difference| {worst:.3g}"
    assert [s.kind for s in fm.select(tower="dinov2")[0].keys.segments] == ["cls", "register", "image"]
    assert [s.kind for s in fm.select(tower="siglip")[0].keys.segments if s.stop > s.start] == ["image"]


def test_fast_mode_refuses_a_fused_block_whose_scale_its_kernel_ignores():
    model, _ = _vit("cls")
    model.blocks[1].attn.scale = 0.5  # timm's fused call passes no scale: sdpa uses head_dim ** -0.5
    with pytest.raises(GetLocalError, match=r"Attention \(blocks\.1\.attn\) has scale=0\.5.*mode='eager'"):
        vit.activate(model, mode="fast")
    assert not vit.is_active()
    model.blocks[1].attn.fused_attn = False  # then the block computes with its scale, and its attn is read
    with vit.capture(model, mode="fast") as maps:
        _run(model, torch.randn(2, 3, 32, 32))
    assert len(maps) == 2
