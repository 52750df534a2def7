"""OpenVLA (Prismatic): every attention map of its two timm ViTs and of its Llama-2, labelled.

>>> from getlocal.adapters import openvla
>>> openvla.activate()                         # before (or after) the model is loaded
>>> # model = AutoModelForVision2Seq.from_pretrained("openvla/openvla-7b", trust_remote_code=True)
>>> # action = model.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False)
>>> maps = openvla.collect()                   # AttentionMaps, labelled
>>> openvla.deactivate()                       # everything back as it was

What is captured: the post-softmax ``attn`` of every timm ``Attention`` block
(towers ``'dinov2'``: a ViT with a class token, [cls, registers, patches];
``'siglip'``: no class token, [patches]) and the post-softmax ``attn_weights`` of
every Llama layer (tower ``'llm'``: [BOS, patches, text, generated]).

How eager attention is made to happen:

* timm: the fused path (``F.scaled_dot_product_attention``) never builds
  ``attn``; the global flag is turned off for models built later and
  ``fused_attn`` for every existing block (timm reads the flag when a block is built).
* transformers 4.48 and later (5.x too): the model's config is switched to
  ``"eager"`` (read at call time), and ``modeling_llama.eager_attention_forward``
  is captured.
* transformers before 4.48 (OpenVLA pins 4.40.1): the attention class is chosen
  when the model is built, so ``LlamaSdpaAttention``/``LlamaFlashAttention2``
  instances get the class ``LlamaAttention`` (same weights, the eager
  computation) and the config says ``"eager"`` so that the causal mask is built;
  and because ``LlamaAttention.forward`` sets ``attn_weights = None`` before
  returning unless ``output_attentions``, a forward pre-hook asks each attention
  module for its weights. ``LlamaDecoderLayer`` decides what it returns from its
  own ``output_attentions``, so the model's outputs do not change.

``mode='fast'`` switches none of this. From 4.48 it reads the arguments of
``sdpa_attention_forward``; before, it reads the locals of the attention
classes' own forwards (``LlamaSdpaAttention``, and ``LlamaAttention`` for a
model built eager) as they return: the query after the rotary embedding, the
keys of the whole cache after ``repeat_kv`` and the model's 4-D mask, or no
mask, where sdpa ran ``is_causal``. ``LlamaFlashAttention2`` (and any class
with a forward of its own) is refused at activation.
"""
from typing import Optional

from getlocal.maps import Segment, TokenLayout

from ._labels import parent
from ._lifecycle import register
from ._spec import Spec
from .sources.llama_old import Llama
from .sources.timm import TimmAttention, timm_layout

_TIMM = TimmAttention(optional=True)  # a Llama-only use needs no timm
_LLAMA = Llama()
#: Prismatic's module holding the SigLIP ViT (DINOv2's is ``featurizer``): the tower when no ViT is at hand.
_SIGLIP_MODULE = "fused_featurizer"


def _tower(owner, path, modules) -> str:
    """``'llm'``, or the ViT's: DINOv2 has a class token, SigLIP none."""
    if not _TIMM.owns(owner):
        return "llm"
    vit = parent(path, modules, "patch_embed")
    if vit is None:
        return "siglip" if _SIGLIP_MODULE in path.split(".") else "dinov2"
    return "dinov2" if getattr(vit, "cls_token", None) is not None else "siglip"


def _prompt_layout(length, vision, batch, options) -> TokenLayout:
    # Prismatic puts the projected patches right after BOS: [BOS, patches, text].
    if not vision:
        return TokenLayout([Segment("context", 0, length)])
    image = vision[0].layout.find("image")[0]
    patches = len(image)
    return TokenLayout([Segment("bos", 0, 1), Segment("image", 1, 1 + patches, grid=image.grid),
                        Segment("text", 1 + patches, length)])


def _refuses(owned) -> Optional[str]:
    """A model this adapter labels holds a Llama, or timm ViTs inside Prismatic's vision backbone.

    Prismatic keeps its ViTs in ``vision_backbone.featurizer`` / ``fused_featurizer``
    (TRI's prismatic-vlms: ``dino_featurizer`` / ``siglip_featurizer``); a timm ViT
    anywhere else would be labelled ``dinov2`` or ``siglip`` for no reason.
    """
    if any(_LLAMA.owns(m) for m in owned.values()):
        return None
    if any(part == "vision_backbone" or part.endswith("featurizer") for path in owned for part in path.split(".")):
        return None
    return ("it holds timm ViT attention but no Llama and no Prismatic vision backbone (vision_backbone, "
            "featurizer, fused_featurizer), so it is not an OpenVLA / Prismatic model; for a plain timm ViT use "
            "getlocal.adapters.vit")


_ADAPTER = register(Spec(
    "openvla",
    vision_towers=("dinov2", "siglip"),
    kinds=("cls", "register", "image", "bos", "text"),
    sources=[_TIMM, _LLAMA],  # timm Attention.forward on ``attn``; Llama on ``attn_weights``
    tower=_tower,
    vision_layout=timm_layout,
    prompt_layout=_prompt_layout,
    language_towers=("llm",),
    refuses=_refuses,
))
activate, capture, collect = _ADAPTER.activate, _ADAPTER.capture, _ADAPTER.collect
deactivate, is_active = _ADAPTER.deactivate, _ADAPTER.is_active
