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
``'language'``, or ``'expert'`` when a component of their module path contains
"expert" (openpi's ``gemma_expert``). Because the function itself is
instrumented, calls that bypass the attention module are captured too: Pi0's
joint prefix/suffix attention calls ``modeling_gemma.eager_attention_forward``
directly and throws the weights away.

Every model seen is switched to eager attention through its config (read at
call time, so models already loaded switch in place); transformers >= 4.48 is
needed (openpi pins 4.53.2).
"""
from typing import Optional, Sequence

from getlocal import GetLocalError
from getlocal.maps import AttentionMaps, Segment, TokenLayout

from ._labels import camera_names, image_count
from ._libraries import EagerTransformers
from ._lifecycle import Spec, register

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
    return "expert" if any("expert" in part for part in path.split(".")) else "language"


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
    sources=[EagerTransformers(_MODEL_TYPES, _eager_functions)],
    tower=_tower,
    prompt_layout=_prompt_layout,
    language_towers=("language", "expert"),
))


def activate(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
             mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None) -> None:
    """Capture every attention map of PaliGemma (and Pi0's expert) from now on.

    Call it before the model is loaded or after: ``model`` is switched to eager
    attention if given, otherwise every model is switched at its first call,
    and models built later are switched as they are built. ``convert``,
    ``max_calls`` and ``max_bytes`` go to ``get_local.activate``.

    ``mode='fast'``: the model keeps its attention kernel (nothing is switched)
    and the maps are rebuilt exactly from the softmax inputs. ``queries``,
    ``heads``, ``towers`` (of 'vision', 'language', 'expert'), ``layers`` and ``dtype``
    select before anything is kept, in either mode: see :mod:`getlocal.adapters`
    and the README, "Two capture modes".
    """
    _ADAPTER.activate(model, convert, max_calls, max_bytes, mode=mode, queries=queries, heads=heads,
                      towers=towers, layers=layers, dtype=dtype)


def deactivate() -> None:
    """Undo everything ``activate`` changed (the cache is kept for ``collect``)."""
    _ADAPTER.deactivate()


def collect(model=None, *, cameras: Optional[Sequence[str]] = None, state_tokens: int = 0) -> AttentionMaps:
    """The captured maps, labelled: tower, layer, module path, step (forward pass) and phase.

    ``generate()`` gives a ``'prefill'`` step and then ``'decode'`` steps; Pi0
    gives a ``'prefix'`` step (vision plus the language model over
    [images, BOS, text]) and then one ``'denoise'`` step per flow-matching step
    (the expert's suffix queries over prefix + suffix keys). ``cameras`` names
    the images of each sequence in order (default ``image0``, ``image1``, ...);
    ``state_tokens``: how many suffix tokens come before the action tokens
    (Pi0: 1, the state token; Pi0.5: 0).
    """
    return _ADAPTER.collect(model, cameras=cameras, state_tokens=state_tokens)


def is_active() -> bool:
    return _ADAPTER.active


def capture(model=None, *, cameras: Optional[Sequence[str]] = None, state_tokens: int = 0, convert="numpy",
            max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
            mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None):
    """``with paligemma.capture(model) as maps:`` activated for the block; ``maps`` is filled when it ends.

    >>> with paligemma.capture(policy, cameras=["base", "wrist"], state_tokens=1) as maps:   # doctest: +SKIP
    ...     actions = policy.sample_actions(...)
    >>> maps.steps                                                                          # doctest: +SKIP
    [(0, 'prefix'), (1, 'denoise'), ...]

    ``cameras`` and ``state_tokens`` are those of :func:`collect`, ``mode`` and
    the selection those of :func:`activate`; otherwise
    the same contract as :func:`getlocal.adapters.vit.capture`.
    """
    return _ADAPTER.capture(model, convert, max_calls, max_bytes, dict(cameras=cameras, state_tokens=state_tokens),
                            mode=mode, queries=queries, heads=heads, towers=towers, layers=layers,
                            dtype=dtype)
