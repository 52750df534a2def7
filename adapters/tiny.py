"""Small random-init models shaped like OpenVLA, PaliGemma, Pi0 and SmolVLA, built from the real library classes.

>>> import torch
>>> from getlocal.adapters import tiny
>>> model = tiny.openvla()                                  # doctest: +SKIP
>>> pixels, ids = tiny.openvla_inputs(model)                # doctest: +SKIP
>>> tiny.generate(model, pixels, ids, max_new_tokens=7).shape   # doctest: +SKIP
torch.Size([1, 7])

Used by the adapter tests and by ``python -m getlocal demo --model openvla-tiny|paligemma-tiny|smolvla-tiny``
(``smolvla`` builds LeRobot's own ``SmolVLAPolicy``: lerobot must be installed).
Nothing is downloaded: timm models come from ``timm.create_model(name, pretrained=False, ...)``
with small overrides, transformers models from their config classes. Module names mirror the
real models (``vision_backbone.featurizer.blocks.N.attn``, ``language_model.model.layers.N.self_attn``,
``paligemma...``, ``gemma_expert...``) so that labels look like the real ones.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from getlocal import GetLocalError

IMAGE_SIZE = 28  # 2x2 patches of 14 px: enough to check every grid and shape


# -- OpenVLA / Prismatic ---------------------------------------------------------


class _VisionBackbone(nn.Module):
    """Prismatic's DINOv2 + SigLIP backbone: two timm ViTs on the same image, features concatenated."""

    def __init__(self, featurizer: nn.Module, fused_featurizer: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.fused_featurizer = fused_featurizer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Prismatic takes the patch tokens of the second-to-last block of each ViT.
        feats = []
        for vit in (self.featurizer, self.fused_featurizer):
            feats.append(vit.get_intermediate_layers(pixel_values, n={len(vit.blocks) - 2})[0])
        return torch.cat(feats, dim=2)


class TinyOpenVLA(nn.Module):
    """OpenVLA's layout: ``vision_backbone`` -> ``projector`` -> ``language_model`` (LlamaForCausalLM)."""

    def __init__(self, vision_backbone: _VisionBackbone, projector: nn.Module, language_model: nn.Module):
        super().__init__()
        self.vision_backbone = vision_backbone
        self.projector = projector
        self.language_model = language_model

    def embed(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``[BOS, patches, text]`` embeddings, as Prismatic builds them."""
        patches = self.projector(self.vision_backbone(pixel_values))
        text = self.language_model.get_input_embeddings()(input_ids)
        return torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, **kwargs):
        return self.language_model(inputs_embeds=self.embed(pixel_values, input_ids), **kwargs)


def openvla(*, dim: int = 32, depth: int = 3, heads: int = 2, llm_layers: int = 2, image_size: int = IMAGE_SIZE,
            attn_implementation: Optional[str] = "eager", seed: int = 0) -> TinyOpenVLA:
    """A Prismatic-style model: DINOv2-with-registers and SigLIP timm ViTs, MLP projector, Llama.

    ``attn_implementation=None`` leaves transformers' default (sdpa), as a plain
    ``from_pretrained`` would.
    """
    import timm
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vit = dict(pretrained=False, num_classes=0, img_size=image_size, embed_dim=dim, depth=depth, num_heads=heads)
    dinov2 = timm.create_model("vit_large_patch14_reg4_dinov2", **vit)
    siglip = timm.create_model("vit_so400m_patch14_siglip_224", **vit)
    hidden = 2 * dim
    projector = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=llm_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    llm = LlamaForCausalLM(config)
    return TinyOpenVLA(_VisionBackbone(dinov2, siglip), projector, llm).eval()


def openvla_inputs(model: TinyOpenVLA, *, batch: int = 1, text_tokens: int = 5, seed: int = 0):
    """``(pixel_values, input_ids)``: a random image and ``[BOS, text...]`` token ids."""
    generator = torch.Generator().manual_seed(seed)
    size = model.vision_backbone.featurizer.patch_embed.img_size
    pixels = torch.randn(batch, 3, *size, generator=generator)
    ids = torch.randint(3, model.language_model.config.vocab_size, (batch, text_tokens), generator=generator)
    ids[:, 0] = model.language_model.config.bos_token_id
    return pixels, ids


@torch.no_grad()
def generate(model: TinyOpenVLA, pixel_values: torch.Tensor, input_ids: torch.Tensor, *,
             max_new_tokens: int = 7) -> torch.Tensor:
    """Greedy ``generate`` on the multimodal embeddings, as OpenVLA's ``predict_action`` does.

    Returns the new token ids ``[batch, max_new_tokens]``: one prefill pass plus
    ``max_new_tokens - 1`` decode passes of the language model.
    """
    embeds = model.embed(pixel_values, input_ids)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    out = model.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                        pad_token_id=0)
    return out[:, -max_new_tokens:]


# -- PaliGemma ------------------------------------------------------------------


def paligemma(*, text: str = "gemma", dim: int = 32, layers: int = 2, heads: int = 2, image_size: int = IMAGE_SIZE,
              attn_implementation: Optional[str] = "eager", sliding_window: Optional[int] = None,
              softcapping: Optional[float] = 50.0, seed: int = 0):
    """A 2-layer ``PaliGemmaForConditionalGeneration``: SigLIP vision tower, ``text`` = gemma/gemma2/gemma3 language model.

    gemma2 and gemma3 alternate a sliding-window layer and a global one (Gemma 3
    has 5 local layers per global one; two layers show both kinds);
    ``sliding_window`` (default: 64 for gemma2, longer than the tiny prompt; 5 for
    gemma3, shorter than it) and ``softcapping`` (gemma2's ``attn_logit_softcapping``;
    None: off) are theirs. gemma3's ``query_pre_attn_scalar`` differs from its head
    size, so its ``scaling`` is not the default one.
    """
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    patch = 14
    vision = dict(model_type="siglip_vision_model", hidden_size=dim, intermediate_size=2 * dim,
                  num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size, patch_size=patch,
                  projection_dim=dim, num_image_tokens=(image_size // patch) ** 2)
    language = dict(model_type="gemma3_text" if text == "gemma3" else text, hidden_size=dim,
                    intermediate_size=2 * dim, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=1, head_dim=dim // heads, vocab_size=128,
                    max_position_embeddings=256, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    local_global = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
    if text == "gemma2":
        language.update(attn_logit_softcapping=softcapping, final_logit_softcapping=30.0,
                        sliding_window=sliding_window or 64, query_pre_attn_scalar=dim // heads,
                        layer_types=local_global)
    elif text == "gemma3":
        language.update(sliding_window=sliding_window or 5, query_pre_attn_scalar=3 * dim // heads,
                        layer_types=local_global)
    config = PaliGemmaConfig(vision_config=vision, text_config=language, image_token_index=127, projection_dim=dim)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
        config.vision_config._attn_implementation = attn_implementation
        config.text_config._attn_implementation = attn_implementation
    return PaliGemmaForConditionalGeneration(config).eval()


def paligemma_inputs(model, *, images: int = 1, batch: int = 1, text_tokens: int = 4, seed: int = 0):
    """What PaliGemma's processor gives for a prompt without a suffix, as a dict for ``model(**inputs)``.

    ``input_ids`` [image tokens per image, BOS, text], ``pixel_values``,
    ``attention_mask`` (all ones) and ``token_type_ids`` (0: the whole sequence
    is the image+prompt prefix, which PaliGemma lets attend bidirectionally).
    With several images (cameras) per sequence, ``pixel_values`` holds them
    sample-major: sample 0 camera 0, sample 0 camera 1, ...
    """
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    size = config.vision_config.image_size
    per_image = (size // config.vision_config.patch_size) ** 2
    pixels = torch.randn(batch * images, 3, size, size, generator=generator)
    text = torch.randint(3, config.image_token_index, (batch, text_tokens), generator=generator)
    ids = torch.cat([torch.full((batch, images * per_image), config.image_token_index),
                     torch.full((batch, 1), config.text_config.bos_token_id), text], dim=1)
    return {"input_ids": ids, "pixel_values": pixels, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


# -- Pi0: PaliGemma with an action expert ------------------------------------------


def att_2d_masks(pad_masks: torch.Tensor, att_masks: torch.Tensor) -> torch.Tensor:
    """Pi0's visibility rule (big_vision's ``make_att_2d_masks``, as openpi and LeRobot write it).

    ``pad_masks [B, N]``: True for a real token; ``att_masks [B, N]``: 1 where a
    token starts a block that earlier tokens cannot see. A query sees the real
    keys whose cumulative ``att_masks`` is at most its own: all zeros is a
    bidirectional prefix. Returns ``[B, N, N]`` booleans (True: seen).
    """
    cumsum = torch.cumsum(att_masks, dim=1)
    seen = cumsum[:, None, :] <= cumsum[:, :, None]
    return seen & (pad_masks[:, None, :] & pad_masks[:, :, None])


def _additive(seen: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean ``[B, Q, K]`` visibility as the 4-D additive mask attention adds to its scores."""
    return torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)[:, None]


class TinyPi0(nn.Module):
    """openpi's Pi0 shape: ``paligemma`` (prefix: images + text) beside a Gemma ``gemma_expert``.

    ``sample_actions`` runs one prefix pass through the PaliGemma language model
    and then ``steps`` denoising passes in which the expert's suffix queries attend
    to the prefix keys and their own, through ``modeling_gemma.eager_attention_forward``
    called directly (as openpi does), whose weights the caller throws away.
    The masks are Pi0's (``masks``): the prefix is bidirectional (padding
    hidden), the suffix sees the whole prefix, Pi0's state token (the suffix's
    first) sees the prefix and itself only, and the action tokens see each other,
    the state and the prefix. ``pi05=True`` is Pi0.5's suffix: no state token
    (Pi0.5 writes the state into the prompt), only the action tokens.
    """

    def __init__(self, paligemma_model, gemma_expert, action_dim: int, pi05: bool = False):
        super().__init__()
        self.paligemma = paligemma_model
        self.gemma_expert = gemma_expert
        self.pi05 = pi05
        width = gemma_expert.config.hidden_size
        # Pi0.5 has no state projection (LeRobot's and openpi's): the state is text in its prompt
        self.state_proj = None if pi05 else nn.Linear(action_dim, width)
        self.action_in_proj = nn.Linear(action_dim + 1, width)
        self.action_out_proj = nn.Linear(width, action_dim)

    def embed_prefix(self, images: Sequence[torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
        model = self.paligemma.model
        parts = [model.multi_modal_projector(model.vision_tower(img).last_hidden_state) for img in images]
        parts.append(self.paligemma.get_input_embeddings()(input_ids))
        return torch.cat(parts, dim=1)

    def masks(self, prefix_pad: torch.Tensor, horizon: int):
        """Pi0's ``(prefix [B, P, P], suffix [B, S, P + S])`` visibility (True: seen), as LeRobot builds them.

        ``prefix_pad [B, P]``: True for the real prefix tokens (images, then the
        prompt). The suffix is the state token (not with ``pi05``) then ``horizon``
        action tokens.
        """
        batch = prefix_pad.shape[0]
        prefix = att_2d_masks(prefix_pad, torch.zeros(prefix_pad.shape, dtype=torch.long))
        kinds = ([1] if not self.pi05 else []) + [1] + [0] * (horizon - 1)  # a block per state, one for the actions
        suffix_att = torch.tensor(kinds)[None].expand(batch, -1)
        suffix_pad = torch.ones(suffix_att.shape, dtype=torch.bool)
        suffix = torch.cat([prefix_pad[:, None, :].expand(-1, len(kinds), -1), att_2d_masks(suffix_pad, suffix_att)],
                           dim=2)
        return prefix, suffix

    @torch.no_grad()
    def sample_actions(self, images: Sequence[torch.Tensor], input_ids: torch.Tensor, state: torch.Tensor, *,
                       horizon: int = 4, steps: int = 3,
                       attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Denoised actions; ``attention_mask [batch, text]`` (1 = token, 0 = padding) pads the prompt, as openpi does."""
        from transformers.models.gemma import modeling_gemma

        prefix = self.embed_prefix(images, input_ids)
        language = self.paligemma.model.language_model
        pad = torch.ones(prefix.shape[:2], dtype=torch.bool)
        if attention_mask is not None:
            pad[:, prefix.shape[1] - input_ids.shape[1]:] = attention_mask.bool()
        prefix_seen, self._suffix_seen = self.masks(pad, horizon)
        # A 4-D mask, as LeRobot passes: every kernel (eager, sdpa) then runs Pi0's bidirectional prefix.
        out = language(inputs_embeds=prefix, attention_mask=_additive(prefix_seen, prefix.dtype),
                       output_hidden_states=True, use_cache=False)
        # The prefix keys/values of each layer, recomputed from that layer's input
        # (version-independent, unlike the cache classes).
        positions = torch.arange(prefix.shape[1])[None]
        cos, sin = language.rotary_emb(prefix, positions)
        cached = []
        for layer, hidden in zip(language.layers, out.hidden_states):
            attn = layer.self_attn
            h = layer.input_layernorm(hidden)
            k = attn.k_proj(h).view(*h.shape[:2], -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(*h.shape[:2], -1, attn.head_dim).transpose(1, 2)
            k = modeling_gemma.apply_rotary_pos_emb(k, k, cos, sin)[0]
            cached.append((k, v))

        batch, action_dim = state.shape[0], state.shape[-1]
        dtype = self.action_in_proj.weight.dtype  # the noise and time in the model's dtype (bfloat16 included)
        x = torch.randn(batch, horizon, action_dim, generator=torch.Generator().manual_seed(0)).to(dtype)
        dt = -1.0 / steps
        for i in range(steps):
            t = torch.full((batch, horizon, 1), 1.0 + i * dt, dtype=dtype)
            actions = self.action_in_proj(torch.cat([x, t], -1))
            suffix = actions if self.pi05 else torch.cat([self.state_proj(state)[:, None], actions], dim=1)
            out = self._expert(suffix, cached, prefix.shape[1], modeling_gemma)
            velocity = self.action_out_proj(out[:, -horizon:])
            x = x + dt * velocity
        return x

    def _expert(self, hidden, cached, offset, modeling_gemma):
        model = self.gemma_expert.model
        positions = offset + torch.arange(hidden.shape[1])[None]
        cos, sin = model.rotary_emb(hidden, positions)
        for layer, (k_prefix, v_prefix) in zip(model.layers, cached):
            attn = layer.self_attn
            h = layer.input_layernorm(hidden)
            shape = (*h.shape[:2], -1, attn.head_dim)
            q = attn.q_proj(h).view(shape).transpose(1, 2)
            k = attn.k_proj(h).view(shape).transpose(1, 2)
            v = attn.v_proj(h).view(shape).transpose(1, 2)
            q, k = modeling_gemma.apply_rotary_pos_emb(q, k, cos, sin)
            out, _ = modeling_gemma.eager_attention_forward(
                attn, q, torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2),
                _additive(self._suffix_seen, q.dtype), attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(*h.shape[:2], -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return model.norm(hidden)


def pi0(*, dim: int = 32, expert_dim: int = 16, layers: int = 2, heads: int = 2, action_dim: int = 3,
        image_size: int = IMAGE_SIZE, attn_implementation: Optional[str] = "eager", pi05: bool = False,
        seed: int = 0) -> TinyPi0:
    """A Pi0-shaped model: tiny PaliGemma plus a Gemma expert with the same heads and head size.

    ``attn_implementation`` is the PaliGemma's (None: transformers' default, sdpa); the
    expert's denoising attention calls ``eager_attention_forward`` itself, as openpi does.
    ``pi05``: Pi0.5's suffix (the action tokens only; ``TinyPi0``).
    """
    from transformers import GemmaConfig, GemmaForCausalLM

    vlm = paligemma(dim=dim, layers=layers, heads=heads, image_size=image_size,
                    attn_implementation=attn_implementation, seed=seed)
    head_dim = dim // heads
    expert_config = GemmaConfig(hidden_size=expert_dim, intermediate_size=2 * expert_dim, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim, vocab_size=8,
                                max_position_embeddings=256)
    expert_config._attn_implementation = "eager"
    torch.manual_seed(seed + 1)
    return TinyPi0(vlm, GemmaForCausalLM(expert_config), action_dim, pi05=pi05).eval()


def pi0_inputs(model: TinyPi0, *, cameras: int = 2, batch: int = 1, text_tokens: int = 4, seed: int = 0,
               lengths: Optional[Sequence[int]] = None):
    """``(images, input_ids, state)``: one image tensor per camera, ``[BOS, text]`` ids, a state vector.

    ``lengths`` (one per item, at most ``text_tokens``) right-pads the prompts
    with the pad id 0, as openpi pads to ``max_token_len``; pass
    ``attention_mask=(input_ids != 0)`` to ``sample_actions``.
    """
    generator = torch.Generator().manual_seed(seed)
    config = model.paligemma.config
    size = config.vision_config.image_size
    images = [torch.randn(batch, 3, size, size, generator=generator) for _ in range(cameras)]
    ids = torch.randint(3, config.image_token_index, (batch, text_tokens), generator=generator)
    ids[:, 0] = config.text_config.bos_token_id
    for b, n in enumerate(lengths or ()):
        ids[b, n:] = config.text_config.pad_token_id
    state = torch.randn(batch, model.action_out_proj.out_features, generator=generator)
    return images, ids, state


# -- LeRobot's SmolVLA ----------------------------------------------------------


def smolvla(directory, cameras=("observation.images.top", "observation.images.wrist"), *, layers: int = 4,
                 every: int = 2, steps: int = 3, chunk: int = 5, text: int = 6, image: int = 32, patch: int = 8):
    """LeRobot's ``SmolVLAPolicy``, tiny and random, built offline: no hub, no weights.

    LeRobot builds SmolVLA's VLM from ``vlm_model_name``; a local directory
    holding a SmolVLM config, tokenizer and processors (written to
    ``directory`` here: a word-level tokenizer of 46 words) stands in for
    the hub's, with ``load_vlm_weights=False``. ``layers`` VLM and expert
    layers, cross-attention with a self-attention layer every ``every``;
    ``steps`` denoising steps of ``chunk`` actions; language padded to
    ``text`` tokens; ``image`` px square images of ``patch`` px patches
    (16 patches, 4 tokens after the connector's pixel shuffle, by default).
    Needs lerobot: the error says how to install it.
    """
    try:
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    except ImportError as exc:
        raise GetLocalError(f"tiny.smolvla builds LeRobot's own SmolVLAPolicy, which does not import here ({exc}); "
                            "pip install lerobot (0.4.x on Python 3.10/3.11, 0.5 and later on Python 3.12)") from None
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    special = ["<pad>", "<unk>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(40)])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", additional_special_tokens=special[2:],
        extra_special_tokens={"fake_image_token": special[2], "image_token": special[3],
                              "global_image_token": special[4], "end_of_utterance_token": special[5]})
    processor = SmolVLMImageProcessor(size={"longest_edge": image}, max_image_size={"longest_edge": image},
                                      do_image_splitting=False)
    SmolVLMProcessor(image_processor=processor, tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(),
                     image_seq_len=4).save_pretrained(directory)
    SmolVLMConfig(
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=256),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image, patch_size=patch),
        scale_factor=2, image_token_id=vocab["<image>"]).save_pretrained(directory)
    config = SmolVLAConfig(
        vlm_model_name=str(directory), load_vlm_weights=False, num_vlm_layers=layers, attention_mode="cross_attn",
        self_attn_every_n_layers=every, chunk_size=chunk, n_action_steps=chunk, num_steps=steps,
        tokenizer_max_length=text, max_state_dim=8, max_action_dim=8, resize_imgs_with_padding=(image, image),
        input_features={**{c: PolicyFeature(FeatureType.VISUAL, (3, image, image)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (3,))})
    torch.manual_seed(0)
    return SmolVLAPolicy(config).eval()


def smolvla_inputs(policy, *, frames=None, words: int = 4, seed: int = 0):
    """A batch as LeRobot's preprocessing hands a ``SmolVLAPolicy``, for ``select_action`` / ``predict_action_chunk``.

    Per camera (the config's image keys, in order) a ``[1, 3, H, W]`` frame in
    [0, 1]: ``frames[key]`` when given, else random; the state (random);
    ``words`` language tokens padded to ``tokenizer_max_length``, with their
    attention mask (False on the padding).
    """
    config = policy.config
    g = torch.Generator().manual_seed(seed)
    frames = frames or {}
    batch = {key: frames[key] if key in frames else torch.rand(1, *feature.shape, generator=g)
             for key, feature in config.image_features.items()}
    batch["observation.state"] = torch.randn(1, *config.robot_state_feature.shape, generator=g)
    pad = config.tokenizer_max_length - words
    batch["observation.language.tokens"] = torch.tensor([[6 + i for i in range(words)] + [0] * pad])
    batch["observation.language.attention_mask"] = torch.tensor([[True] * words + [False] * pad])
    return batch
