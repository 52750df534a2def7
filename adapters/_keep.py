"""What each captured attention call keeps: the selection, and the shared half of ``mode='fast'``'s rebuilds.

``Keep`` holds one activation's choice and gives ``get_local(..., keep=)`` its
functions, which see a call's locals as it returns and keep only what was
asked for, before anything is copied off the model's device: towers and
layers (a call left out is kept as ``Skipped``: its shape, for the labels),
query rows (``'generated'``/``'action'``, or indices, kept as ``Rows``), heads
(mean, max, indices) and dtype. In ``mode='eager'`` with a selection,
``keep_eager`` applies it to the eager weights.

In ``mode='fast'`` the model keeps its kernel and each attention source
(``sources/``) reads its kernel's softmax inputs and hands them to
``Keep.keep_inputs`` with its ``rows`` function: the eager kernel's own
arithmetic for that library and version (``sources.timm.timm_rows``,
``sources.transformers.softmax_rows``, ``sources.llama_old.llama_old_rows``).

What is held per call: a step over cached keys (decode, Pi0's denoising suffix)
computes its rows at once, so no copy of the key cache is kept per step; any
other call keeps its map now if that is no larger than its query and key (a
short prompt, a head-reduced map), else query, key (one copy per key head) and
the mask (one copy per mask object, shared by the layers of a forward) as a
``Rebuild``, computed on the first read of ``AttentionMap.array``, which then
replaces its inputs (``AttentionMap.compute()`` computes it and keeps nothing).
torch is imported where a call is kept, not with the adapters.
"""
import math
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from getlocal import GetLocalError
from getlocal.maps import Lazy


class Skipped(Lazy):
    """A call the selection leaves out: its shape (for labelling) and its prompt padding, no data."""

    def __init__(self, shape, padding):
        self.shape, self.padding = tuple(shape), padding

    @property
    def nbytes(self) -> int:
        return 0 if self.padding is None else int(self.padding.nbytes)

    def materialize(self):  # nothing was kept: saving the cache writes None for this call
        return None

    def parts(self):
        return (self.padding,)


class Rows(Lazy):
    """The rows a selection by index kept of one call: ``value`` ``[B, H, len(rows), K]`` and which rows.

    ``rows`` index the call's ``queries`` query rows; ``padding`` as ``Skipped``'s.
    """

    def __init__(self, value, rows, queries: int, padding=None):
        self.value, self.rows, self.queries, self.padding = value, tuple(int(r) for r in rows), queries, padding
        self.shape = tuple(value.shape)

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes) + (0 if self.padding is None else int(self.padding.nbytes))

    def materialize(self):
        return self.value

    def parts(self):
        return (self.value, self.padding)


class Rebuild(Lazy):
    """The softmax inputs of one call; its map ``rows(*inputs)`` computed on first read (see the module doc)."""

    def __init__(self, rows: Callable[..., Any], inputs: Tuple[Any, ...], shape, finish, padding):
        self.rows, self.inputs, self.shape = rows, inputs, tuple(shape)
        self.finish, self.padding = finish, padding

    @property
    def nbytes(self) -> int:
        import torch

        held = [t for t in self.inputs if isinstance(t, torch.Tensor)]
        result = getattr(self, "result", None)
        return (sum(t.numel() * t.element_size() for t in held) + (0 if result is None else int(result.nbytes))
                + (0 if self.padding is None else int(self.padding.nbytes)))

    def materialize(self):
        if self.inputs:  # computed once: the map replaces its inputs here too, so the cache holds one of them
            self.result = self.compute()
            self.inputs = ()
        return self.result

    def compute(self):
        """The map computed from the inputs, which stay (a rollout reads each map once and lets it go)."""
        import torch

        if not self.inputs:
            return self.result
        with torch.no_grad():
            return self.finish(self.rows(*self.inputs))

    def parts(self):
        return self.inputs + (self.padding, getattr(self, "result", None))


def repeat_keys(key, heads: int):
    """``key`` ``[B, Hk, K, D]`` with each head repeated for the ``heads // Hk`` query heads sharing it (repeat_kv)."""
    b, hk, k_len, d = key.shape
    if hk == heads:
        return key
    return key[:, :, None].expand(b, hk, heads // hk, k_len, d).reshape(b, heads, k_len, d)


def one_per_key_head(key, heads: int, owner):
    """``key`` after ``repeat_kv`` (a copy per query head) as the cache holds it; ``repeat_keys`` restores it.

    Keys that were not repeated (sdpa's own grouped-query path) are returned as they are.
    """
    groups = getattr(owner, "num_key_value_groups", 1)
    repeated = isinstance(groups, int) and groups > 1 and key.shape[1] == heads
    return key[:, ::groups] if repeated else key


def unsupported(why: str) -> GetLocalError:
    """The refusal of ``mode='fast'``, saying why and the way out."""
    return GetLocalError(
        f"mode='fast' cannot rebuild this model's attention maps: {why}. Use mode='eager' (the default), "
        "which switches the model to eager attention and captures the maps themselves")


def random_dropout(owner, p: float) -> GetLocalError:
    return unsupported(f"{type(owner).__name__} ran its kernel with attention dropout {p:g}, which is random "
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

    The same rule ``_labels.prompt_padding`` applies to eager maps (a zero column), read off the mask.
    """
    if mask is None:
        return None
    import torch

    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    visible = visible[..., -q_len:, :k_len].reshape(visible.shape[0], -1, q_len, k_len).any(1)  # [B, Q, K]
    seeing = visible.any(-1, keepdim=True)  # rows whose keys are not all masked
    hidden = (~visible | ~seeing).all(1)
    return hidden.cpu().numpy() if bool(hidden.any()) else None


def padding_of_weights(weights):
    """``[B, K]`` numpy bool: the keys that eager ``weights`` give exactly 0 (or a uniform row), or None."""
    w = weights.float()
    uniform = w.amax(-1, keepdim=True) == w.amin(-1, keepdim=True)
    hidden = ((w == 0) | uniform).all(1).all(1)  # [B, K]
    return hidden.cpu().numpy() if bool(hidden.any()) else None


def _padding_queries(weights, padding, positions):
    """``(items, rows)`` index lists of the padding queries of ``weights`` ``[B, H, Q, K]``, or None.

    A padding query is a query row at a position that ``padding`` (``[B, K]``
    bool, the prompt's padding) marks whose every key is masked: eager's
    softmax gives it 1/K over every key, future ones included, the same value in
    every head (the mask's ``finfo.min`` swallows the scores), where torch's
    sdpa kernel gives it 0. ``positions``: the key position of each query row.
    Rows already 0 are not listed. A real token is never listed: it sees itself
    or its row holds the 0 of its own masked key beside positive weights, so
    it is not uniform. The same test in both modes, on the same arithmetic, so
    eager and fast maps stay equal.
    """
    import numpy as np

    if padding is None:
        return None
    positions = np.asarray(positions, dtype=np.int64)
    pad = np.asarray(padding, dtype=bool)
    inside = positions < pad.shape[-1]
    candidates = np.zeros((pad.shape[0], len(positions)), dtype=bool)
    candidates[:, inside] = pad[:, positions[inside]]
    items, rows = np.nonzero(candidates)
    if not len(items):
        return None
    items, rows = items.tolist(), rows.tolist()
    picked = weights[items, :, rows, :]  # [N, H, K]
    if hasattr(picked, "detach"):
        picked = picked.detach().float().cpu().numpy()
    flat = np.asarray(picked, dtype=np.float32).reshape(len(items), -1)
    top = flat.max(1)
    blind = (top == flat.min(1)) & (top != 0)
    if not blind.any():
        return None
    return [i for i, b in zip(items, blind) if b], [r for r, b in zip(rows, blind) if b]


def blank_padding_queries(weights, padding, positions, own: bool = False):
    """``weights`` with the rows of its padding queries (``_padding_queries``) set to exactly 0.

    0 and not NaN: torch's sdpa kernel outputs 0 for a query whose every key
    is masked; 0 is what ``getlocal.tokens.visible_until`` reads as "sees nothing" (-1), and it
    keeps sums, means over heads or batch items, and plots finite; NaN would
    poison every one of them. The weights are copied first unless ``own``
    (a map computed here, not the model's tensor). Returns ``weights`` itself
    when nothing is to be changed.
    """
    found = _padding_queries(weights, padding, positions)
    if found is None:
        return weights
    if not own:
        weights = weights.clone() if hasattr(weights, "clone") else weights.copy()
    items, rows = found
    weights[items, :, rows, :] = 0
    return weights


def _blanking(rows: Callable[..., Any], padding) -> Callable[..., Any]:
    """``rows`` whose result has its padding queries' rows set to 0 (``blank_padding_queries``), as eager's are."""
    def blanked(*inputs):
        weights = rows(*inputs)
        return blank_padding_queries(weights, padding, range(weights.shape[-2]), own=True)

    return blanked


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
        import torch

        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.narrow = self.numpy and self.dtype == torch.float16
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
        import torch

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
        import torch

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
        if self.narrow:  # convert='numpy' widens half precision; dtype= said not to
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

    def keep_eager(self, owner, values: Dict[str, Any]):
        """An eager kernel's weights (its one captured local: ``attn_weights``, timm's ``attn``), selected."""
        weights = next(iter(values.values()), None)
        if weights is None or getattr(weights, "ndim", 0) != 4:
            return None
        q_len, k_len = weights.shape[-2:]
        wanted = self.wanted(owner, q_len, k_len)
        padding = padding_of_weights(weights) if q_len == k_len and (self._by_index() or not wanted) else None
        if not wanted:
            return Skipped(self.kept_shape(weights.shape[0], weights.shape[1], q_len, k_len), padding)
        return self.finish(weights, padding)

    def keep_inputs(self, owner, query, key, mask, rows: Callable[..., Any], kv_length: Optional[int] = None):
        """One kernel call from its softmax inputs: ``Skipped``, a step's rows now, or the whole call (``whole``).

        ``query`` ``[B, H, Q, D]``, ``key`` ``[B, Hk or H, K, D]`` (the whole cache),
        ``mask`` as the kernel received it and ``rows(query, key, mask)`` the
        source's eager arithmetic; ``kv_length``: the keys the map has, where
        the kernel was given fewer than that (sdpa cuts a static cache).
        """
        import torch

        q_len, kv_length = query.shape[2], key.shape[2] if kv_length is None else kv_length
        shape = self.kept_shape(query.shape[0], query.shape[1], q_len, kv_length)
        padding = padding_of(mask, q_len, key.shape[2]) if q_len == kv_length else None
        if not self.wanted(owner, q_len, kv_length):
            return Skipped(shape, padding)
        if padding is not None:  # a padded prompt: its padding queries' rows 0, as collect() gives eager's
            rows = _blanking(rows, padding)
        if q_len < kv_length:  # a step over cached keys: its rows now, never a copy of the cache
            with torch.no_grad():
                return self.finish(rows(query, key, mask), padding)
        return self.whole(rows, (query, one_per_key_head(key, query.shape[1], owner)), mask, shape, padding)


def layer_picked(layer: int, count: int, layers) -> bool:
    """Whether ``layer`` of a tower of ``count`` layers is one of ``layers`` (None: all; negative: from the end)."""
    return layers is None or any(layer == (n if n >= 0 else count + n) for n in layers)
