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
``'language'`` inside a PaliGemma model, or ``'expert'`` (Pi0's action expert)
when they sit beside one, as in openpi's and LeRobot's Pi0 and Pi0.5. Because the function itself is
instrumented, calls that bypass the attention module are captured too: Pi0's
joint prefix/suffix attention calls ``modeling_gemma.eager_attention_forward``
directly and throws the weights away. For LeRobot's ``PI0Policy`` and
``PI05Policy``, ``collect()`` names the cameras by the policy's image keys
(``observation.images.top``, ...) and counts Pi0's state token by itself;
it refuses the maps of their training forward (``policy.forward``).

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
    # Read off the model's structure: a Gemma inside a PaliGemma is its language model; a Gemma beside
    # one (Pi0's action expert, whatever its attribute is called) is the expert.
    if any(_is_paligemma(m) for m in _holders(path, modules)):
        return "language"
    return "expert" if any(_is_paligemma(m) for m in modules.values()) else "language"


def _is_paligemma(module) -> bool:
    return getattr(getattr(module, "config", None), "model_type", None) == "paligemma"


def _holders(path, modules) -> list:
    """The modules that hold the module at ``path``, nearest first, the root last."""
    parts = path.split(".") if path else []
    found = (modules.get(".".join(parts[:i])) for i in range(len(parts) - 1, -1, -1))
    return [m for m in found if m is not None]


def _calls(entries, names, options) -> dict:
    """``options`` with what the model says added where ``collect()`` was not given it (``Spec.calls``)."""
    modules = next((names[id(e.owner)][1] for e in entries if id(e.owner) in names), None)
    around = _around_pi0(modules) if modules else []
    told = {}
    # Pi0 projects the state into one suffix token (``state_proj``); Pi0.5 writes it into the prompt and has
    # none (openpi's Pi0.5 keeps ``pi05`` set)
    if any(getattr(h, "state_proj", None) is not None and not getattr(h, "pi05", False) for h in around):
        told["state_tokens"] = 1
    config = next((h.config for h in around if isinstance(getattr(getattr(h, "config", None), "image_features",
                                                                   None), dict)), None)
    if config is not None:
        # LeRobot's image keys, in the order its _preprocess_images stacks them when every camera is in the batch
        told["cameras"] = [str(k) for k in config.image_features] or None
        _refuse_training_forward(entries, config)
    return {**options, **{k: v for k, v in told.items() if k in options and options[k] is None}}


def _around_pi0(modules) -> list:
    """The Pi0 model (the nearest holder of a PaliGemma that also holds a Gemma of its own, the expert) and
    the modules that hold it, nearest first; empty for a model without an expert."""
    paligemma = next((p for p, m in modules.items() if _is_paligemma(m)), None)
    if paligemma is None:
        return []
    holders = _holders(paligemma, modules)[1:]
    inner = {id(m) for m in modules[paligemma].modules()}
    for i, holder in enumerate(holders):
        if any(_is_gemma(m) and id(m) not in inner for m in holder.modules()):
            return holders[i:]
    return []


def _refuse_training_forward(entries, config) -> None:
    """LeRobot's training forward runs prefix and suffix as one call of the PaliGemma's layers: its keys are
    more than the prefix holds (the images and ``tokenizer_max_length`` language tokens); refuse to label it."""
    text = getattr(config, "tokenizer_max_length", None)
    vision = [e for e in entries if e.tower == "vision"]
    language = [e for e in entries if e.tower == "language"]
    if not isinstance(text, int) or not vision or not language:
        return
    images, per_image = image_count(vision, language[0].batch)
    if any(e.keys > images * per_image + text for e in language):
        raise GetLocalError(
            f"paligemma.collect(): these maps come from the training forward of LeRobot's "
            f"{type(config).__name__} policy (policy.forward), which runs the prefix and the action expert as "
            "one attention call; only the inference passes are labelled: capture policy.select_action, "
            "predict_action_chunk or model.sample_actions")


def _is_gemma(module) -> bool:
    return str(getattr(getattr(module, "config", None), "model_type", "")).startswith("gemma")



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
    calls=_calls,
))
activate, capture, collect = _ADAPTER.activate, _ADAPTER.capture, _ADAPTER.collect
deactivate, is_active = _ADAPTER.deactivate, _ADAPTER.is_active
