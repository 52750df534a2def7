"""The OpenVLA adapter on a Prismatic-shaped model built from real timm and transformers classes."""
import sys

import numpy as np

import pytest
from required import import_or_skip

torch = import_or_skip("openvla", "torch")
timm = import_or_skip("openvla", "timm")
transformers = import_or_skip("openvla", "transformers")

from getlocal import get_local  # noqa: E402
from getlocal.adapters import openvla, tiny  # noqa: E402

TOL = 1e-6


@pytest.fixture(autouse=True)
def adapter_off():
    yield
    openvla.deactivate()


def _max_diff(a, b):
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def _run_with_hooks(hooks, run):
    """Run ``run()`` with ``(module, hook)`` forward hooks registered, then remove them."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        run()
    finally:
        for h in handles:
            h.remove()


def _blocks_that_ran(model, run):
    """``{tower path: [block indices that ran]}``, counted with forward hooks."""
    ran, hooks = {}, []
    for path in ("vision_backbone.featurizer", "vision_backbone.fused_featurizer"):
        for i, block in enumerate(model.get_submodule(path).blocks):
            hooks.append((block, lambda *_, p=path, i=i: ran.setdefault(p, []).append(i)))
    _run_with_hooks(hooks, run)
    return ran


def _attention_inputs(model, run):
    """``{module path: input x}`` of every timm attention block during ``run()``."""
    seen = {}
    hooks = [(module, lambda m, args, out, p=path: seen.setdefault(p, args[0]))
             for path, module in model.named_modules() if path.endswith(".attn") and "featurizer" in path]
    _run_with_hooks(hooks, run)
    return seen


def _softmax_q_k(attn, x):
    """softmax(q k^T * scale) recomputed from a timm Attention block and its input."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def test_timm_maps_equal_softmax_of_q_k_for_dinov2_registers_and_siglip():
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate(model)
    with torch.no_grad():
        inputs = _attention_inputs(model, lambda: model(pixels, ids))
        maps = openvla.collect(model)
        vision = maps.select(tower=["dinov2", "siglip"])
        assert len(vision) == len(inputs) > 0
        for m in vision:
            want = _softmax_q_k(model.get_submodule(m.path), inputs[m.path])
            assert _max_diff(m.array, want) < TOL, f"{m.path}: max diff {_max_diff(m.array, want)}"
    dinov2, siglip = maps.select(tower="dinov2")[0], maps.select(tower="siglip")[0]
    assert dinov2.path.startswith("vision_backbone.featurizer.blocks.")
    assert siglip.path.startswith("vision_backbone.fused_featurizer.blocks.")
    assert dinov2.shape == (1, 2, 1 + 4 + 4, 1 + 4 + 4)  # class token, 4 registers, 2x2 patches
    assert siglip.shape == (1, 2, 4, 4)  # patches only
    assert [(s.kind, len(s)) for s in dinov2.keys.segments] == [("cls", 1), ("register", 4), ("image", 4)]
    assert dinov2.keys.grid() == siglip.keys.grid() == (2, 2)


def test_llm_maps_of_a_seven_token_generate_equal_output_attentions_step_by_step():
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    embeds = model.embed(pixels, ids)
    openvla.activate(model)
    with torch.no_grad():
        out = model.language_model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), do_sample=False,
            max_new_tokens=7, min_new_tokens=7, pad_token_id=0, output_attentions=True, return_dict_in_generate=True)
    maps = openvla.collect(model).select(tower="llm")
    assert len(out.attentions) == 7
    for step, per_layer in enumerate(out.attentions):
        got = maps.select(step=step)
        assert [m.layer for m in got] == list(range(len(per_layer)))
        for m, want in zip(got, per_layer):
            assert _max_diff(m.array, want) < TOL, f"step {step} layer {m.layer}: max diff {_max_diff(m.array, want)}"


def test_generate_gives_one_prefill_and_six_decode_steps_labelled_with_shapes_and_paths():
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate(model)
    ran = _blocks_that_ran(model, lambda: tiny.generate(model, pixels, ids, max_new_tokens=7))
    maps = openvla.collect(model)

    assert maps.steps == [(0, "prefill")] + [(t, "decode") for t in range(1, 7)]
    length = 1 + 4 + ids.shape[1] - 1  # BOS, 2x2 patches, the rest of the text
    for m in maps.select(tower="llm"):
        heads = model.language_model.config.num_attention_heads
        want = (1, heads, length, length) if m.step == 0 else (1, heads, 1, length + m.step)
        assert m.shape == want, m
        assert m.path == f"language_model.model.layers.{m.layer}.self_attn"
    assert [m.layer for m in maps.select(tower="dinov2")] == ran["vision_backbone.featurizer"]
    assert [m.layer for m in maps.select(tower="siglip")] == ran["vision_backbone.fused_featurizer"]
    assert set(maps.select(tower=["dinov2", "siglip"]).steps) == {(0, "prefill")}

    last = maps.select(tower="llm", step=6)[0]
    assert [(s.kind, s.start, s.stop) for s in last.keys.segments] == [
        ("bos", 0, 1), ("image", 1, 5), ("text", 5, length), ("generated", length, length + 6)]
    assert [(s.kind, s.start, s.stop) for s in last.queries.segments] == [("generated", 0, 1)]


def test_text_to_image_block_reshapes_onto_the_patch_grid():
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate(model)
    with torch.no_grad():
        model(pixels, ids)
    prefill = openvla.collect(model).select(tower="llm", layer=1)[0]
    block = prefill.between("text", "image")
    assert np.array_equal(block, prefill.array[:, :, 5:, :][..., 1:5])
    assert prefill.keys.to_grid(block.mean(axis=(0, 1, 2))).shape == (2, 2)


def test_sdpa_model_is_switched_to_eager_and_everything_is_restored():
    model = tiny.openvla(attn_implementation=None)  # transformers' default, as from_pretrained gives
    llm = model.language_model
    attention = llm.model.layers[0].self_attn
    block = model.vision_backbone.featurizer.blocks[0].attn
    before = (type(attention), llm.config._attn_implementation, block.fused_attn)
    assert before[1] != "eager" and before[2] is True
    pixels, ids = tiny.openvla_inputs(model)
    with torch.no_grad():
        reference = model(pixels, ids).logits

    openvla.activate(model)
    with torch.no_grad():
        captured = model(pixels, ids).logits
    maps = openvla.collect(model)
    assert maps.towers == ["dinov2", "siglip", "llm"]
    assert _max_diff(captured, reference) < 1e-5

    openvla.deactivate()
    assert (type(attention), llm.config._attn_implementation, block.fused_attn) == before
    assert not attention._forward_pre_hooks
    assert not get_local.is_active()


def test_activate_before_loading_switches_models_loaded_later(tmp_path):
    saved = tiny.openvla().language_model
    saved.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        want = saved(ids, output_attentions=True).attentions

    openvla.activate()
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path)  # no attn_implementation: sdpa
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=28,
                            embed_dim=32, depth=1, num_heads=2)
    assert vit.blocks[0].attn.fused_attn is False
    with torch.no_grad():
        loaded(ids)
        vit(torch.randn(1, 3, 28, 28))
    maps = openvla.collect()
    llm = maps.select(tower="llm")
    assert [m.path for m in llm] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for m, w in zip(llm, want):
        assert _max_diff(m.array, w) < TOL
    assert maps.select(tower="dinov2")[0].shape == (1, 2, 9, 9)

    openvla.deactivate()
    assert loaded.config._attn_implementation != "eager"


def test_functions_are_the_original_code_objects_unless_activated():
    import timm.layers  # noqa: F401
    from transformers.modeling_utils import PreTrainedModel
    from transformers.models.llama import modeling_llama

    import timm.models.vision_transformer as timm_vit

    classes = {getattr(sys.modules.get("timm.layers.attention"), "Attention", timm_vit.Attention), timm_vit.Attention}
    functions = [cls.forward for cls in classes]  # timm 1.0 keeps Attention in timm.layers, 0.9 in the ViT module
    functions.append(getattr(modeling_llama, "eager_attention_forward", modeling_llama.LlamaAttention.forward))
    codes = [f.__code__ for f in functions]
    post_init = PreTrainedModel.post_init

    openvla.activate()
    assert all(f.__code__ is not c for f, c in zip(functions, codes))
    assert PreTrainedModel.post_init is not post_init
    openvla.deactivate()
    assert all(f.__code__ is c for f, c in zip(functions, codes))
    assert PreTrainedModel.post_init is post_init
    assert not any(f in get_local.functions().values() for f in functions)


def test_collect_with_a_model_leaves_out_maps_of_other_models_of_the_same_classes():
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    for block in other.blocks:
        block.attn.fused_attn = False
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate(model)
    with torch.no_grad():
        other(torch.randn(1, 3, 32, 32))
        tiny.generate(model, pixels, ids, max_new_tokens=2)
    maps = openvla.collect(model)
    assert maps.steps == [(0, "prefill"), (1, "decode")]
    assert all(m.path.startswith(("vision_backbone.", "language_model.")) for m in maps)
