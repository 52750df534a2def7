"""LeRobot's own Pi0 and Pi0.5 (``PI0Policy``, ``PI05Policy``, lerobot >= 0.5) through ``getlocal.adapters.paligemma``.

The policies are LeRobot's classes built by LeRobot's own ``__init__`` at a
tiny size, offline, float32, random weights: their configs offer only
``gemma_300m`` / ``gemma_2b`` and a full-size SigLIP, so the build runs with
LeRobot's size table (``get_gemma_config``) answering a tiny Gemma and the
SigLIP config that ``PaliGemmaWithExpertModel`` writes shrunk before its
PaliGemma is built; every module is the class LeRobot builds, wired as LeRobot
wires it. Two cameras under LeRobot's image keys. The labels are checked
against the token order and masks LeRobot itself builds (``embed_prefix``,
``embed_suffix``, ``make_att_2d_masks``). The tests skip where lerobot >= 0.5
is not installed and fail in the lerobot06 leg of tests/matrix.sh (required).
"""
import numpy as np
import pytest
import torch

import getlocal
from getlocal import GetLocalError
from required import import_or_skip, skip_unless

lerobot = import_or_skip("lerobot_pi0", "lerobot")
skip_unless("lerobot_pi0", tuple(int(p) for p in lerobot.__version__.split(".")[:2]) >= (0, 5),
            f"lerobot {lerobot.__version__}'s Pi0 needs LeRobot's own transformers branch; lerobot >= 0.5 runs it")
modeling_pi0 = import_or_skip("lerobot_pi0", "lerobot.policies.pi0.modeling_pi0")
modeling_pi05 = import_or_skip("lerobot_pi0", "lerobot.policies.pi05.modeling_pi05")
vla_utils = import_or_skip("lerobot_pi0", "lerobot.policies.common.vla_utils")

from getlocal.adapters import paligemma  # noqa: E402

CAMERAS = ("observation.images.top", "observation.images.wrist")
LAYERS, STEPS, CHUNK, TEXT, IMAGE, PATCH = 2, 3, 5, 6, 32, 8
IMAGE_TOKENS = (IMAGE // PATCH) ** 2


def _build(pi05: bool):
    """LeRobot's PI0Policy / PI05Policy, built by its own __init__ with tiny Gemmas and a tiny SigLIP."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    modeling = modeling_pi05 if pi05 else modeling_pi0
    config_class = (import_or_skip("lerobot_pi0", "lerobot.policies.pi05.configuration_pi05").PI05Config if pi05
                    else import_or_skip("lerobot_pi0", "lerobot.policies.pi0.configuration_pi0").PI0Config)
    paligemma_class = modeling.PaliGemmaForConditionalGenerationWithPiGemma

    def tiny_gemma(variant):  # LeRobot's attention reshapes to 8 heads: keep 8, shrink the rest
        return modeling.GemmaConfig(width=32, depth=LAYERS, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=4)

    def tiny_paligemma(config):  # the config LeRobot wrote, with its SigLIP shrunk
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 16, 32, LAYERS
        vision.num_attention_heads, vision.patch_size = 2, PATCH
        vision.projection_dim = config.text_config.hidden_size
        return paligemma_class(config)

    features = {c: PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)) for c in CAMERAS}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (4,))
    config = config_class(device="cpu", dtype="float32", chunk_size=CHUNK, n_action_steps=CHUNK,
                          num_inference_steps=STEPS, max_state_dim=8, max_action_dim=8,
                          image_resolution=(IMAGE, IMAGE), tokenizer_max_length=TEXT, input_features=features,
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (3,))})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling, "get_gemma_config", tiny_gemma)
        patch.setattr(modeling, "PaliGemmaForConditionalGenerationWithPiGemma", tiny_paligemma)
        torch.manual_seed(0)
        policy = (modeling.PI05Policy if pi05 else modeling.PI0Policy)(config)
    return policy.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def policy(request):
    return _build(request.param)


@pytest.fixture(autouse=True)
def adapter_off():
    yield
    paligemma.deactivate()
    getlocal.get_local.clear()


def _batch(seed=0, words=4):
    g = torch.Generator().manual_seed(seed)
    batch = {c: torch.rand(1, 3, IMAGE, IMAGE, generator=g) for c in CAMERAS}
    batch["observation.state"] = torch.randn(1, 4, generator=g)
    batch["observation.language.tokens"] = torch.tensor([[2] + [6 + i for i in range(words - 1)] + [0] * (TEXT - words)])
    batch["observation.language.attention_mask"] = torch.tensor([[True] * words + [False] * (TEXT - words)])
    return batch


def _is_pi05(policy):
    return isinstance(policy, modeling_pi05.PI05Policy)


def _sample(policy, batch=None, seed=1):
    """``sample_actions`` of the policy's own model on LeRobot's own preprocessing, with fixed noise."""
    batch = batch or _batch()
    images, img_masks = policy._preprocess_images(batch)
    tokens, masks = batch["observation.language.tokens"], batch["observation.language.attention_mask"]
    state = () if _is_pi05(policy) else (policy.prepare_state(batch),)
    noise = torch.randn(1, CHUNK, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return policy.model.sample_actions(images, img_masks, tokens, masks, *state, noise=noise)


def _lerobot_masks(policy, batch):
    """LeRobot's own ``(prefix pad [P], prefix 2-D mask [P, P], suffix 2-D mask [S, P + S])``, as its
    ``sample_actions`` and ``denoise_step`` build them (True: the key is seen)."""
    model = policy.model
    images, img_masks = policy._preprocess_images(batch)
    with torch.no_grad():
        _, pad, att = model.embed_prefix(images, img_masks, batch["observation.language.tokens"],
                                         batch["observation.language.attention_mask"])
        noise, time = torch.zeros(1, CHUNK, 8), torch.ones(1)
        state = () if _is_pi05(policy) else (policy.prepare_state(batch),)
        _, suffix_pad, suffix_att, _ = model.embed_suffix(*state, noise, time)
    prefix = vla_utils.make_att_2d_masks(pad, att)
    suffix = torch.cat([pad[:, None, :].expand(1, suffix_pad.shape[1], pad.shape[1]),
                        vla_utils.make_att_2d_masks(suffix_pad, suffix_att)], dim=2)
    return pad[0].numpy(), prefix[0].numpy(), suffix[0].numpy()


def _kinds(layout):
    """The kind (and camera) of every position of a token layout."""
    out = [None] * len(layout)
    for s in layout.segments:
        for i in range(s.start, s.stop):
            out[i] = (s.kind, s.camera)
    return out


def _lerobots_kinds(policy, batch):
    """The kind (and camera) of every key position of a denoise step, read off LeRobot's own prefix order
    (images per camera in its image keys' order, then the language tokens), its pad mask (padding) and its
    suffix mask (Pi0's state token: the suffix row that cannot see the action tokens)."""
    pad, _, suffix = _lerobot_masks(policy, batch)
    expected = [("image", camera) for camera in CAMERAS for _ in range(IMAGE_TOKENS)]
    expected += [("bos", None)] + [("text", None)] * (TEXT - 1)
    assert len(expected) == len(pad)
    expected = [("padding", None) if not real else kind for kind, real in zip(expected, pad)]
    return expected + [("state", None) if blind else ("action", None) for blind in ~suffix[:, -1]]


def test_towers_phases_and_steps_come_from_the_policys_own_structure(policy):
    with paligemma.capture(policy) as maps:
        _sample(policy)
    assert maps.steps == [(0, "prefix")] + [(step, "denoise") for step in range(1, STEPS + 1)]
    prefix = maps.select(step=0)
    # SigLIP once per camera, named by LeRobot's image keys; then the PaliGemma language model over the prefix
    assert [(m.tower, m.layer, m.camera) for m in prefix] == (
        [("vision", layer, camera) for camera in CAMERAS for layer in range(LAYERS)]
        + [("language", layer, None) for layer in range(LAYERS)])
    for step in range(1, STEPS + 1):
        assert [(m.tower, m.layer) for m in maps.select(step=step)] == [("expert", layer) for layer in range(LAYERS)]
    language = {m.path for m in maps.select(tower="language")}
    expert = {m.path for m in maps.select(tower="expert")}
    modules = dict(policy.named_modules())
    assert all(modules[p] in set(policy.model.paligemma_with_expert.paligemma.modules()) for p in language)
    assert all(modules[p] in set(policy.model.paligemma_with_expert.gemma_expert.modules()) for p in expert)


def test_token_kinds_are_lerobots_order_images_per_camera_language_state_actions_and_padding(policy):
    batch = _batch(words=4)
    with paligemma.capture(policy) as maps:
        _sample(policy, batch)
    expected = _lerobots_kinds(policy, batch)
    prefix = len(CAMERAS) * IMAGE_TOKENS + TEXT
    assert expected[prefix - 2:prefix] == [("padding", None)] * 2
    assert [k for k, _ in expected[prefix:]].count("state") == (0 if _is_pi05(policy) else 1)
    for m in maps.select(phase="denoise"):
        assert _kinds(m.keys) == expected and _kinds(m.queries) == expected[prefix:]
    for m in maps.select(tower="language"):
        assert _kinds(m.keys) == expected[:prefix] and _kinds(m.queries) == expected[:prefix]
    assert maps.layouts["expert"].find("image", camera=CAMERAS[1])[0].grid == (4, 4)


def test_every_map_is_zero_exactly_where_lerobots_own_masks_hide_a_key(policy):
    batch = _batch(words=3)
    with paligemma.capture(policy) as maps:
        _sample(policy, batch)
    pad, prefix, suffix = _lerobot_masks(policy, batch)
    assert _kinds(maps.layouts["expert"]) == _lerobots_kinds(policy, batch)
    for m in maps.select(tower="language"):
        weights = np.asarray(m.array)[0][:, pad]  # real queries (a padded query's row is blanked to 0)
        assert np.array_equal(weights != 0, np.broadcast_to(prefix[pad], weights.shape)), m.path
        assert not np.asarray(m.array)[0][:, ~pad].any()
    for m in maps.select(tower="expert"):
        weights = np.asarray(m.array)[0]
        assert np.array_equal(weights != 0, np.broadcast_to(suffix, weights.shape)), (m.step, m.path)
        np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-6)


def test_fast_mode_leaves_actions_bit_identical_and_eager_mode_moves_them_by_float32_rounding_only(policy):
    plain = _sample(policy)
    with paligemma.capture(policy, mode="fast") as fast:
        fast_actions = _sample(policy)
    with paligemma.capture(policy) as eager:
        eager_actions = _sample(policy)
    assert torch.equal(fast_actions, plain)
    # Eager mode runs SigLIP on eager attention instead of sdpa (LeRobot already runs its Gemmas on eager):
    # the same arithmetic summed in another order, so the actions (of order 1) move by float32 rounding.
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(eager_actions, plain, rtol=0, atol=1e-5)
    assert [(m.tower, m.layer, m.step, m.phase, m.camera) for m in fast] == \
        [(m.tower, m.layer, m.step, m.phase, m.camera) for m in eager]
    assert len(fast) == len(CAMERAS) * LAYERS + LAYERS + STEPS * LAYERS
    assert _kinds(fast.layouts["expert"]) == _lerobots_kinds(policy, _batch())
    for f, e in zip(fast, eager):
        assert f.keys == e.keys and f.queries == e.queries
        np.testing.assert_allclose(np.asarray(f.array), np.asarray(e.array), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_activating_before_the_policy_is_built_gives_the_same_labels(mode):
    policy_after = _build(False)
    with paligemma.capture(policy_after, mode=mode) as after:
        _sample(policy_after)
    paligemma.activate(mode=mode)
    try:
        policy = _build(False)
        _sample(policy)
        before = paligemma.collect()
    finally:
        paligemma.deactivate()
    assert [(m.tower, m.layer, m.step, m.phase, m.camera, m.path) for m in before] == \
        [(m.tower, m.layer, m.step, m.phase, m.camera, m.path) for m in after]
    assert all(b.keys == a.keys for b, a in zip(before, after))
    assert _kinds(before.layouts["expert"]) == _lerobots_kinds(policy, _batch())
    np.testing.assert_allclose(np.asarray(before[-1].array), np.asarray(after[-1].array), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "fast"])
@pytest.mark.parametrize("built", ["before", "after"])
def test_a_tower_selection_keeps_the_expert_whether_activated_before_or_after_the_policy_is_built(built, mode):
    # Activated without a model, the adapter sees the policy in parts (its expert is built, and its decoder
    # layers first called, before anything holds them beside the PaliGemma): the selection must still find them.
    policy = _build(False) if built == "after" else None
    paligemma.activate(mode=mode, towers=["expert"], layers=[0])
    try:
        policy = policy or _build(False)
        _sample(policy)
        maps = paligemma.collect()
    finally:
        paligemma.deactivate()
    assert [(m.tower, m.layer, m.step) for m in maps] == [("expert", 0, s) for s in range(1, STEPS + 1)]
    assert _kinds(maps[0].keys) == _lerobots_kinds(policy, _batch())


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_selection_keywords_keep_the_head_mean_of_the_last_expert_layers_suffix_rows(policy, mode):
    with paligemma.capture(policy) as whole:
        _sample(policy)
    with paligemma.capture(policy, mode=mode, towers=["expert"], queries="action", heads="mean", layers=[-1]) as maps:
        _sample(policy)
    assert [(m.tower, m.layer, m.step) for m in maps] == [("expert", LAYERS - 1, s) for s in range(1, STEPS + 1)]
    state = 0 if _is_pi05(policy) else 1
    full = whole.select(tower="expert", layer=LAYERS - 1)
    for m, f in zip(maps, full):
        # queries='action': the rows each denoise step adds, Pi0's state token with the action tokens
        assert m.array.shape == (1, 1, state + CHUNK, f.array.shape[-1]) and m.queries == f.queries
        assert _kinds(m.keys) == _lerobots_kinds(policy, _batch())
        np.testing.assert_allclose(np.asarray(m.array), np.asarray(f.array).mean(1, keepdims=True), rtol=0, atol=1e-6)


def test_cameras_and_state_tokens_given_to_capture_override_what_the_policy_says(policy):
    with paligemma.capture(policy) as told:
        _sample(policy)
    with paligemma.capture(policy, cameras=["front", "hand"], state_tokens=0) as given:
        _sample(policy)
    assert [m.camera for m in told.select(tower="vision", layer=0)] == list(CAMERAS)
    assert [m.camera for m in given.select(tower="vision", layer=0)] == ["front", "hand"]
    assert len(told.layouts["expert"].find("state")) == (0 if _is_pi05(policy) else 1)
    assert not given.layouts["expert"].find("state")
    with pytest.raises(GetLocalError, match="names 1 cameras but each sequence holds 2 images"):
        with paligemma.capture(policy, cameras=["front"]):
            _sample(policy)


def test_record_over_select_action_writes_maps_only_for_the_calls_that_ran_the_model(policy, tmp_path):
    policy.reset()
    run = tmp_path / "run"
    paligemma.activate(policy)
    try:
        with getlocal.record(run, collect=lambda: paligemma.collect(policy)) as rec:
            for t in range(2 * CHUNK + 1):
                policy.select_action(_batch(seed=t))
                rec.step(info={"t": t})
    finally:
        paligemma.deactivate()
    recording = getlocal.load(run)
    assert len(recording) == 2 * CHUNK + 1
    ran = [step.step for step in recording if len(step.maps)]
    assert ran == [0, CHUNK, 2 * CHUNK]  # the action queue holds CHUNK actions: the model runs every CHUNK calls
    for number in ran:
        maps = recording[number].maps
        assert maps.steps == [(0, "prefix")] + [(s, "denoise") for s in range(1, STEPS + 1)]
        assert [m.camera for m in maps.select(tower="vision", layer=0)] == list(CAMERAS)


def test_the_readmes_lerobot_pi0_lines_run_as_written(policy):
    import os
    import re

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    blocks = re.findall(r"^```py\n(.*?)^```", open(readme, encoding="utf-8").read(), flags=re.S | re.M)
    block = next(b for b in blocks if "PI0Policy or PI05Policy" in b)
    policy.reset()
    namespace = {"policy": policy, "batch": _batch()}
    exec(compile(block, "README.md, LeRobot's Pi0 block", "exec"), namespace)
    maps = namespace["maps"]
    assert namespace["action"].shape == (1, 3) and not paligemma.is_active()
    assert maps.steps == [(0, "prefix")] + [(s, "denoise") for s in range(1, STEPS + 1)]
    assert [m.camera for m in maps.select(tower="vision", layer=0)] == list(CAMERAS)
    assert _kinds(maps.layouts["expert"]) == _lerobots_kinds(policy, _batch())


def test_collect_refuses_the_training_forward_naming_the_inference_calls_and_the_loss_is_unchanged(policy):
    batch = _batch()
    batch["action"] = torch.randn(1, CHUNK, 3, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    plain, _ = policy.forward(batch)
    paligemma.activate(policy, mode="fast")
    try:
        torch.manual_seed(4)
        loss, _ = policy.forward(batch)  # the capture does not break the forward pass
        with pytest.raises(GetLocalError, match="training forward of LeRobot's PI05?Config policy.*select_action"):
            paligemma.collect()
    finally:
        paligemma.deactivate()
    assert torch.equal(loss, plain)
