"""LeRobot's own SmolVLA code (lerobot 0.4.4, .ci/pins/lerobot.txt) under get_local: a tiny policy, offline.

The policy is LeRobot's ``SmolVLAPolicy`` built from a local SmolVLM config
directory (``vlm_model_name=<dir>``, ``load_vlm_weights=False``): random
weights, no hub. SmolVLA computes its attention in
``SmolVLMWithExpertModel.eager_attention_forward``, whose post-softmax
``probs`` is a local that it never returns: these tests prove that get_local
takes every one of those maps, that they are the maps LeRobot's own masks
allow, and that capturing changes no action. The tests skip where lerobot is
not installed and fail in the lerobot leg of tests/matrix.sh (required).
"""
import pytest
import torch

from getlocal import get_local
from getlocal.adapters import tiny
from required import import_or_skip

smolvla = import_or_skip("lerobot", "lerobot.policies.smolvla.modeling_smolvla")
expert = import_or_skip("lerobot", "lerobot.policies.smolvla.smolvlm_with_expert")

LAYERS, STEPS, CHUNK, EVERY = 4, 3, 5, 2  # cross-attention layers between self-attention ones (every 2nd)
CAMERAS = ("observation.images.top", "observation.images.wrist")
TEXT = 6  # tokenizer_max_length: the language tokens, padded


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """LeRobot's SmolVLAPolicy, tiny and random, from a local SmolVLM config directory (``tiny.smolvla``)."""
    return tiny.smolvla(tmp_path_factory.mktemp("smolvlm"), CAMERAS, layers=LAYERS, every=EVERY, steps=STEPS,
                        chunk=CHUNK, text=TEXT)


def _noise(seed=1):
    return torch.randn(1, CHUNK, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def probs():
    """get_local on SmolVLA's own attention function, its ``probs`` local; removed afterwards."""
    func = expert.SmolVLMWithExpertModel.eager_attention_forward
    get_local("probs")(func)
    key = get_local.key_of(func)
    try:
        with get_local.capture(convert="cpu") as cache:
            yield lambda: cache.get(key, [])
    finally:
        get_local.remove(func)


def _prefix(policy, batch):
    """LeRobot's own prefix: its pad mask and its 2-D attention mask (``make_att_2d_masks``)."""
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    _, pad, att = policy.model.embed_prefix(images, img_masks, batch["observation.language.tokens"],
                                             batch["observation.language.attention_mask"], state=state)
    return pad, smolvla.make_att_2d_masks(pad, att)


def test_smolvla_probs_are_taken_once_per_layer_in_the_prefix_pass_and_in_every_denoise_step(policy, probs):
    with torch.no_grad():
        policy.predict_action_chunk(tiny.smolvla_inputs(policy), noise=_noise())
    maps = probs()
    pad, _ = _prefix(policy, tiny.smolvla_inputs(policy))
    prefix = pad.shape[1]
    assert len(maps) == LAYERS * (1 + STEPS)
    # The prefix pass: every layer attends over the prefix only.
    assert [tuple(m.shape[-2:]) for m in maps[:LAYERS]] == [(prefix, prefix)] * LAYERS
    # Each denoise step: self-attention layers (every EVERY-th) see prefix + actions, cross-attention layers the prefix.
    for step in range(STEPS):
        calls = maps[LAYERS * (1 + step):LAYERS * (2 + step)]
        keys = [m.shape[-1] for m in calls]
        assert keys == [prefix + CHUNK if layer % EVERY == 0 else prefix for layer in range(LAYERS)], (step, keys)
        assert all(m.shape[-2] == CHUNK for m in calls)


def test_smolvla_prefix_maps_are_zero_exactly_where_lerobots_mask_hides_a_key(policy, probs):
    batch = tiny.smolvla_inputs(policy, words=3)
    with torch.no_grad():
        policy.predict_action_chunk(batch, noise=_noise())
    pad, mask = _prefix(policy, batch)
    rows = pad[0]  # queries that are real tokens (a padded query's row is uniform over nothing)
    for m in probs()[:LAYERS]:
        weights = m[0][:, rows]  # [heads, real queries, keys]
        hidden = ~mask[0][rows]
        assert torch.all(weights[:, hidden] == 0)
        assert torch.all(weights[:, ~hidden] > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    # LeRobot's own order: the state token is the last real token, and no image or language token sees it.
    state = int(pad[0].nonzero().max())
    assert not mask[0][:state, state].any() and mask[0][state, :state][pad[0][:state]].all()


def test_smolvla_denoise_maps_never_look_at_padded_language_tokens(policy, probs):
    batch = tiny.smolvla_inputs(policy, words=3)
    with torch.no_grad():
        policy.predict_action_chunk(batch, noise=_noise())
    pad, _ = _prefix(policy, batch)
    for m in probs()[LAYERS:]:
        prefix_part = m[0][..., :pad.shape[1]]
        assert torch.all(prefix_part[..., ~pad[0]] == 0)
        assert torch.all(prefix_part[..., pad[0]] > 0)


def test_smolvla_actions_are_identical_with_and_without_capture(policy):
    with torch.no_grad():
        plain = policy.predict_action_chunk(tiny.smolvla_inputs(policy), noise=_noise())
    func = expert.SmolVLMWithExpertModel.eager_attention_forward
    get_local("probs")(func)
    try:
        with get_local.capture(), torch.no_grad():
            captured = policy.predict_action_chunk(tiny.smolvla_inputs(policy), noise=_noise())
            assert len(get_local.cache[get_local.key_of(func)]) == LAYERS * (1 + STEPS)
    finally:
        get_local.remove(func)
    assert torch.equal(plain, captured)


def test_select_action_runs_the_model_only_when_its_action_queue_is_empty(policy, probs):
    policy.reset()
    counts = []
    for t in range(CHUNK + 2):
        with torch.no_grad():
            policy.select_action(tiny.smolvla_inputs(policy, seed=t), noise=_noise(seed=t))
        counts.append(len(probs()))
    per_run = LAYERS * (1 + STEPS)
    assert counts == [per_run] * CHUNK + [2 * per_run] * 2


# -- Pi0 / Pi0.5: tiny.pi0's masks are LeRobot's ---------------------------------------------------
# lerobot 0.4.x cannot build PI0Pytorch on a transformers from PyPI (it needs LeRobot's own branch), so its
# sample_actions runs here on a PI0Pytorch/PI05Pytorch whose Gemmas are replaced by a recorder: every mask below
# is built by LeRobot's own embed_prefix, embed_suffix, make_att_2d_masks, sample_actions and denoise_step.


class _Gemmas(torch.nn.Module):
    """Stands in for LeRobot's PaliGemmaWithExpertModel: embeds to zeros and records the masks it is handed."""

    def __init__(self, width, image_tokens):
        super().__init__()
        from types import SimpleNamespace

        self.width, self.image_tokens, self.masks = width, image_tokens, []
        language = SimpleNamespace(config=SimpleNamespace())  # where sample_actions sets eager: 0.4's path, 0.5's
        self.paligemma = SimpleNamespace(language_model=language, model=SimpleNamespace(language_model=language))
        self.gemma_expert = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace()))

    def embed_image(self, image):
        return torch.zeros(image.shape[0], self.image_tokens, self.width)

    def embed_language_tokens(self, tokens):
        return torch.zeros(*tokens.shape, self.width)

    def forward(self, attention_mask=None, inputs_embeds=None, **kwargs):
        self.masks.append(attention_mask[:, 0] == 0)  # LeRobot's 4-D additive mask: 0 where a key is seen
        suffix = inputs_embeds[1]
        return [None, None if suffix is None else torch.zeros_like(suffix)], ()  # an empty cache (0.5 copies it)


def _lerobot_masks(pi05, cameras, image_tokens, lang_mask, horizon, steps=2):
    """The masks LeRobot's own Pi0 (or Pi0.5) sample_actions hands its Gemmas: prefix, then one per step."""
    module = "pi05" if pi05 else "pi0"
    modeling = import_or_skip("lerobot", f"lerobot.policies.{module}.modeling_{module}")
    configuration = import_or_skip("lerobot", f"lerobot.policies.{module}.configuration_{module}")
    cls = modeling.PI05Pytorch if pi05 else modeling.PI0Pytorch
    config = (configuration.PI05Config if pi05 else configuration.PI0Config)(chunk_size=horizon, n_action_steps=horizon,
                                                                             max_state_dim=4, max_action_dim=4)
    width = 8
    model = cls.__new__(cls)
    torch.nn.Module.__init__(model)
    model.config, model.rtc_processor, model.gradient_checkpointing_enabled = config, None, False
    model.paligemma_with_expert = _Gemmas(width, image_tokens)
    model.action_in_proj, model.action_out_proj = torch.nn.Linear(4, width), torch.nn.Linear(width, 4)
    if pi05:
        model.time_mlp_in, model.time_mlp_out = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
    else:
        model.state_proj = torch.nn.Linear(4, width)
        model.action_time_mlp_in, model.action_time_mlp_out = torch.nn.Linear(2 * width, width), torch.nn.Linear(width, width)
    images = [torch.zeros(lang_mask.shape[0], 3, 8, 8) for _ in range(cameras)]
    img_masks = [torch.ones(lang_mask.shape[0], dtype=torch.bool) for _ in range(cameras)]
    tokens = torch.zeros(lang_mask.shape, dtype=torch.long)
    state = () if pi05 else (torch.zeros(lang_mask.shape[0], 4),)
    model.sample_actions(images, img_masks, tokens, lang_mask, *state, num_steps=steps)
    return model.paligemma_with_expert.masks


@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_tiny_pi0_masks_equal_lerobots_own_on_the_same_prefix(pi05):
    from getlocal.adapters import tiny

    cameras, image_tokens, horizon = 2, 4, 5
    lang_mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])  # one padded prompt, one full
    prefix, *suffixes = _lerobot_masks(pi05, cameras, image_tokens, lang_mask, horizon)
    pad = torch.cat([torch.ones(2, cameras * image_tokens, dtype=torch.bool), lang_mask], dim=1)
    ours_prefix, ours_suffix = tiny.pi0(pi05=pi05).masks(pad, horizon)
    assert torch.equal(ours_prefix, prefix)
    assert len(suffixes) == 2 and all(torch.equal(ours_suffix, s) for s in suffixes)
    # What that means, read off LeRobot's masks: a bidirectional prefix; Pi0's state token sees no action.
    real = pad[1]
    assert prefix[1][real][:, real].all()
    if not pi05:
        assert not suffixes[0][:, 0, pad.shape[1] + 1:].any() and suffixes[0][:, 1:, pad.shape[1]].all()
