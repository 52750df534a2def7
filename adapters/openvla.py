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
import functools
from typing import Optional

from getlocal.maps import AttentionMaps, Segment, TokenLayout

from ._labels import parent
from ._libraries import EagerTransformers, TimmAttention, _unsupported, timm_layout
from ._lifecycle import Spec, register
from ._undo import Undo


class _Llama(EagerTransformers):
    """Llama-2's attention: ``eager_attention_forward`` (transformers >= 4.48) or ``LlamaAttention.forward``."""

    def __init__(self):
        super().__init__(("llama",))
        self.old_llama: Optional[type] = None  # LlamaAttention when its forward drops the weights (< 4.48)

    def targets(self):
        from transformers.models.llama import modeling_llama

        eager = getattr(modeling_llama, "eager_attention_forward", None)
        if eager is not None:
            return [(eager, "attn_weights")]
        self.old_llama = modeling_llama.LlamaAttention
        return [(modeling_llama.LlamaAttention.forward, "attn_weights")]

    def prepare(self, module, undo: Undo, built: bool) -> None:
        super().prepare(module, undo, built)
        if self.old_llama is not None and isinstance(module, self.old_llama):
            if type(module) is not self.old_llama:
                undo.set(module, "__class__", self.old_llama)
            undo.add(module.register_forward_pre_hook(_keep_weights, with_kwargs=True).remove)

    # -- mode='fast' before 4.48: the forward of each attention class is the kernel --

    def fast_targets(self, fast):
        """Before 4.48: the locals of ``LlamaSdpaAttention.forward`` and ``LlamaAttention.forward`` (module doc)."""
        classes = _old_llama_classes()
        if classes is None:
            return super().fast_targets(fast)
        from . import _keep

        targets = []
        for cls, sdpa in classes:
            present = set(cls.forward.__code__.co_varnames)
            names = tuple(n for n in _keep.LLAMA_OLD_LOCALS if n in present)
            targets.append((cls.forward, names, functools.partial(fast.keep_llama_old, sdpa=sdpa)))
        return targets

    def check_fast(self, module, path: str = "") -> None:
        """Before 4.48, also refuse an attention module whose forward ``fast_targets`` does not capture (flash)."""
        classes = _old_llama_classes()
        if classes is not None and isinstance(module, classes[0][0]) and self.owns(module):
            if type(module).forward not in [cls.forward for cls, _ in classes]:
                raise _unsupported(
                    f"{type(module).__name__}{f' ({path})' if path else ''} computes its attention in its own "
                    f"forward, whose softmax inputs getlocal does not rebuild (it does for "
                    f"{' and '.join(cls.__name__ for cls, _ in classes)})")
        super().check_fast(module, path)  # the config's kernel: it chooses the mask every layer receives


def _old_llama_classes():
    """``[(LlamaAttention, False), (LlamaSdpaAttention, True)]`` where the class is the kernel (< 4.48), else None."""
    from transformers.models.llama import modeling_llama

    if getattr(modeling_llama, "eager_attention_forward", None) is not None:
        return None
    sdpa = getattr(modeling_llama, "LlamaSdpaAttention", None)
    return [(modeling_llama.LlamaAttention, False)] + ([(sdpa, True)] if sdpa is not None else [])


def _keep_weights(module, args, kwargs):
    """Ask a transformers < 4.48 attention module for its weights (see the module docstring)."""
    if len(args) > 4:  # forward(hidden_states, attention_mask, position_ids, past_key_value, output_attentions, ...)
        return args[:4] + (True,) + args[5:], kwargs
    kwargs["output_attentions"] = True
    return args, kwargs


_TIMM = TimmAttention(optional=True)  # a Llama-only use needs no timm


def _tower(owner, path, modules) -> str:
    if not _TIMM.owns(owner):
        return "llm"
    vit = parent(path, modules, "patch_embed")
    if vit is None:
        return "siglip" if "fused" in path else "dinov2"
    return "dinov2" if getattr(vit, "cls_token", None) is not None else "siglip"


def _prompt_layout(length, vision, batch, options) -> TokenLayout:
    # Prismatic puts the projected patches right after BOS: [BOS, patches, text].
    if not vision:
        return TokenLayout([Segment("context", 0, length)])
    image = vision[0].layout.find("image")[0]
    patches = len(image)
    return TokenLayout([Segment("bos", 0, 1), Segment("image", 1, 1 + patches, grid=image.grid),
                        Segment("text", 1 + patches, length)])


_ADAPTER = register(Spec(
    "openvla",
    vision_towers=("dinov2", "siglip"),
    sources=[_TIMM, _Llama()],  # timm Attention.forward on ``attn``; Llama on ``attn_weights``
    tower=_tower,
    vision_layout=timm_layout,
    prompt_layout=_prompt_layout,
    language_towers=("llm",),
))


def activate(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
             mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None) -> None:
    """Capture every attention map of OpenVLA from now on.

    Call it before the model is loaded (models built later are switched as
    they are built), or after: ``model`` is switched if given, otherwise every
    model is switched at its first call (``torch.compile(model)`` included). ``convert``,
    ``max_calls`` and ``max_bytes`` go to ``get_local.activate``.

    ``mode='fast'``: the model keeps its attention kernels (nothing is switched:
    the timm towers stay fused, the language model on its kernel) and the maps
    are rebuilt exactly from the softmax inputs. ``queries``, ``heads``,
    ``towers`` (of 'dinov2', 'siglip', 'llm'), ``layers`` and ``dtype`` select
    before anything is kept, in either mode: see :mod:`getlocal.adapters` and
    the README, "Two capture modes".
    """
    _ADAPTER.activate(model, convert, max_calls, max_bytes, mode=mode, queries=queries, heads=heads,
                      towers=towers, layers=layers, dtype=dtype)


def deactivate() -> None:
    """Undo everything ``activate`` changed (the cache is kept for ``collect``)."""
    _ADAPTER.deactivate()


def collect(model=None) -> AttentionMaps:
    """The captured maps, labelled: tower, layer, module path, step (forward pass) and phase.

    ``generate()`` gives one ``'prefill'`` step (vision towers plus the prompt,
    square ``[B, H, L, L]`` maps) and one ``'decode'`` step per further token
    (``[B, H, 1, L+t]``). ``model`` names the modules; without it, the models
    passed to ``activate`` or built while it was on are used (and otherwise
    found from the attention modules, which is slow).
    """
    return _ADAPTER.collect(model)


def is_active() -> bool:
    return _ADAPTER.active


def capture(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
            mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None):
    """``with openvla.capture(model) as maps:`` activated for the block; ``maps`` is filled when it ends.

    >>> with openvla.capture(model) as maps:                                      # doctest: +SKIP
    ...     action = model.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False)
    >>> maps.steps                                                                 # doctest: +SKIP
    [(0, 'prefill'), (1, 'decode'), ..., (6, 'decode')]

    The same contract as :func:`getlocal.adapters.vit.capture`; ``mode`` and
    the selection are those of :func:`activate`.
    """
    return _ADAPTER.capture(model, convert, max_calls, max_bytes, mode=mode, queries=queries, heads=heads,
                            towers=towers, layers=layers, dtype=dtype)
