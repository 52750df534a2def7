"""Measure the attention patterns people usually judge by eye.

Four patterns recur in vision transformers and language models (Kovaleva et
al., EMNLP 2019, "Revealing the Dark Secrets of BERT"; Clark et al., 2019,
"What Does BERT Look At?"): every query attends to the token at one fixed
offset (a *diagonal*: itself at offset 0, the previous token at -1, the next
at +1), to its spatial neighbours (*stripes*: on a flattened ``h x w`` patch
grid the neighbours sit at offsets ``+-1``, ``+-w`` and ``+-w+-1``), every
query attends to the same few keys (*vertical* lines: attention sinks,
[CLS]/[SEP]/BOS, register or high-norm tokens), or queries spread over their
own segment (*block*). This module scores each head for each pattern, adds the
mean attention distance and the normalised entropy, labels the head, and
gathers a model's layers into one :class:`PatternTable`. :func:`kind_shares`
tells how much attention each kind of token (image, text, action, ...) gives
each other kind.

Maps are ``[H, Q, K]`` or ``[B, H, Q, K]`` arrays (numpy or torch, any float
dtype, bfloat16 included); a ``[B, ...]`` map is scored per batch item and the
per-head scores are averaged over the batch. ``Q < K`` is a decode map: query
``i`` sits at key position ``K - Q + i``. Only numpy is imported here.

The package holds input coercion (``inputs``), one module per family of
scores (``_diagonal``, ``_stripes``, ``_vertical``, ``_blocks``, ``_spread``),
the labels (``_heads``), the table (``_table``), the values a map is drawn with
and query heat maps (``display``) and episode summaries (``episodes``); token-kind
shares come from :mod:`getlocal.tokens`. ``inputs``, ``display`` and ``episodes``
are public modules because :mod:`getlocal.plot` draws from them.

>>> import numpy as np
>>> from getlocal import patterns
>>> attn = np.eye(196)[None]                       # one head attending to itself
>>> patterns.classify_heads(attn, grid=(14, 14))
['diagonal']
"""
from ..tokens import KindShares, kind_shares
from ._blocks import block_score
from ._diagonal import diagonal_offset, offset_profile, self_mass
from ._heads import (BLOCK_THRESHOLD, DIAGONAL_THRESHOLD, LABELS, STRIPE_THRESHOLD, VERTICAL_THRESHOLD,
                     classify_heads, head_scores)
from ._spread import attention_entropy, mean_attention_distance, query_key_nmi
from ._stripes import dominant_offsets, neighbour_map, neighbour_mass
from ._table import PatternTable, summarize
from ._vertical import SINK_THRESHOLD, TOP_KEY_FRACTION, received_attention, sink_keys, top_key_mass

__all__ = [
    "PatternTable",
    "summarize",
    "KindShares",
    "kind_shares",
    "head_scores",
    "classify_heads",
    "self_mass",
    "offset_profile",
    "diagonal_offset",
    "block_score",
    "neighbour_map",
    "neighbour_mass",
    "dominant_offsets",
    "received_attention",
    "top_key_mass",
    "sink_keys",
    "query_key_nmi",
    "mean_attention_distance",
    "attention_entropy",
    "LABELS",
    "DIAGONAL_THRESHOLD",
    "STRIPE_THRESHOLD",
    "VERTICAL_THRESHOLD",
    "BLOCK_THRESHOLD",
    "SINK_THRESHOLD",
    "TOP_KEY_FRACTION",
]
