"""getlocal.adapters.smolvla on LeRobot's own SmolVLA code: a tiny random ``SmolVLAPolicy``, built offline.

The policy is ``getlocal.adapters.tiny.smolvla`` (LeRobot's ``SmolVLAPolicy``
from a local SmolVLM config directory, random weights). Labels are checked
against what LeRobot itself builds: ``embed_prefix``'s pad mask and token
order, ``make_att_2d_masks``, the layer structure (``get_model_layers``,
``self_attn_every_n_layers``). Runs on lerobot 0.4.4 (.ci/pins/lerobot.txt)
and 0.5+; skips where lerobot is not installed (and fails in the lerobot leg
of tests/matrix.sh, which requires it).
"""
import dataclasses
import sys

import pytest
import torch

import getlocal
from getlocal import GetLocalError, get_local
from getlocal.adapters import smolvla, tiny
from required import import_or_skip


LAYERS, STEPS, CHUNK, TEXT = 4, 3, 5, 6
CAMERAS = ("observation.images.top", "observation.images.wrist")


@pytest.fixture(scope="module")
def lerobot():
    """LeRobot's SmolVLA modules (skips the test without lerobot, fails it in the lerobot leg)."""
    return (import_or_skip("smolvla", "lerobot.policies.smolvla.modeling_smolvla"),
            import_or_skip("smolvla", "lerobot.policies.smolvla.smolvlm_with_expert"))


@pytest.fixture(scope="module")
def policy(lerobot, tmp_path_factory):
    return tiny.smolvla(tmp_path_factory.mktemp("smolvlm"), CAMERAS, layers=LAYERS, every=2, steps=STEPS,
                        chunk=CHUNK, text=TEXT)


@pytest.fixture(autouse=True)
def _clean():
    yield
    smolvla.deactivate()
    get_local.clear()


def _noise(seed=1):
    return torch.randn(1, CHUNK, 8, generator=torch.Generator().manual_seed(seed))


def _lerobot_prefix(policy, batch):
    """LeRobot's own prefix pad mask and 2-D mask for ``batch``."""
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    _, pad, att = policy.model.embed_prefix(images, img_masks, batch["observation.language.tokens"],
                                             batch["observation.language.attention_mask"], state=state)
    modeling = sys.modules["lerobot.policies.smolvla.modeling_smolvla"]  # imported by the policy fixture
    return pad[0], modeling.make_att_2d_masks(pad, att)[0]


def _capture(policy, batch, mode="eager", **kw):
    with smolvla.capture(policy, mode=mode, **kw) as maps:
        actions = policy.predict_action_chunk(batch, noise=_noise())
    return maps, actions


def test_prefix_tokens_are_labelled_in_lerobots_order_with_its_image_keys_and_pad_mask(policy):
    batch = tiny.smolvla_inputs(policy, words=3)
    maps, _ = _capture(policy, batch)
    pad, mask = _lerobot_prefix(policy, batch)
    prefix = maps.select(tower="language")
    assert [m.layer for m in prefix] == list(range(LAYERS)) and {m.phase for m in prefix} == {"prefix"}
    keys = prefix[0].keys
    assert len(keys) == len(pad)
    per_image = 4  # 16 patches of the vision encoder, pixel-shuffled by the connector (scale_factor 2)
    for i, camera in enumerate(CAMERAS):
        assert keys.image(camera) == slice(i * per_image, (i + 1) * per_image)
    assert keys.indices("padding").tolist() == (~pad).nonzero()[:, 0].tolist()  # LeRobot's pad mask, exactly
    state = int(pad.nonzero().max())  # the last real token: LeRobot's state token
    assert keys.indices("state").tolist() == [state]
    assert keys.indices("text").tolist() == [p for p in range(2 * per_image, state) if pad[p]]
    # the state token is what LeRobot's mask hides from every image and language token
    assert not mask[:state, state].any()
    for m in prefix:
        weights = torch.as_tensor(m.array[0])[:, pad][:, :, ~pad]
        assert torch.all(weights == 0)  # no real query gives a padded key anything
    vision = maps.select(tower="vision")
    assert [m.camera for m in vision] == list(CAMERAS) and all(m.phase == "prefix" for m in vision)


def test_every_denoise_step_is_labelled_with_its_index_after_the_prefix(policy):
    maps, _ = _capture(policy, tiny.smolvla_inputs(policy))
    assert [(s, p) for s, p in sorted({(m.step, m.phase) for m in maps})] == \
        [(0, "prefix")] + [(s, "denoise") for s in range(1, STEPS + 1)]
    for step in range(1, STEPS + 1):
        calls = maps.select(step=step)
        assert [(m.tower, m.layer) for m in calls] == [("expert", layer) for layer in range(LAYERS)]
        assert all(m.queries.indices("action").tolist() == list(range(CHUNK)) for m in calls)
        assert all(m.path == f"model.vlm_with_expert.lm_expert.layers.{m.layer}.self_attn" for m in calls)
    assert [m.path for m in maps.select(tower="language")] == [
        f"model.vlm_with_expert.vlm.model.text_model.layers.{i}.self_attn" for i in range(LAYERS)]


@pytest.mark.parametrize("mode,every", [("cross_attn", 2), ("cross_attn", 3), ("self_attn", 2)])
def test_self_and_cross_attention_layers_follow_attention_mode_and_self_attn_every_n_layers(lerobot, tmp_path, mode,
                                                                                            every):
    policy = tiny.smolvla(tmp_path, CAMERAS, layers=LAYERS, every=every, steps=1, chunk=CHUNK, text=TEXT)
    if mode != "cross_attn":
        policy = lerobot[0].SmolVLAPolicy(dataclasses.replace(policy.config, attention_mode=mode)).eval()
    maps, _ = _capture(policy, tiny.smolvla_inputs(policy))
    prefix = len(maps.select(tower="language")[0].keys)
    assert len(maps.select(tower="expert")) == LAYERS
    for m in maps.select(tower="expert"):
        self_layer = mode == "self_attn" or m.layer % every == 0
        assert m.array.shape[-1] == (prefix + CHUNK if self_layer else prefix), (m.layer, m.array.shape)
        assert len(m.keys) == m.array.shape[-1]
        # a cross-attention layer sees the prefix only: no action token among its keys
        assert len(m.keys.indices("action")) == (CHUNK if self_layer else 0)
        assert m.queries.indices("action").tolist() == list(range(CHUNK))


def test_the_action_queries_of_a_cross_attention_layer_stay_actions_in_its_kind_shares(policy):
    maps, _ = _capture(policy, tiny.smolvla_inputs(policy, words=3))  # padded language tokens sit right before the state token
    for m in maps.select(tower="expert"):
        shares = m.kind_shares()
        assert list(shares.query_kinds) == ["action"], (m.layer, shares.query_kinds)
        assert shares.share("action", "padding").max() == 0


def test_fast_mode_leaves_the_actions_bit_identical_and_its_maps_are_lerobots_own_probs(lerobot, policy):
    batch = tiny.smolvla_inputs(policy, words=3)
    func = lerobot[1].SmolVLMWithExpertModel.eager_attention_forward
    get_local("probs")(func)
    try:
        with get_local.capture(convert="cpu") as cache, torch.no_grad():
            plain = policy.predict_action_chunk(batch, noise=_noise())
        raw = cache[get_local.key_of(func)]
    finally:
        get_local.remove(func)
    maps, fast = _capture(policy, batch, mode="fast")
    assert torch.equal(fast, plain)
    ours = [m for m in maps if m.tower != "vision"]
    assert len(ours) == len(raw) == LAYERS * (1 + STEPS)
    pad, _ = _lerobot_prefix(policy, batch)
    for m, r in zip(ours, raw):
        got = torch.as_tensor(m.array)
        if m.phase == "prefix":  # a padded query's row: LeRobot's uniform 1/K, labelled 0 (as every map here)
            r = r.clone()
            r[:, :, ~pad] = 0
        assert torch.equal(got, r)


def test_eager_mode_changes_the_actions_by_rounding_only_and_its_maps_equal_fast_modes(policy):
    batch = tiny.smolvla_inputs(policy, words=3)
    with torch.no_grad():
        plain = policy.predict_action_chunk(batch, noise=_noise())
    eager_maps, eager = _capture(policy, batch, mode="eager")
    fast_maps, _ = _capture(policy, batch, mode="fast")
    # eager mode runs the vision encoder's eager kernel where LeRobot built it on sdpa: float32 rounding
    torch.testing.assert_close(eager, plain, rtol=0, atol=1e-6)
    assert len(eager_maps) == len(fast_maps) == 2 + LAYERS * (1 + STEPS)
    for a, b in zip(eager_maps, fast_maps):
        assert (a.tower, a.layer, a.step, a.keys, a.queries) == (b.tower, b.layer, b.step, b.keys, b.queries)
        torch.testing.assert_close(torch.as_tensor(a.array), torch.as_tensor(b.array), rtol=0, atol=1e-6)


def test_activated_before_the_policy_is_built_it_captures_and_labels_the_same(lerobot, tmp_path):
    smolvla.activate()
    policy = tiny.smolvla(tmp_path, CAMERAS, layers=LAYERS, every=2, steps=STEPS, chunk=CHUNK, text=TEXT)
    policy.predict_action_chunk(tiny.smolvla_inputs(policy), noise=_noise())
    maps = smolvla.collect()
    smolvla.deactivate()
    assert [(m.tower, m.layer, m.step) for m in maps if m.tower != "vision"] == \
        [("language", i, 0) for i in range(LAYERS)] + [("expert", i, s) for s in range(1, STEPS + 1)
                                                       for i in range(LAYERS)]
    assert [m.camera for m in maps.select(tower="vision")] == list(CAMERAS)


def test_selection_keeps_the_chosen_towers_layers_and_action_rows(policy):
    maps, _ = _capture(policy, tiny.smolvla_inputs(policy), towers="expert", layers=-1, queries="action")
    assert [(m.tower, m.layer, m.step) for m in maps] == [("expert", LAYERS - 1, s) for s in range(1, STEPS + 1)]


def test_collect_refuses_the_training_forward_it_cannot_place(policy):
    batch = tiny.smolvla_inputs(policy)
    batch["action"] = torch.randn(1, CHUNK, 3)
    smolvla.activate(policy)
    with torch.no_grad():
        policy.forward(batch, noise=_noise(), time=torch.tensor([0.5]))
    with pytest.raises(GetLocalError, match="training forward"):
        smolvla.collect()


def test_record_over_select_action_writes_the_model_runs_only_labelled(policy, tmp_path):
    policy.reset()
    smolvla.activate(policy)
    with getlocal.record(tmp_path / "run", collect=smolvla.collect) as rec:
        for t in range(CHUNK + 2):
            with torch.no_grad():
                policy.select_action(tiny.smolvla_inputs(policy, seed=t), noise=_noise(seed=t))
            rec.step(info={"t": t})
    run = getlocal.load(tmp_path / "run")
    counts = [len(step.maps) for step in run]
    assert counts == [2 + LAYERS * (1 + STEPS)] + [0] * (CHUNK - 1) + [2 + LAYERS * (1 + STEPS)] + [0]
    for number in (0, CHUNK):
        maps = run[number].maps
        assert sorted({(m.step, m.phase) for m in maps}) == [(0, "prefix")] + [(s, "denoise")
                                                                              for s in range(1, STEPS + 1)]
        assert maps.select(tower="language")[0].keys.image(CAMERAS[1]) == slice(4, 8)


def test_each_function_is_the_registered_adapters_own_method():
    for function in ("activate", "capture", "collect", "deactivate", "is_active"):
        bound = getattr(smolvla, function)
        assert bound.__self__ is smolvla._ADAPTER and bound.__doc__
    with pytest.raises(TypeError, match="unexpected keyword argument 'state_tokens'"):
        smolvla.collect(state_tokens=1)  # SmolVLA's state token is in the prefix, labelled without being told


def test_without_lerobot_activate_and_the_demo_say_to_install_it(monkeypatch, tmp_path, capsys):
    # lerobot made unimportable in this process: what a user without it meets
    monkeypatch.setitem(sys.modules, "lerobot", None)
    for name in [n for n in sys.modules if n.startswith("lerobot.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(GetLocalError, match="pip install lerobot"):
        smolvla.activate()
    assert not smolvla.is_active()
    from getlocal.cli import main

    assert main(["demo", "--model", "smolvla-tiny", "--out", str(tmp_path / "demo"), "--quiet"]) == 2
    assert "pip install lerobot" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_the_smolvla_demo_writes_labelled_figures_and_a_capture_of_lerobots_policy(lerobot, tmp_path, capsys):
    from getlocal.cli import main

    assert main(["demo", "--model", "smolvla-tiny", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    maps = getlocal.load(tmp_path / "demo" / "capture")
    assert sorted({(m.step, m.phase) for m in maps}) == [(0, "prefix")] + [(s, "denoise") for s in range(1, 4)]
    assert [m.camera for m in maps.select(tower="vision")] == ["observation.images.top", "observation.images.wrist"]
    figures = {p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*.png")}
    assert {"expert/denoise_Lall_attn_vis_image-share.png", "language/prefix_L0_attn_vis_text-to-image.png"} <= figures
    assert (tmp_path / "demo" / "capture.html").exists()


def test_with_image_special_tokens_each_cameras_image_sits_between_them_as_lerobot_puts_it(lerobot, tmp_path):
    policy = tiny.smolvla(tmp_path, CAMERAS, layers=2, every=2, steps=1, chunk=CHUNK, text=TEXT)
    policy.config.add_image_special_tokens = policy.model.add_image_special_tokens = True
    batch = tiny.smolvla_inputs(policy, words=3)
    maps, _ = _capture(policy, batch)
    pad, _ = _lerobot_prefix(policy, batch)
    keys = maps.select(tower="language")[0].keys
    assert len(keys) == len(pad) == 2 * (2 + 4 + 1) + TEXT + 1  # per camera: fake+global image tokens, 4, fake
    assert keys.indices("context").tolist() == [0, 1, 6, 7, 8, 13]  # SmolVLM's image markers
    assert keys.image(CAMERAS[0]) == slice(2, 6) and keys.image(CAMERAS[1]) == slice(9, 13)
    assert keys.indices("padding").tolist() == (~pad).nonzero()[:, 0].tolist()
    assert keys.indices("state").tolist() == [len(pad) - 1]


def test_activated_after_the_policy_is_built_without_it_labels_the_same(policy):
    smolvla.activate()
    policy.predict_action_chunk(tiny.smolvla_inputs(policy), noise=_noise())
    maps = smolvla.collect()
    assert [(m.tower, m.layer, m.step) for m in maps if m.tower != "vision"] == \
        [("language", i, 0) for i in range(LAYERS)] + [("expert", i, s) for s in range(1, STEPS + 1)
                                                       for i in range(LAYERS)]
    assert [m.camera for m in maps.select(tower="vision")] == list(CAMERAS)
