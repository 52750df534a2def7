"""tiny.pi0 runs Pi0's masks (no lerobot needed): a bidirectional prefix, a state token blind to the actions,
Pi0.5's suffix; tests/test_adapter_lerobot.py proves the same masks equal LeRobot's own where lerobot is installed."""
import numpy as np
import pytest
from required import import_or_skip, skip_unless

torch = import_or_skip("paligemma", "torch")
transformers = import_or_skip("paligemma", "transformers")

from transformers.models.gemma import modeling_gemma  # noqa: E402

skip_unless("paligemma", hasattr(modeling_gemma, "eager_attention_forward") and hasattr(transformers, "PaliGemmaConfig"),
            f"tiny.pi0 is built on the PaliGemma adapter, which needs transformers >= 4.48; this is "
            f"{transformers.__version__}")

from getlocal.adapters import paligemma, tiny  # noqa: E402

HORIZON = 4


def _capture(model, cameras=2, lengths=None, state_tokens=1):
    images, ids, state = tiny.pi0_inputs(model, cameras=cameras, text_tokens=5, lengths=lengths)
    mask = None if lengths is None else (ids != 0).long()
    with paligemma.capture(model, cameras=["base", "wrist"][:cameras], state_tokens=state_tokens) as maps:
        actions = model.sample_actions(images, ids, state, horizon=HORIZON, steps=2, attention_mask=mask)
    return maps, actions


def test_pi0_prefix_is_bidirectional_every_real_token_sees_every_other():
    maps, _ = _capture(tiny.pi0())
    for m in maps.select(tower="language", phase="prefix"):
        assert np.all(np.asarray(m.array) > 0), m.path  # no zero above the diagonal: nothing causal


def test_pi0_state_token_gives_exactly_nothing_to_the_action_tokens():
    maps, _ = _capture(tiny.pi0())
    for m in maps.select(tower="expert", phase="denoise"):
        state_row = np.asarray(m.between("state", "action"))
        assert state_row.size and np.all(state_row == 0), m.path
        assert np.all(np.asarray(m.between("action", "state")) > 0)


def test_pi0_padded_prompt_tokens_get_no_attention_in_the_prefix_or_the_suffix():
    maps, _ = _capture(tiny.pi0(), lengths=[3])
    prefix = maps.select(tower="language", phase="prefix")[0]
    keys = prefix.array.shape[-1]
    padded = [keys - 2, keys - 1]  # the prompt's last two of 5 tokens
    for m in list(maps.select(tower="language", phase="prefix")) + list(maps.select(tower="expert", phase="denoise")):
        a = np.asarray(m.array)
        real_rows = a[..., : keys - 2, :] if m.tower == "language" else a
        assert np.all(real_rows[..., padded] == 0), m.path


def test_pi05_suffix_holds_the_action_tokens_only():
    maps, _ = _capture(tiny.pi0(pi05=True), state_tokens=0)
    m = maps.select(tower="expert", phase="denoise")[-1]
    assert m.shape[-2] == HORIZON and m.queries.find("state") == []
    assert np.all(np.asarray(m.array) > 0)  # the actions see the whole prefix and each other


@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_pi0_actions_agree_on_eager_and_sdpa_since_both_run_the_same_4d_mask(pi05):
    images, ids, state = tiny.pi0_inputs(tiny.pi0(), cameras=2)
    eager = tiny.pi0(pi05=pi05).sample_actions(images, ids, state, horizon=HORIZON, steps=2)
    sdpa = tiny.pi0(pi05=pi05, attn_implementation=None).sample_actions(images, ids, state, horizon=HORIZON, steps=2)
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=1e-6)
