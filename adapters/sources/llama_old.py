"""Llama's attention before transformers 4.48 (OpenVLA pins 4.40.1), where the attention class is the kernel.

From 4.48 on, ``Llama`` is an attention-interface source like any other
(``modeling_llama.eager_attention_forward``, see ``sources.transformers``).
Before, the class is chosen when the model is built: mode='eager' gives
``LlamaSdpaAttention``/``LlamaFlashAttention2`` instances the class
``LlamaAttention`` (same weights, the eager computation), and because
``LlamaAttention.forward`` sets ``attn_weights = None`` before returning unless
``output_attentions``, a forward pre-hook asks each attention module for its
weights (``LlamaDecoderLayer`` decides what it returns from its own
``output_attentions``, so the model's outputs do not change). mode='fast'
reads the locals of ``LlamaSdpaAttention.forward`` (and ``LlamaAttention.forward``
for a model built eager) as they return, rebuilt by ``llama_old_rows`` (that
version divides by ``sqrt(head_dim)``); any class with a forward of its own
(``LlamaFlashAttention2``) is refused at activation.
"""
import functools
import math
from typing import Any, Dict, Optional

from .._keep import Keep, random_dropout, repeat_keys, unsupported
from .._undo import Undo
from . import FastTargets
from .transformers import EagerTransformers

#: The locals of ``LlamaAttention.forward`` / ``LlamaSdpaAttention.forward`` (transformers < 4.48) a rebuild needs.
LLAMA_OLD_LOCALS = ("query_states", "key_states", "attention_mask", "is_causal", "attn_weights")


class Llama(EagerTransformers):
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

    def fast_targets(self, keeper: Keep) -> FastTargets:
        """Before 4.48: the locals of ``LlamaSdpaAttention.forward`` and ``LlamaAttention.forward`` (module doc)."""
        classes = _old_llama_classes()
        if classes is None:
            return super().fast_targets(keeper)
        targets = []
        for cls, sdpa in classes:
            present = set(cls.forward.__code__.co_varnames)
            names = tuple(n for n in LLAMA_OLD_LOCALS if n in present)
            targets.append((cls.forward, names, functools.partial(keep_llama_old, keeper, sdpa=sdpa)))
        return targets

    def check_fast(self, module, path: str = "") -> None:
        """Before 4.48, also refuse an attention module whose forward ``fast_targets`` does not capture (flash)."""
        classes = _old_llama_classes()
        if classes is not None and isinstance(module, classes[0][0]) and self.owns(module):
            if type(module).forward not in [cls.forward for cls, _ in classes]:
                raise unsupported(
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


def keep_llama_old(keeper: Keep, owner, values: Dict[str, Any], sdpa: bool = False):
    """transformers < 4.48's ``LlamaSdpaAttention.forward`` (``sdpa``) or ``LlamaAttention.forward``.

    At return ``key_states`` is the whole cache after ``repeat_kv`` (one copy
    per query head), and ``attention_mask`` the model's 4-D additive mask, or
    None: sdpa then ran ``is_causal`` when more than one query came, eager
    with no mask at all. An eager forward asked for its weights
    (``output_attentions``, also how an sdpa module answers that) keeps them
    as they are; the sdpa call that handed over to it ends without query_states.
    """
    if values.get("attn_weights") is not None:
        return keeper.keep_eager(owner, {"attn_weights": values["attn_weights"]})
    query, key = values.get("query_states"), values.get("key_states")
    if query is None or key is None:
        return None
    dropout = float(getattr(owner, "attention_dropout", 0.0) or 0.0) if owner.training else 0.0
    if dropout:  # put in training after activation: warned and skipped by get_local, never a wrong map
        raise random_dropout(owner, dropout)
    mask = values.get("attention_mask")
    causal = bool(values.get("is_causal", sdpa and mask is None and query.shape[2] > 1))
    rows = functools.partial(llama_old_rows, head_dim=owner.head_dim, causal=causal)
    return keeper.keep_inputs(owner, query, key, mask, rows)


def _additive_causal(q_len: int, k_len: int, dtype, device):
    """sdpa's ``is_causal`` (top left) as transformers' eager mask: 0 where seen, the dtype's minimum elsewhere."""
    import torch

    seen = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
    return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)[None, None]


def llama_old_rows(query, key, mask, head_dim: int, causal: bool):
    """Eager ``LlamaAttention``'s weights (transformers < 4.48) ``[B, H, Q, K]`` from the inputs sdpa received.

    That version divides by ``math.sqrt(head_dim)`` (later ones multiply by
    ``scaling``) and adds the model's 4-D mask cut to the keys; the last bit of
    a float32 score depends on which, hence this twin of ``sources.transformers.softmax_rows``.
    """
    import torch

    key = repeat_keys(key, query.shape[1])
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(head_dim)
    if mask is None and causal:
        mask = _additive_causal(query.shape[2], key.shape[2], scores.dtype, scores.device)
    if mask is not None:
        scores = scores + mask[:, :, :, : key.shape[2]]
    return torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
