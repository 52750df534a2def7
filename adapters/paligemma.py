"""PaliGemma and Pi0 / Pi0.5: every attention map of SigLIP and Gemma, labelled.

>>> from getlocal.adapters import paligemma
>>> paligemma.activate()                       # before (or after) the model is loaded
>>> # model = PaliGemmaForConditionalGeneration.from_pretrained("google/paligemma-3b-pt-224")
>>> # out = model.generate(**inputs, max_new_tokens=8)
>>> maps = paligemma.collect()                 # AttentionMaps, labelled
>>> paligemma.deactivate()

What is captured: the post-softmax ``attn_weights`` local of the module-level
``eager_attention_forward`` of ``modeling_siglip`` (tower ``'vision'``),
``modeling_gemma``, ``modeling_gemma2`` and ``modeling_gemma3`` (soft-capping,
when the config has it, comes before the softmax). Gemma layers are tower
``'language'``, or ``'expert'`` (the action expert) when a component of their
module path is ``gemma_expert`` (openpi's and LeRobot's name for it). Because the function itself is
instrumented, calls that bypass the attention module are captured too: Pi0's
joint prefix/suffix attention calls ``modeling_gemma.eager_attention_forward``
directly and throws the weights away.

Every model seen is switched to eager attention through its config (read at
call time, so models already loaded switch in place); transformers >= 4.48 is
needed (openpi pins 4.53.2).
"""
from getlocal import GetLocalError
from getlocal.maps import Segment, TokenLayout

from ._labels import camera_names, image_count
from ._lifecycle import register
from ._spec import Spec
from .sources.transformers import EagerTransformers

_MODULES = ("siglip", "gemma", "gemma2", "gemma3")
#: The module of Pi0's action expert (openpi, LeRobot): its Gemma layers are the ``'expert'`` tower.
_EXPERT_MODULE = "gemma_expert"
_MODEL_TYPES = ("paligemma", "siglip", "siglip_vision_model", "gemma", "gemma2", "gemma3", "gemma3_text")


def _eager_functions():
    """``eager_attention_forward`` of each of _MODULES that this transformers has, on ``attn_weights``."""
    import importlib

    import transformers

    out = []
    for name in _MODULES:
        try:
            modeling = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        except ImportError:  # gemma2/gemma3 are newer than some supported versions
            continue
        eager = getattr(modeling, "eager_attention_forward", None)
        if eager is None:
            raise GetLocalError(
                f"getlocal.adapters.paligemma needs transformers >= 4.48, whose modeling_{name} has "
                f"eager_attention_forward; this is transformers {transformers.__version__}: "
                "pip install 'transformers>=4.48' (openpi pins 4.53.2)"
            )
        out.append((eager, "attn_weights"))
    return out


def _tower(owner, path, modules) -> str:
    if type(owner).__name__.startswith("Siglip"):
        return "vision"
    return "expert" if _EXPERT_MODULE in path.split(".") else "language"


def _prompt_layout(length, vision, batch, options) -> TokenLayout:
    # The processor writes [image tokens of each image, BOS, text, "\n"]; openpi's prefix is the same.
    images, per_image = image_count(vision, batch)
    if not images or images * per_image >= length:
        return TokenLayout([Segment("context", 0, length)])
    grid = vision[0].layout.find("image")[0].grid
    names = camera_names(images, options)
    segments = [Segment("image", i * per_image, (i + 1) * per_image, camera=names[i], grid=grid)
                for i in range(images)]
    start = images * per_image
    segments += [Segment("bos", start, start + 1), Segment("text", start + 1, length)]
    return TokenLayout(segments)


_ADAPTER = register(Spec(
    "paligemma",
    vision_towers=("vision",),
    language_towers=("language",),
    expert_towers=("expert",),
    kinds=("image", "bos", "text"),
    sources=[EagerTransformers(_MODEL_TYPES, _eager_functions)],
    tower=_tower,
    prompt_layout=_prompt_layout,
    options=("cameras", "state_tokens"),
))
activate, capture, collect = _ADAPTER.activate, _ADAPTER.capture, _ADAPTER.collect
deactivate, is_active = _ADAPTER.deactivate, _ADAPTER.is_active
