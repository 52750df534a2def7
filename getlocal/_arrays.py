"""Attention arrays in: any captured value as a checked float numpy array.

>>> import numpy as np
>>> as_attention(np.eye(3)[None]).shape            # [H, Q, K] gains a batch axis
(1, 1, 3, 3)

The one place that decides what an attention map may be (numpy or torch, any
float dtype, bfloat16 included; ``[H, Q, K]`` or ``[B, H, Q, K]``; after the
softmax), shared by the token-kind shares of the data layer and by the scores
of :mod:`getlocal.patterns`. Only numpy is imported here.
"""
from __future__ import annotations

import math

import numpy as np

from ._convert import converter
from ._errors import ArgumentError

_to_numpy = converter("numpy")


def as_array(value, name: str = "attn") -> np.ndarray:
    """A float numpy array from numpy, torch (any dtype, any device) or array-likes."""
    value = _to_numpy(value)  # what get_local stores by default: detached, CPU, bf16/f16 as float32
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - depends on the foreign object
        raise ArgumentError(f"{name} must be an array (numpy or torch); got {type(value).__name__}") from exc
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif not np.issubdtype(arr.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ArgumentError(f"{name} must hold numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def as_attention(attn, name: str = "attn") -> np.ndarray:
    """``attn`` as a checked ``[B, H, Q, K]`` float array."""
    arr = as_array(attn, name)
    if arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise ArgumentError(
            f"{name} must be [H, Q, K] or [B, H, Q, K]; got shape {tuple(arr.shape)}; "
            f"add a head axis with attn[None] for a single [Q, K] map"
        )
    q, k = arr.shape[-2:]
    if 0 in arr.shape:
        raise ArgumentError(f"{name} is empty: shape {tuple(arr.shape)}")
    if q > k:
        raise ArgumentError(
            f"{name} has more queries (Q={q}) than keys (K={k}); maps are [..., Q, K] with "
            f"query i at key position K - Q + i; transpose the last two axes if they are swapped"
        )
    lowest = arr.min()
    if not np.isfinite(lowest) or not np.all(np.isfinite(arr)):
        raise ArgumentError(f"{name} holds NaN or inf; pass attention probabilities (after softmax)")
    if lowest < 0:
        raise ArgumentError(
            f"{name} must be non-negative attention probabilities; got a minimum of {float(lowest):.4g}; "
            f"pass the map after softmax, not the scores (logits)"
        )
    return arr


def plain_float(x):
    """A float for JSON: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x
