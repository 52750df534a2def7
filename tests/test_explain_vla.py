"""Where an OpenVLA action token looks: relevance end to end on the tiny OpenVLA, per patch, graph freed."""
import gc
import weakref

import numpy as np
import pytest
import torch

from getlocal import GetLocalError, explain

pytest.importorskip("transformers")
pytest.importorskip("timm")

from getlocal.adapters import openvla, tiny  # noqa: E402


@pytest.fixture
def vla(adapters_off):
    return tiny.openvla()


def _teacher_forced(vla, token: int, **options):
    """One forward over the prompt plus the action tokens before ``token``: its last row predicts that token."""
    pixels, ids = tiny.openvla_inputs(vla)
    actions = tiny.generate(vla, pixels, ids, max_new_tokens=3)
    with openvla.capture(vla, convert="raw", **options) as maps:
        logits = vla(pixels, torch.cat([ids, actions[:, :token]], 1)).logits
    return logits[0, -1].log_softmax(-1)[actions[0, token]], maps


@pytest.mark.parametrize("method", explain.METHODS)
def test_relevance_of_an_action_token_gives_one_share_per_patch_and_frees_the_graph(vla, method):
    target, maps = _teacher_forced(vla, token=2)
    llm = maps.select(tower="llm")
    alive = [weakref.ref(m.array) for m in maps]
    r = explain.relevance(target, llm, method=method, rows=-1)
    assert (r.tower, r.phase, r.layers) == ("llm", "prefill", [0, 1])
    grid = r.grid()
    assert grid.shape == vla.vision_backbone.featurizer.patch_embed.grid_size  # one value per patch (one camera)
    assert np.isfinite(grid).all() and (grid >= 0).all()
    assert np.isclose(r.values[0, 0].sum(), 1.0)
    assert np.isclose(r.share("image"), grid.sum())
    assert np.isclose(r.even[0, 0], 1 / len(maps.layouts["llm"]))  # the last row reaches every key (causal)
    with pytest.raises(RuntimeError, match="second time"):
        target.backward()
    del maps, llm, target
    gc.collect()
    assert all(ref() is None for ref in alive)
    assert all(not isinstance(v, torch.Tensor) for v in vars(r).values())


def test_the_same_target_explains_a_vision_tower_up_to_the_block_the_projector_reads(vla):
    target, maps = _teacher_forced(vla, token=0)
    # Prismatic reads the second-to-last block's patches: the last block does not reach the action
    dinov2 = maps.select(tower="dinov2", layer=[0, 1])
    r = explain.relevance(target, dinov2, rows="image")
    assert r.values.shape == (1, 4, 9)
    assert r.grid().shape == (2, 2)


def test_the_rows_of_a_rollout_over_the_llm_prompt_reach_the_image(vla):
    _, maps = _teacher_forced(vla, token=1)
    r = explain.rollout(maps.select(tower="llm"), rows=-1, exclude="bos")
    assert r.excluded == (0,)
    assert np.isclose(r.values[0, 0].sum(), 1.0) and r.values[0, 0, 0] == 0
    assert r.grid().shape == (2, 2)


def test_fast_mode_maps_are_refused_for_gradients_with_the_way_out(vla):
    pixels, ids = tiny.openvla_inputs(vla)
    with openvla.capture(vla, mode="fast", convert="raw", towers="llm") as maps:
        logits = vla(pixels, ids).logits
    with pytest.raises(GetLocalError, match="mode='eager'"):
        explain.relevance(logits[0, -1, 5], maps)


def test_maps_kept_by_a_selection_keyword_are_refused_for_gradients_naming_maps_select(vla):
    pixels, ids = tiny.openvla_inputs(vla)
    with openvla.capture(vla, convert="raw", towers="llm") as maps:
        logits = vla(pixels, ids).logits
    with pytest.raises(GetLocalError, match=r"maps.select\(\)"):
        explain.relevance(logits[0, -1, 5], maps)


def test_a_prefill_and_its_decode_steps_roll_out_as_one_teacher_forced_pass(vla):
    pixels, ids = tiny.openvla_inputs(vla)
    with openvla.capture(vla) as generated:  # the KV-cached generate: [L, L], then [1, L + 1], [1, L + 2]
        actions = tiny.generate(vla, pixels, ids, max_new_tokens=3)
    cached = explain.rollout(generated.select(tower="llm"), rows="generated")
    with openvla.capture(vla) as forced, torch.no_grad():  # one pass over the prompt and action tokens 0, 1
        vla(pixels, torch.cat([ids, actions[:, :2]], 1))
    one_pass = explain.rollout(forced.select(tower="llm"), rows=[-2, -1])
    assert cached.values.shape == one_pass.values.shape == (1, 2, len(forced.layouts["llm"]))
    assert np.abs(cached.values - one_pass.values).max() < 1e-6
    assert (cached.tower, cached.step, cached.phase) == ("llm", 2, "prefill+decode")


@pytest.fixture
def pi0(adapters_off):
    return tiny.pi0()


def _pi0_run(pi0, steps):
    from getlocal.adapters import paligemma

    images, ids, state = tiny.pi0_inputs(pi0, cameras=2)
    with paligemma.capture(pi0, convert="raw", cameras=["base", "wrist"], state_tokens=1) as maps:
        # sample_actions is decorated with torch.no_grad (as openpi's is): call the function under it
        actions = type(pi0).sample_actions.__wrapped__(pi0, images, ids, state, horizon=4, steps=steps)
    return actions, maps


def test_pi0_relevance_of_an_action_over_its_prefix_and_denoise_step_gives_each_camera_its_grid(pi0):
    actions, maps = _pi0_run(pi0, steps=1)
    alive = [weakref.ref(m.array) for m in maps]
    target = actions[0, 0, 0]  # the first action's first dimension
    r = explain.relevance(target, maps.select(tower=["language", "expert"]), rows="action")
    assert (r.tower, r.phase, r.layers) == ("language+expert", "prefix+denoise", [0, 1])
    assert r.values.shape == (1, 4, len(maps.layouts["expert"]))
    for camera in ("base", "wrist"):
        grid = r.grid(camera)
        assert grid.shape == (2, 2) and np.isfinite(grid).all() and (grid > 0).all()
    assert np.allclose(r.values.sum(-1), 1.0)
    with pytest.raises(RuntimeError, match="second time"):
        target.backward()
    del maps, actions, target
    gc.collect()
    assert all(ref() is None for ref in alive)


def test_pi0_denoise_steps_that_do_not_continue_one_sequence_are_refused(pi0):
    _, maps = _pi0_run(pi0, steps=2)
    with pytest.raises(GetLocalError, match="one denoise step"):
        explain.rollout(maps.select(tower=["language", "expert"]))
    with pytest.raises(GetLocalError, match=r"m.camera == 'base'"):
        explain.rollout(maps.select(tower="vision"))
    base = [m for m in maps.select(tower="vision") if m.camera == "base"]
    assert explain.rollout(base, rows="image").grid().shape == (2, 2)


def test_an_action_token_composed_through_the_projector_lands_on_the_vision_towers_patches(vla):
    target, maps = _teacher_forced(vla, token=1)
    top = explain.relevance(target, maps.select(tower="llm"), rows=-1)
    for tower in ("dinov2", "siglip"):
        bottom = explain.rollout(maps.select(tower=tower, layer=[0, 1]), rows="image")  # the blocks Prismatic reads
        r = explain.compose(top, bottom)
        assert r.keys == maps.layouts[tower] and r.tower == f"llm>{tower}"
        assert r.grid().shape == (2, 2) and np.isclose(r.values[0, 0].sum(), 1.0)
        image = top.values[0, 0, 1:5]  # the LLM's image tokens 1:5 are the projector's outputs of patches 0..3
        expected = image @ bottom.values[0]
        assert np.allclose(r.values[0, 0], expected / expected.sum())


def test_compose_needs_one_row_per_image_token_below():
    from getlocal.maps import Segment, TokenLayout

    llm = TokenLayout([Segment("bos", 0, 1), Segment("image", 1, 3, grid=(1, 2))])
    vis = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 3, grid=(1, 2))])
    top = explain.rollout([np.full((1, 1, 3, 3), 1 / 3)], rows=-1, keys=llm)
    with pytest.raises(GetLocalError, match="rows='image'"):
        explain.compose(top, explain.rollout([np.full((1, 1, 3, 3), 1 / 3)], rows="cls", keys=vis))


def test_one_pi0_action_explains_each_camera_of_the_vision_tower_and_the_joint_chain_in_one_call(pi0):
    actions, maps = _pi0_run(pi0, steps=1)
    vision = maps.select(tower="vision")
    parts = {camera: [m for m in vision if m.camera == camera] for camera in ("base", "wrist")}
    parts["policy"] = maps.select(tower=["language", "expert"])
    target = actions[0, 0, 0]
    out = explain.relevance(target, parts, rows={"base": "image", "wrist": "image", "policy": "action"})
    assert sorted(out) == ["base", "policy", "wrist"]
    for camera in ("base", "wrist"):
        assert out[camera].grid().shape == (2, 2) and np.isclose(out[camera].values.sum(-1), 1).all()
        below = explain.compose(out["policy"], out[camera], camera=camera)  # SigLIP's patches of that camera
        assert below.grid().shape == (2, 2) and np.isfinite(below.grid()).all()
    with pytest.raises(RuntimeError, match="second time"):
        target.backward()  # one gradient call for all three: the graph is gone


def test_a_dict_of_rows_needs_a_dict_of_maps(pi0):
    actions, maps = _pi0_run(pi0, steps=1)
    with pytest.raises(GetLocalError, match="needs maps as a dict"):
        explain.relevance(actions[0, 0, 0], maps.select(tower=["language", "expert"]), rows={"x": "action"})
