"""The PaliGemma adapter on a 2-layer PaliGemmaForConditionalGeneration and a Pi0-shaped model."""
import numpy as np
import pytest
from required import import_or_skip, skip_unless

torch = import_or_skip("paligemma", "torch")
transformers = import_or_skip("paligemma", "transformers")

from transformers.models.gemma import modeling_gemma  # noqa: E402

skip_unless("paligemma", hasattr(modeling_gemma, "eager_attention_forward") and hasattr(transformers, "PaliGemmaConfig"),
            f"transformers {transformers.__version__} has no PaliGemma with modeling_gemma.eager_attention_forward "
            "(added in 4.48); the PaliGemma adapter needs >= 4.48")

from getlocal import get_local  # noqa: E402
from getlocal.adapters import paligemma, tiny  # noqa: E402
from getlocal.adapters.sources.transformers import eager_kernel  # noqa: E402

TOL = 1e-6


@pytest.fixture(autouse=True)
def adapter_off():
    yield
    paligemma.deactivate()


def _max_diff(a, b):
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def _eager_twin(model):
    """The same weights in a model built with eager attention from the start (the reference)."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    for c in [config] + [getattr(config, k) for k in getattr(config, "sub_configs", {})]:
        c._attn_implementation = "eager"
    twin = type(model)(config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_one_image_maps_equal_output_attentions_of_the_eager_model():
    model = tiny.paligemma(attn_implementation=None)  # sdpa: the adapter must switch it
    inputs = tiny.paligemma_inputs(model)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    reference = _eager_twin(model)
    with torch.no_grad():
        want_language = reference(**inputs, output_attentions=True).attentions
        want_vision = reference.model.vision_tower(pixels, output_attentions=True).attentions

    paligemma.activate(model)
    with torch.no_grad():
        model(**inputs)
    maps = paligemma.collect(model)
    assert maps.steps == [(0, "prefill")]
    for tower, want in (("language", want_language), ("vision", want_vision)):
        got = maps.select(tower=tower)
        assert [m.layer for m in got] == list(range(len(want)))
        for m, w in zip(got, want):
            assert _max_diff(m.array, w) < TOL, f"{m.path}: max diff {_max_diff(m.array, w)}"
    language = maps.select(tower="language")[0]
    assert language.path == "model.language_model.layers.0.self_attn"
    assert [(s.kind, s.start, s.stop) for s in language.keys.segments] == [
        ("image", 0, 4), ("bos", 4, 5), ("text", 5, ids.shape[1])]


def test_two_cameras_get_their_own_image_segments_and_grids():
    model = tiny.paligemma()
    paligemma.activate(model)
    with torch.no_grad():
        model(**tiny.paligemma_inputs(model, images=2))
    maps = paligemma.collect(model, cameras=["base", "wrist"])
    vision = maps.select(tower="vision")[0]
    assert vision.shape == (2, 2, 4, 4)  # sample-major: sample 0 base, sample 0 wrist
    language = maps.select(tower="language", layer=1)[0]
    assert language.keys.cameras == ("base", "wrist")
    assert language.keys.image("wrist") == slice(4, 8)
    assert language.keys.grid("base") == (2, 2)
    text_to_wrist = language.between("text", "image", camera="wrist")
    assert np.array_equal(text_to_wrist, language.array[:, :, 9:, 4:8])
    assert language.keys.to_grid(text_to_wrist[0, 0, -1], camera="wrist").shape == (2, 2)


def test_generate_gives_a_prefill_step_then_decode_steps():
    model = tiny.paligemma()
    inputs = tiny.paligemma_inputs(model)
    ids = inputs["input_ids"]
    paligemma.activate(model)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    maps = paligemma.collect(model)
    assert maps.steps == [(0, "prefill"), (1, "decode"), (2, "decode"), (3, "decode")]
    length = ids.shape[1]
    for step, per_layer in enumerate(out.attentions):
        got = maps.select(tower="language", step=step)
        for m, want in zip(got, per_layer):
            assert m.shape == ((1, 2, length, length) if step == 0 else (1, 2, 1, length + step))
            assert _max_diff(m.array, want) < TOL
    assert maps.select(tower="vision").steps == [(0, "prefill")]


@pytest.mark.parametrize("text", ["gemma2", "gemma3"])
def test_soft_capped_gemma_maps_equal_output_attentions(text):
    if text == "gemma3" and not hasattr(transformers, "Gemma3ForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma3")
    if text == "gemma2":
        model = tiny.paligemma(text="gemma2", attn_implementation=None)
        kwargs = tiny.paligemma_inputs(model)
    else:
        config = transformers.Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, vocab_size=64, attn_logit_softcapping=20.0, sliding_window=4, query_pre_attn_scalar=16)
        torch.manual_seed(0)
        model = transformers.Gemma3ForCausalLM(config).eval()
        kwargs = dict(input_ids=torch.tensor([[2, 5, 9, 11, 4, 7, 8]]))
    reference = _eager_twin(model)
    with torch.no_grad():
        want = reference(**kwargs, output_attentions=True).attentions
    paligemma.activate(model)
    with torch.no_grad():
        model(**kwargs)
    got = paligemma.collect(model).select(tower="language")
    assert len(got) == len(want) == 2
    for m, w in zip(got, want):
        assert _max_diff(m.array, w) < TOL, f"{m.path}: max diff {_max_diff(m.array, w)}"


def test_pi0_prefix_pass_then_denoise_steps_through_direct_eager_calls():
    model = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(model, cameras=2)
    paligemma.activate()  # no model given: the instances are found
    model.sample_actions(images, ids, state, horizon=4, steps=3)
    maps = paligemma.collect(cameras=["base", "wrist"], state_tokens=1)

    assert maps.steps == [(0, "prefix"), (1, "denoise"), (2, "denoise"), (3, "denoise")]
    assert [m.camera for m in maps.select(tower="vision", layer=0)] == ["base", "wrist"]
    prefix = 2 * 4 + ids.shape[1]
    language = maps.select(tower="language")
    assert [m.path for m in language] == [f"paligemma.model.language_model.layers.{i}.self_attn" for i in (0, 1)]
    assert all(m.shape == (1, 2, prefix, prefix) for m in language)
    expert = maps.select(tower="expert")
    assert len(expert) == 3 * 2
    assert expert[0].path == "gemma_expert.model.layers.0.self_attn"
    assert all(m.shape == (1, 2, 5, prefix + 5) for m in expert)
    keys = expert[0].keys
    assert [(s.kind, s.camera) for s in keys.segments] == [
        ("image", "base"), ("image", "wrist"), ("bos", None), ("text", None), ("state", None), ("action", None)]
    action_to_wrist = expert[0].between("action", "image", camera="wrist")
    assert action_to_wrist.shape == (1, 2, 4, 4)
    assert np.allclose(np.asarray(expert[0].array).sum(-1), 1, atol=1e-5)


def test_a_direct_eager_attention_forward_call_is_captured_exactly():
    model = tiny.pi0()
    attn = model.gemma_expert.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 16, generator=generator)
    k, v = (torch.randn(1, 1, 7, 16, generator=generator) for _ in range(2))  # one key/value head
    paligemma.activate(model)
    _, weights = modeling_gemma.eager_attention_forward(attn, q, k, v, None, attn.scaling)
    maps = paligemma.collect(model)
    assert len(maps) == 1 and maps[0].tower == "expert"
    assert _max_diff(maps[0].array, weights) == 0


def test_deactivate_restores_sdpa_and_the_original_functions():
    model = tiny.paligemma(attn_implementation=None)
    # The configs the running modules read (4.53 gives each sub-model a copy of its sub-config).
    configs = (model.config, model.model.language_model.config, model.model.vision_tower.config)
    before = [c._attn_implementation for c in configs]
    assert "eager" not in before
    code = modeling_gemma.eager_attention_forward.__code__
    paligemma.activate(model)
    # eager weights under the masks sdpa would get (EAGER_AS_SDPA where transformers >= 4.53)
    assert [c._attn_implementation for c in configs] == [eager_kernel("sdpa")] * 3
    assert modeling_gemma.eager_attention_forward.__code__ is not code
    paligemma.deactivate()
    assert [c._attn_implementation for c in configs] == before
    assert modeling_gemma.eager_attention_forward.__code__ is code
    assert not get_local.is_active()


@pytest.mark.parametrize("first", ["openvla", "paligemma"])
def test_both_adapters_active_can_be_deactivated_in_either_order(first):
    from transformers.modeling_utils import PreTrainedModel

    from getlocal.adapters import openvla

    post_init = PreTrainedModel.post_init
    openvla.activate()
    paligemma.activate()
    model = tiny.paligemma(attn_implementation=None)  # built while both are on
    assert model.model.language_model.config._attn_implementation == eager_kernel("sdpa")
    adapters = [openvla, paligemma] if first == "openvla" else [paligemma, openvla]
    adapters[0].deactivate()
    assert get_local.is_active()
    adapters[1].deactivate()
    assert PreTrainedModel.post_init is post_init
    assert not get_local.is_active()
    assert model.model.language_model.config._attn_implementation != "eager"


def test_collect_keeps_to_its_own_models_when_a_cache_key_was_reused():
    from getlocal.adapters import openvla

    vla = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(vla)
    openvla.activate(vla)
    with torch.no_grad():
        vla(pixels, ids)
    openvla.deactivate()  # frees the key of Llama's eager_attention_forward; the cache keeps its maps
    model = tiny.paligemma()
    paligemma.activate(model)
    with torch.no_grad():
        model(**tiny.paligemma_inputs(model))
    assert paligemma.collect(model).towers == ["vision", "language"]
    assert openvla.collect(vla).towers == ["dinov2", "siglip", "llm"]
