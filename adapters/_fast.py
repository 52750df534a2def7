"""``mode='fast'``: the model keeps its attention kernel; maps are rebuilt from the softmax inputs.

transformers calls one function per kernel (``sdpa_attention_forward``,
``eager_attention_forward``, ...) with ``query`` (after the rotary embedding),
``key`` (the whole cache), ``attention_mask`` and ``scaling`` as arguments.
``get_local(..., keep=)`` sees those locals as the function returns and keeps:

* a call whose queries attend to more keys than there are queries (a decode
  step, Pi0's denoising suffix): the selected rows, computed now, so no copy of
  the key cache is kept per step;
* any other call (a prefill, a vision encoder): its map now if that is no larger
  than ``query`` and ``key`` (a short prompt, a head-reduced map), else ``query``,
  ``key`` and the mask (one copy per mask, shared by the layers of a forward) as a
  ``Rebuild`` whose map is computed on the first read of ``AttentionMap.array``;
* a call that the selection (``queries=``) leaves out: its shape and padding only.

The rebuild is eager's own arithmetic on the same tensors: ``repeat_kv`` for
grouped-query keys, ``matmul(query, key^T) * scaling + mask`` in the query's
dtype (a boolean mask made additive with the dtype's minimum, as transformers'
eager mask is), softmax in float32, cast back to the query's dtype. An eager
kernel (``attn_weights`` exists: Gemma 2's soft-capping included) is read
as it is. Only torch code here; imported when an adapter activates in this mode.

Before 4.48 (OpenVLA pins 4.40.1) there is no such function: the attention
class is the kernel, and ``keep_llama_old`` reads the locals of
``LlamaSdpaAttention.forward`` / ``LlamaAttention.forward`` under the same
rules, rebuilt by ``llama_old_rows`` with that version's eager arithmetic.
"""
import functools
import math
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from getlocal.maps import Lazy

MODES = ("eager", "fast")
QUERIES = ("generated", "action")  # the new tokens of a decode / denoise step
HEADS = ("mean", "max")

#: The locals of ``sdpa_attention_forward`` a rebuild needs (those a version lacks are left out).
SDPA_LOCALS = ("query", "key", "attention_mask", "scaling", "is_causal", "q_length", "kv_length")
EAGER_LOCALS = ("attn_weights",)
#: The locals of ``LlamaAttention.forward`` / ``LlamaSdpaAttention.forward`` (transformers < 4.48) a rebuild needs.
LLAMA_OLD_LOCALS = ("query_states", "key_states", "attention_mask", "is_causal", "attn_weights")


class Skipped(Lazy):
    """A call the selection leaves out: its shape (for labelling) and its prompt padding, no data."""

    def __init__(self, shape, padding):
        self.shape, self.padding = tuple(shape), padding

    @property
    def nbytes(self) -> int:
        return 0 if self.padding is None else int(self.padding.nbytes)

    def materialize(self):  # collect() drops these maps; reaching here is a bug
        raise RuntimeError("a map left out by the selection has no data")


class Rebuild(Lazy):
    """The softmax inputs of one call; its map ``rows(*inputs)`` computed on first read (see the module doc)."""

    def __init__(self, rows: Callable[..., Any], inputs: Tuple[Any, ...], shape, heads, convert, padding):
        self.rows, self.inputs, self.shape = rows, inputs, tuple(shape)
        self.heads, self.convert, self.padding = heads, convert, padding

    @property
    def nbytes(self) -> int:
        held = [t for t in self.inputs if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in held) + (0 if self.padding is None else int(self.padding.nbytes))

    def materialize(self):
        with torch.no_grad():
            weights = self.rows(*self.inputs)
        return self.convert(reduce_heads(weights, self.heads))


def softmax_rows(query, key, mask, scaling, causal: bool, kv_length: int):
    """Eager's attention weights ``[B, H, Q, kv_length]`` from the softmax inputs of one call."""
    heads, q_len = query.shape[1], query.shape[2]
    if key.shape[1] != heads:  # grouped-query keys, shared as repeat_kv shares them
        n = heads // key.shape[1]
        b, hk, k_len, d = key.shape
        key = key[:, :, None].expand(b, hk, n, k_len, d).reshape(b, hk * n, k_len, d)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    k_len = key.shape[2]
    if mask is None and causal:  # sdpa's is_causal: aligned to the top left
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None:
        if mask.dtype == torch.bool:  # as transformers' eager mask: 0 where seen, the dtype's minimum elsewhere
            mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(scores.dtype).min)
        scores = scores + mask[..., :k_len]
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if kv_length > k_len:  # sdpa cut the keys no query could see (prefill into a longer static cache)
        weights = torch.nn.functional.pad(weights, (0, kv_length - k_len))
    return weights


def _repeat_keys(key, heads: int):
    """``key`` ``[B, Hk, K, D]`` with each head repeated for the ``heads // Hk`` query heads sharing it (repeat_kv)."""
    b, hk, k_len, d = key.shape
    if hk == heads:
        return key
    return key[:, :, None].expand(b, hk, heads // hk, k_len, d).reshape(b, heads, k_len, d)


def _additive_causal(q_len: int, k_len: int, dtype, device):
    """sdpa's ``is_causal`` (top left) as transformers' eager mask: 0 where seen, the dtype's minimum elsewhere."""
    seen = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
    return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)[None, None]


def llama_old_rows(query, key, mask, head_dim: int, causal: bool):
    """Eager ``LlamaAttention``'s weights (transformers < 4.48) ``[B, H, Q, K]`` from the inputs sdpa received.

    That version divides by ``math.sqrt(head_dim)`` (later ones multiply by
    ``scaling``) and adds the model's 4-D mask cut to the keys; the last bit of
    a float32 score depends on which, hence this twin of ``softmax_rows``.
    """
    key = _repeat_keys(key, query.shape[1])
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(head_dim)
    if mask is None and causal:
        mask = _additive_causal(query.shape[2], key.shape[2], scores.dtype, scores.device)
    if mask is not None:
        scores = scores + mask[:, :, :, : key.shape[2]]
    return torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def reduce_heads(weights, heads: Optional[str]):
    """``weights`` as they are, or their mean / max over heads in float32 (``[B, 1, Q, K]``)."""
    if heads is None:
        return weights
    w = weights.float()
    return w.mean(1, keepdim=True) if heads == "mean" else w.amax(1, keepdim=True)


def padding_of(mask, q_len: int, k_len: int):
    """``[B, K]`` numpy bool: keys that every query which sees anything does not see, or None.

    The same rule ``_labels._padding`` applies to eager maps (a zero column), read off the mask.
    """
    if mask is None:
        return None
    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    visible = visible[..., -q_len:, :k_len].reshape(visible.shape[0], -1, q_len, k_len).any(1)  # [B, Q, K]
    seeing = visible.any(-1, keepdim=True)  # rows whose keys are not all masked
    hidden = (~visible | ~seeing).all(1)
    return hidden.cpu().numpy() if bool(hidden.any()) else None


def _padding_of_weights(weights):
    w = weights.float()
    uniform = w.amax(-1, keepdim=True) == w.amin(-1, keepdim=True)
    hidden = ((w == 0) | uniform).all(1).all(1)  # [B, K]
    return hidden.cpu().numpy() if bool(hidden.any()) else None


class Fast:
    """The ``keep`` functions of one activation: what each call holds, given the selection."""

    def __init__(self, convert: Callable[[Any], Any], to_host: bool, queries: Optional[str], heads: Optional[str],
                 numpy: bool = False):
        self.convert, self.to_host, self.queries, self.heads = convert, to_host, queries, heads
        self.numpy = numpy  # convert='numpy': half-precision maps are kept as float32
        self._masks: list = []  # (source mask, its version, the copy held): one copy per mask, not per layer

    def _hold(self, t):
        if t is None:
            return None
        t = t.detach()
        return t.to("cpu", copy=True) if self.to_host else t.clone()

    def _hold_mask(self, mask):
        """The held copy of ``mask``: transformers passes one mask object to every layer of a forward."""
        if mask is None:
            return None
        for ref, version, held in self._masks:
            if ref() is mask and mask._version == version:
                return held
        held = self._hold(mask)
        self._masks = [entry for entry in self._masks[-3:] if entry[0]() is not None]  # Gemma 2/3: two masks
        self._masks.append((weakref.ref(mask), mask._version, held))
        return held

    def _map_bytes(self, shape, dtype) -> int:
        size = 4 if self.heads or (self.numpy and dtype in (torch.float16, torch.bfloat16)) else dtype.itemsize
        return math.prod(shape) * size

    def whole(self, rows: Callable[..., Any], inputs: Tuple[Any, ...], mask, shape, padding):
        """A call whose every row is kept: its map now if that is no larger than its inputs, else a ``Rebuild``.

        ``inputs`` are the tensors ``rows(*inputs, mask)`` needs besides the mask
        (query and key at OpenVLA's prefill length are about the size of the map;
        a head-reduced map, or a short prompt, is smaller than they are).
        """
        held = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        if self._map_bytes(shape, inputs[0].dtype) <= held:
            with torch.no_grad():
                return self.finish(rows(*inputs, mask))
        kept = tuple(self._hold(t) if isinstance(t, torch.Tensor) else t for t in inputs)
        return Rebuild(rows, kept + (self._hold_mask(mask),), shape, self.heads, self.convert, padding)

    def finish(self, weights):
        """What is kept of a map computed now: the selection applied, then ``convert``."""
        return self.convert(reduce_heads(weights.detach(), self.heads))

    def kept_shape(self, batch: int, heads: int, q_len: int, k_len: int) -> Tuple[int, int, int, int]:
        return (batch, 1 if self.heads else heads, q_len, k_len)

    def wanted(self, owner, q_len: int, k_len: int) -> bool:
        """Whether the selection keeps anything of this call (else it is kept as ``Skipped``, for labels)."""
        return self.queries is None or q_len < k_len

    def keep_sdpa(self, owner, values: Dict[str, Any]):
        query, key = values["query"], values["key"]
        mask = values.get("attention_mask")
        q_len = values.get("q_length", query.shape[2])
        if query.shape[2] != q_len:  # pack_gqa folded the heads of one query: [B, H/n, n, D]
            query = query.reshape(query.shape[0], -1, q_len, query.shape[-1])
        if mask is not None and mask.shape[-2] != q_len and mask.shape[-2] != 1:
            mask = mask.reshape(mask.shape[0], -1, q_len, mask.shape[-1])
        kv_length = values.get("kv_length", key.shape[2])
        causal = bool(values.get("is_causal", False)) and mask is None
        shape = self.kept_shape(query.shape[0], query.shape[1], q_len, kv_length)
        padding = padding_of(mask, q_len, key.shape[2]) if q_len == kv_length else None
        if not self.wanted(owner, q_len, kv_length):
            return Skipped(shape, padding)
        rows = functools.partial(softmax_rows, scaling=values.get("scaling"), causal=causal, kv_length=kv_length)
        if q_len < kv_length:  # a step over cached keys: its rows now, never a copy of the cache
            with torch.no_grad():
                return self.finish(rows(query, key, mask))
        return self.whole(rows, (query, key), mask, shape, padding)

    def keep_eager(self, owner, values: Dict[str, Any]):
        weights = values.get("attn_weights")
        if weights is None or getattr(weights, "ndim", 0) != 4:
            return None
        q_len, k_len = weights.shape[-2:]
        if not self.wanted(owner, q_len, k_len):
            return Skipped(self.kept_shape(weights.shape[0], weights.shape[1], q_len, k_len),
                           _padding_of_weights(weights) if q_len == k_len else None)
        return self.finish(weights)

    def keep_llama_old(self, owner, values: Dict[str, Any], sdpa: bool = False):
        """transformers < 4.48's ``LlamaSdpaAttention.forward`` (``sdpa``) or ``LlamaAttention.forward``.

        At return ``key_states`` is the whole cache after ``repeat_kv`` (one copy
        per query head), and ``attention_mask`` the model's 4-D additive mask, or
        None: sdpa then ran ``is_causal`` when more than one query came, eager
        with no mask at all. An eager forward asked for its weights
        (``output_attentions``, also how an sdpa module answers that) keeps them
        as they are; the sdpa call that handed over to it ends without query_states.
        """
        if values.get("attn_weights") is not None:
            return self.keep_eager(owner, values)
        query, key = values.get("query_states"), values.get("key_states")
        if query is None or key is None:
            return None
        mask = values.get("attention_mask")
        batch, heads, q_len, _ = query.shape
        k_len = key.shape[2]
        causal = bool(values.get("is_causal", sdpa and mask is None and q_len > 1))
        shape = self.kept_shape(batch, heads, q_len, k_len)
        padding = padding_of(mask, q_len, k_len) if q_len == k_len else None
        if not self.wanted(owner, q_len, k_len):
            return Skipped(shape, padding)
        rows = functools.partial(llama_old_rows, head_dim=owner.head_dim, causal=causal)
        if q_len < k_len:  # a decode step: its rows now, never a copy of the cache
            with torch.no_grad():
                return self.finish(rows(query, key, mask))
        repeats = max(1, key.shape[1] // getattr(owner, "num_key_value_heads", key.shape[1]))
        shared = key[:, ::repeats]  # one copy per key head, as the cache holds them; _repeat_keys restores it
        return self.whole(rows, (query, shared), mask, shape, padding)
