"""What each captured attention call keeps: the selection, and ``mode='fast'``'s rebuild from the kernel's inputs.

``Keep`` holds one activation's choice and gives ``get_local(..., keep=)`` its
functions, which see a call's locals as it returns and keep only what was
asked for, before anything is copied off the model's device: towers and
layers (a call left out is kept as ``Skipped``: its shape, for the labels),
query rows (``'generated'``/``'action'``, or indices, kept as ``Rows``), heads
(mean, max, indices) and dtype. In ``mode='eager'`` with a selection,
``keep_eager`` applies it to the eager weights.

In ``mode='fast'`` the model keeps its kernel and the map is rebuilt from the
kernel's inputs with the eager kernel's own arithmetic, per library:

* transformers >= 4.48 calls one function per kernel (``sdpa_attention_forward``)
  with ``query`` (after the rotary embedding), ``key`` (the whole cache), the mask
  and ``scaling``: ``keep_sdpa``, rebuilt by ``softmax_rows`` (``repeat_kv``,
  ``q k^T * scaling + mask`` in the query's dtype, a boolean mask made additive
  with the dtype's minimum, softmax in float32, cast back); an eager kernel's
  ``attn_weights`` (Gemma 2's soft-capping included) is read as it is;
* before 4.48 (OpenVLA pins 4.40.1) the attention class is the kernel:
  ``keep_llama_old`` reads ``LlamaSdpaAttention.forward``'s locals, rebuilt by
  ``llama_old_rows`` (that version divides by ``sqrt(head_dim)``);
* timm's fused blocks: ``keep_timm`` reads ``q`` and ``k``, rebuilt by
  ``timm_rows`` (query scaled first, softmax in the scores' dtype).

What is held per call: a step over cached keys (decode, Pi0's denoising suffix)
computes its rows at once, so no copy of the key cache is kept per step; any
other call keeps its map now if that is no larger than its query and key (a
short prompt, a head-reduced map), else query, key (one copy per key head) and
the mask (one copy per mask object, shared by the layers of a forward) as a
``Rebuild``, computed on the first read of ``AttentionMap.array``, which then
replaces its inputs. Only torch code here; imported when an adapter needs it.
"""
import functools
import math
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from getlocal.maps import Lazy

from ._labels import Rows, Skipped, layer_picked

#: The locals of ``sdpa_attention_forward`` a rebuild needs (those a version lacks are left out).
SDPA_LOCALS = ("query", "key", "attention_mask", "scaling", "is_causal", "q_length", "kv_length", "dropout",
               "position_bias")
EAGER_LOCALS = ("attn_weights",)
#: The locals of ``LlamaAttention.forward`` / ``LlamaSdpaAttention.forward`` (transformers < 4.48) a rebuild needs.
LLAMA_OLD_LOCALS = ("query_states", "key_states", "attention_mask", "is_causal", "attn_weights")


class Rebuild(Lazy):
    """The softmax inputs of one call; its map ``rows(*inputs)`` computed on first read (see the module doc)."""

    def __init__(self, rows: Callable[..., Any], inputs: Tuple[Any, ...], shape, finish, padding):
        self.rows, self.inputs, self.shape = rows, inputs, tuple(shape)
        self.finish, self.padding = finish, padding

    @property
    def nbytes(self) -> int:
        held = [t for t in self.inputs if isinstance(t, torch.Tensor)]
        result = getattr(self, "result", None)
        return (sum(t.numel() * t.element_size() for t in held) + (0 if result is None else int(result.nbytes))
                + (0 if self.padding is None else int(self.padding.nbytes)))

    def materialize(self):
        if self.inputs:  # computed once: the map replaces its inputs here too, so the cache holds one of them
            with torch.no_grad():
                self.result = self.finish(self.rows(*self.inputs))
            self.inputs = ()
        return self.result

    def parts(self):
        return self.inputs + (self.padding, getattr(self, "result", None))


def softmax_rows(query, key, mask, scaling, causal: bool, kv_length: int):
    """Eager's attention weights ``[B, H, Q, kv_length]`` from the softmax inputs of one call."""
    q_len = query.shape[2]
    key = _repeat_keys(key, query.shape[1])  # grouped-query keys, shared as repeat_kv shares them
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


def _one_per_key_head(key, heads: int, owner):
    """``key`` after ``repeat_kv`` (a copy per query head) as the cache holds it; ``_repeat_keys`` restores it.

    Keys that were not repeated (sdpa's own grouped-query path) are returned as they are.
    """
    groups = getattr(owner, "num_key_value_groups", 1)
    repeated = isinstance(groups, int) and groups > 1 and key.shape[1] == heads
    return key[:, ::groups] if repeated else key


def _random_dropout(owner, p: float):
    from ._libraries import _unsupported

    return _unsupported(f"{type(owner).__name__} ran its kernel with attention dropout {p:g}, which is random "
                        "(training mode; call model.eval())")


def reduce_heads(weights, heads):
    """``weights`` as they are, the heads listed, or their mean / max over heads in float32 (``[B, 1, Q, K]``)."""
    if heads is None:
        return weights
    if not isinstance(heads, str):
        return weights[:, list(heads)]
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


class Keep:
    """The ``keep`` functions of one activation: what each call holds, given the selection.

    Used by ``mode='fast'`` (its kernels' softmax inputs) and by ``mode='eager'``
    with a selection (the eager weights). The selection is applied before
    anything is copied off the model's device: ``towers``/``layers`` (a call
    that ``place(owner)`` puts elsewhere is kept as ``Skipped``, for labels),
    ``queries`` (``'generated'``/``'action'``: the calls over cached keys; row
    indices: those rows, kept as ``Rows``), ``heads`` (``'mean'``/``'max'`` in
    float32, or head indices) and ``dtype``.
    """

    def __init__(self, convert: Callable[[Any], Any], to_host: bool, queries=None, heads=None,
                 numpy: bool = False, towers=None, layers=None, dtype=None,
                 place: Callable[[Any], Optional[Tuple[str, int, int]]] = lambda owner: None):
        self.convert, self.to_host, self.queries, self.heads = convert, to_host, queries, heads
        self.numpy = numpy  # convert='numpy': half-precision maps are kept as float32 (unless dtype= says)
        self.towers, self.layers, self.place = towers, layers, place
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
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
        if self.dtype is not None:
            size = self.dtype.itemsize
        elif isinstance(self.heads, str) or (self.numpy and dtype in (torch.float16, torch.bfloat16)):
            size = 4
        else:
            size = dtype.itemsize
        return math.prod(shape) * size

    def whole(self, rows: Callable[..., Any], inputs: Tuple[Any, ...], mask, shape, padding):
        """A call whose every row is kept: its map now if that is no larger than its inputs, else a ``Rebuild``.

        ``inputs`` are the tensors ``rows(*inputs, mask)`` needs besides the mask
        (query and key at OpenVLA's prefill length are about the size of the map;
        a head-reduced map, a few rows, or a short prompt is smaller than they are).
        """
        held = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        if self._by_index() or self._map_bytes(shape, inputs[0].dtype) <= held:
            with torch.no_grad():
                return self.finish(rows(*inputs, mask), padding)
        kept = tuple(self._hold(t) if isinstance(t, torch.Tensor) else t for t in inputs)
        return Rebuild(rows, kept + (self._hold_mask(mask),), shape, self.finish, padding)

    def _by_index(self) -> bool:
        return self.queries is not None and not isinstance(self.queries, str)

    def _rows(self, q_len: int) -> Optional[list]:
        """The row indices ``queries=`` keeps of a call with ``q_len`` rows (None: every row)."""
        if not self._by_index():
            return None
        if isinstance(self.queries, slice):
            return list(range(q_len))[self.queries]
        return list(dict.fromkeys(i % q_len for i in self.queries if -q_len <= i < q_len))  # 0 and -1 of one row: once

    def finish(self, weights, padding=None):
        """What is kept of a map computed now: the selection applied, then ``convert``."""
        weights = weights.detach()
        q_len = weights.shape[-2]
        rows = self._rows(q_len)
        if rows is not None:
            weights = weights[..., rows, :]
        weights = reduce_heads(weights, self.heads)
        if self.dtype is not None:
            weights = weights.to(self.dtype)
        value = self.convert(weights)
        if self.dtype == torch.float16 and self.numpy:  # convert='numpy' widens half precision; dtype= said not to
            value = value.astype("float16")
        return value if rows is None else Rows(value, rows, q_len, padding)

    def kept_shape(self, batch: int, heads: int, q_len: int, k_len: int) -> Tuple[int, int, int, int]:
        """The shape labels see: heads as kept, every query row (``Rows`` says which were kept)."""
        kept = heads if self.heads is None else 1 if isinstance(self.heads, str) else len(self.heads)
        return (batch, kept, q_len, k_len)

    def wanted(self, owner, q_len: int, k_len: int) -> bool:
        """Whether the selection keeps anything of this call (else it is kept as ``Skipped``, for labels)."""
        if isinstance(self.queries, str) and q_len >= k_len:  # 'generated'/'action': steps over cached keys only
            return False
        if self._by_index() and not self._rows(q_len):
            return False
        if self.towers is None and self.layers is None:
            return True
        where = self.place(owner)
        if where is None:  # a module no model we prepared holds: kept, and collect() decides by its labels
            return True
        tower, layer, count = where
        if self.towers is not None and tower not in self.towers:
            return False
        return layer_picked(layer, count, self.layers)

    def keep_sdpa(self, owner, values: Dict[str, Any]):
        if values.get("dropout"):  # put in training after activation: warned and skipped by get_local
            raise _random_dropout(owner, values["dropout"])
        if values.get("position_bias") is not None:
            from ._libraries import _unsupported

            raise _unsupported(f"{type(owner).__name__} adds a position bias to its scores, which the rebuild does not")
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
                return self.finish(rows(query, key, mask), padding)
        return self.whole(rows, (query, _one_per_key_head(key, query.shape[1], owner)), mask, shape, padding)

    def keep_eager(self, owner, values: Dict[str, Any]):
        """An eager kernel's weights (its one captured local: ``attn_weights``, timm's ``attn``), selected."""
        weights = next(iter(values.values()), None)
        if weights is None or getattr(weights, "ndim", 0) != 4:
            return None
        q_len, k_len = weights.shape[-2:]
        wanted = self.wanted(owner, q_len, k_len)
        padding = _padding_of_weights(weights) if q_len == k_len and (self._by_index() or not wanted) else None
        if not wanted:
            return Skipped(self.kept_shape(weights.shape[0], weights.shape[1], q_len, k_len), padding)
        return self.finish(weights, padding)

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
            return self.keep_eager(owner, {"attn_weights": values["attn_weights"]})
        query, key = values.get("query_states"), values.get("key_states")
        if query is None or key is None:
            return None
        dropout = float(getattr(owner, "attention_dropout", 0.0) or 0.0) if owner.training else 0.0
        if dropout:  # put in training after activation: warned and skipped by get_local, never a wrong map
            raise _random_dropout(owner, dropout)
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
                return self.finish(rows(query, key, mask), padding)
        return self.whole(rows, (query, _one_per_key_head(key, query.shape[1], owner)), mask, shape, padding)

    def keep_timm(self, owner, values: Dict[str, Any]):
        """One call of timm's ``Attention.forward``: ``attn`` as it is if the block ran non-fused, else rebuilt.

        A fused block leaves ``q`` (unscaled) and ``k`` as they entered
        ``scaled_dot_product_attention``, with ``attn_mask`` and ``is_causal`` where
        the version has them; the rebuild is ``timm_rows``. A vision tower has no
        prompt padding, so none is kept.
        """
        attn = values.get("attn")
        if attn is not None:  # the user's block runs non-fused: the map itself
            if not self.wanted(owner, attn.shape[-2], attn.shape[-1]):
                return Skipped(self.kept_shape(*attn.shape), None)
            return self.finish(attn)
        q, k = values.get("q"), values.get("k")
        if q is None or k is None:
            return None
        why = timm_unrebuildable(owner)
        if why:  # switched after activation (check_fast saw it fine): warned and skipped by get_local, never wrong
            from ._libraries import _unsupported

            raise _unsupported(f"{type(owner).__name__} {why}")
        shape = self.kept_shape(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if not self.wanted(owner, q.shape[2], k.shape[2]):
            return Skipped(shape, None)
        causal = bool(values.get("is_causal", False))
        mask = None if causal else values.get("attn_mask")  # timm's causal mask takes precedence over any other
        rows = functools.partial(timm_rows, scale=owner.scale, causal=causal)
        return self.whole(rows, (q, k), mask, shape, None)


# -- timm ----------------------------------------------------------------------

#: The locals of timm's ``Attention.forward`` that ``keep_timm`` reads (those a version lacks are left out):
#: ``attn`` is bound only when the block ran non-fused; ``attn_mask``/``is_causal`` exist from timm 1.0.
TIMM_LOCALS = ("attn", "q", "k", "attn_mask", "is_causal")


def timm_rows(q, k, mask, *, scale: float, causal: bool = False):
    """timm's non-fused attention weights ``[B, H, N, N]`` from one block's unscaled query and key.

    The arithmetic of ``Attention.forward`` with ``fused_attn`` off, so that a map
    equals what eager mode captures from the same weights: the query scaled before
    the product; the mask as timm 1.0 resolves it (causal: ``-inf`` above the
    diagonal; boolean: ``-inf`` where False, as sdpa reads it; float: added as it
    is); the softmax in the scores' own dtype, not float32 as transformers does.
    """
    scores = (q * scale) @ k.transpose(-2, -1)
    if causal:
        n = scores.shape[-1]
        mask = scores.new_full((n, n), float("-inf")).triu_(1)
    elif mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill_(~mask, float("-inf"))
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1)


def timm_unrebuildable(module) -> Optional[str]:
    """Why the fused kernel of a timm attention block ran arithmetic that ``timm_rows`` cannot repeat, or None.

    In training, with attention dropout, sdpa drops weights at random: no rebuild
    gives those weights back, and the map before dropout is not the one eager
    mode captures. The fused call passes no scale, so sdpa uses
    ``head_dim ** -0.5`` whatever ``module.scale`` says.
    """
    p = float(getattr(getattr(module, "attn_drop", None), "p", 0.0) or 0.0)
    if module.training and p > 0:
        return (f"is in training mode with attention dropout p={p:g}, which the fused kernel applies at random "
                "(no rebuild gives those weights back); call model.eval(), or set fused_attn = False on it "
                "(fast mode then reads its map as it is)")
    head_dim = getattr(module, "head_dim", None)
    scale = getattr(module, "scale", None)
    if isinstance(head_dim, int) and scale is not None and scale != head_dim ** -0.5:
        return (f"has scale={scale!r}, but its fused kernel uses head_dim ** -0.5 = {head_dim ** -0.5!r}; "
                "set fused_attn = False on it (fast mode then reads its map as it is)")
    return None
