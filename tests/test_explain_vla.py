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
