"""transformers' attention-interface functions (>= 4.48): targets, the eager switch, the sdpa kernel's rebuild.

mode='eager' switches every config whose ``model_type`` is ours to eager attention
(read at call time from 4.48 on) and captures ``eager_attention_forward``'s
``attn_weights``. A model that ran sdpa keeps sdpa's masks (``EAGER_AS_SDPA``):
transformers builds a different visibility for each kernel in places (5.24's
PaliGemma without ``token_type_ids``: sdpa's skipped causal mask and the Gemma
layers' ``is_causal=False`` make the prefill bidirectional, eager's
materialised mask makes it causal), and eager mode must change nothing but
rounding. mode='fast' keeps the model's kernel and reads the arguments
of ``sdpa_attention_forward``: ``query`` (after the rotary embedding), ``key``
(the whole cache), the mask and ``scaling``; ``softmax_rows`` rebuilds eager's
weights from them (``repeat_kv``, ``q k^T * scaling + mask`` in the query's
dtype, a boolean mask made additive with the dtype's minimum, softmax in
float32, cast back). An eager kernel's ``attn_weights`` (Gemma 2's soft-capping
included) is read as it is. transformers is imported when an adapter is activated.
"""
import functools
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from .._keep import Keep, random_dropout, repeat_keys, unsupported
from .._undo import Undo
from . import FastTargets, Targets

#: The locals of ``sdpa_attention_forward`` a rebuild needs (those a version lacks are left out).
SDPA_LOCALS = ("query", "key", "attention_mask", "scaling", "is_causal", "q_length", "kv_length", "dropout",
               "position_bias")
EAGER_LOCALS = ("attn_weights",)


class EagerTransformers:
    """transformers attention switched to ``"eager"`` through the config of every model whose type is listed.

    ``functions()`` gives the targets (imports transformers; a subclass may
    override ``targets`` instead); a call is ours when its module's
    ``config.model_type`` is one of ``model_types``.
    """

    def __init__(self, model_types: Sequence[str], functions: Optional[Callable[[], Targets]] = None):
        self.model_types = tuple(model_types)
        self.functions = functions

    def targets(self) -> Targets:
        return self.functions()

    def switch_globally(self, undo: Undo) -> None:
        """Nothing: models built later are switched by their ``post_init``."""

    def prepare(self, module, undo: Undo, built: bool) -> None:
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            set_eager(config, self.model_types, undo)

    def owns(self, owner) -> bool:
        return getattr(getattr(owner, "config", None), "model_type", None) in self.model_types

    # -- mode='fast': the model keeps its kernel -------------------------------

    def fast_targets(self, keeper: Keep) -> FastTargets:
        """``(function, locals, keep)``: the sdpa kernel's softmax inputs, and each eager kernel's weights."""
        import transformers

        try:
            from transformers.integrations import sdpa_attention
        except ImportError:
            sdpa_attention = None
        eager = self.targets()
        old = [func for func, _ in eager if getattr(func, "__name__", "") != "eager_attention_forward"]
        if sdpa_attention is None or old:
            owner = getattr(old[0], "__qualname__", "the attention module").split(".")[0] if old else "the attention"
            raise unsupported(
                f"transformers {transformers.__version__} computes attention inside {owner}.forward and its "
                f"Sdpa/Flash subclasses, with no attention-interface function whose arguments are the softmax "
                "inputs (transformers >= 4.48 has one)")
        sdpa = sdpa_attention.sdpa_attention_forward
        present = set(sdpa.__code__.co_varnames)
        names = tuple(n for n in SDPA_LOCALS if n in present)
        return [(sdpa, names, functools.partial(keep_sdpa, keeper))] + [
            (func, EAGER_LOCALS, keeper.keep_eager) for func, _ in eager]

    def check_fast(self, module, path: str = "") -> None:
        """Raise unless ``module`` (one of our attention modules) runs a kernel that mode='fast' rebuilds."""
        config = getattr(module, "config", None)
        if not type(module).__name__.endswith("Attention") or not self.owns(module):
            return
        kernel = getattr(config, "_attn_implementation", None)
        if kernel not in FAST_KERNELS:
            raise unsupported(
                f"{type(module).__name__}{f' ({path})' if path else ''} runs the {kernel!r} attention kernel, "
                f"whose softmax inputs getlocal does not rebuild yet (it does for {', '.join(map(repr, FAST_KERNELS))})")
        dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        if module.training and dropout > 0 and kernel != "eager":
            raise unsupported(
                f"{type(module).__name__}{f' ({path})' if path else ''} is in training mode with attention dropout "
                f"{dropout:g}, which its kernel applies at random (no rebuild gives those weights back); call "
                "model.eval()")


#: The transformers kernels whose maps mode='fast' rebuilds exactly (None: a module used alone, eager).
FAST_KERNELS = ("sdpa", "eager", None)


def pretrained_class():
    """transformers' ``PreTrainedModel`` if transformers is imported, else None."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


def set_eager(config, model_types: Sequence[str], undo: Undo, seen=None) -> None:
    """Switch ``config`` and every config nested in it whose model_type is ours to eager attention.

    transformers reads ``config._attn_implementation`` at call time from 4.48 on
    (attention function and mask); ``_attn_implementation_internal`` is where
    every version from 4.36 keeps it, and setting it directly skips the checks
    that would reject a switch on models that cannot do it dynamically.
    """
    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    if getattr(config, "model_type", None) in model_types and hasattr(config, "_attn_implementation_internal"):
        kernel = config._attn_implementation_internal
        if kernel != eager_kernel(kernel):
            undo.set(config, "_attn_implementation_internal", eager_kernel(kernel))
    config_type = type(config).__mro__[-2]  # PretrainedConfig, whatever the version calls it
    for value in list(vars(config).values()):
        if isinstance(value, config_type):
            set_eager(value, model_types, undo, seen)


#: The kernel name eager mode gives a model that ran sdpa: sdpa's masks, the model's own eager kernel.
EAGER_AS_SDPA = "getlocal_eager_as_sdpa"


def eager_kernel(kernel: Optional[str]) -> str:
    """The kernel name mode='eager' gives a config that runs ``kernel``.

    ``EAGER_AS_SDPA`` for sdpa where transformers builds masks per kernel
    (>= 4.53), else ``"eager"``.
    """
    if kernel in ("eager", EAGER_AS_SDPA):
        return kernel
    return EAGER_AS_SDPA if kernel == "sdpa" and _register_eager_as_sdpa() else "eager"


def _register_eager_as_sdpa() -> bool:
    """Register ``EAGER_AS_SDPA`` with transformers (>= 4.53: a mask interface per kernel); False before."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return False
    if "sdpa" not in ALL_MASK_ATTENTION_FUNCTIONS:
        return False
    # A name only configs switched by us carry: registering it changes nothing for any other model.
    ALL_MASK_ATTENTION_FUNCTIONS.register(EAGER_AS_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    ALL_ATTENTION_FUNCTIONS.register(EAGER_AS_SDPA, _eager_as_sdpa)
    return True


def _eager_as_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                  **kwargs):
    """The module's own ``eager_attention_forward`` on the keys sdpa would let each query see.

    ``attention_mask`` is sdpa's (None, boolean, or a 4-D float mask passed in);
    None means ``is_causal`` (else the module's) decides, as in
    ``sdpa_attention_forward``; a query that sees no key gets sdpa's 0
    output (its weights stay eager's). A module whose modeling file has no
    eager kernel runs sdpa as before (nothing captured, the forward unchanged).
    """
    import torch

    eager = _eager_kernel(type(module))
    if eager is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    mask = _additive_mask(attention_mask, causal, query.shape[2], key.shape[2], query.dtype, query.device)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling  # sdpa's default; eager needs one
    out, weights = eager(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    if attention_mask is not None and attention_mask.dtype == torch.bool and out.shape[1] == query.shape[2]:
        # A query that sees no key (left padding): sdpa gives it 0, eager's softmax the mean of every value.
        blind = ~attention_mask[..., :key.shape[2]].any(-1)  # [B, 1 or H, Q]
        if bool(blind.any()):
            out = out.masked_fill(blind.transpose(1, 2)[..., None], 0)  # out: [B, Q, H, D]
    return out, weights


def _eager_kernel(module_type) -> Optional[Callable]:
    # The function the module's forward calls when its config says "eager": its modeling file's (or a base class's).
    for cls in module_type.__mro__:
        kernel = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if kernel is not None:
            return kernel
    return None


def _additive_mask(mask, causal: bool, q_len: int, k_len: int, dtype, device):
    """sdpa's visibility as the additive mask eager adds to its scores (None: every key seen).

    ``causal`` (sdpa's ``is_causal``) is aligned to the top left; a boolean mask
    becomes 0 where seen and the dtype's minimum elsewhere, as transformers'
    eager mask; a float mask is already additive.
    """
    import torch

    if mask is None and causal:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def keep_sdpa(keeper: Keep, owner, values: Dict[str, Any]):
    """One call of ``sdpa_attention_forward``, kept through ``Keep.keep_inputs`` with ``softmax_rows``."""
    if values.get("dropout"):  # put in training after activation: warned and skipped by get_local
        raise random_dropout(owner, values["dropout"])
    if values.get("position_bias") is not None:
        raise unsupported(f"{type(owner).__name__} adds a position bias to its scores, which the rebuild does not")
    query, key = values["query"], values["key"]
    mask = values.get("attention_mask")
    q_len = values.get("q_length", query.shape[2])
    if query.shape[2] != q_len:  # pack_gqa folded the heads of one query: [B, H/n, n, D]
        query = query.reshape(query.shape[0], -1, q_len, query.shape[-1])
    if mask is not None and mask.shape[-2] != q_len and mask.shape[-2] != 1:
        mask = mask.reshape(mask.shape[0], -1, q_len, mask.shape[-1])
    kv_length = values.get("kv_length", key.shape[2])
    causal = bool(values.get("is_causal", False)) and mask is None
    rows = functools.partial(softmax_rows, scaling=values.get("scaling"), causal=causal, kv_length=kv_length)
    return keeper.keep_inputs(owner, query, key, mask, rows, kv_length)


def softmax_rows(query, key, mask, scaling, causal: bool, kv_length: int):
    """Eager's attention weights ``[B, H, Q, kv_length]`` from the softmax inputs of one call."""
    import torch

    q_len = query.shape[2]
    key = repeat_keys(key, query.shape[1])  # grouped-query keys, shared as repeat_kv shares them
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    k_len = key.shape[2]
    mask = _additive_mask(mask, causal, q_len, k_len, scores.dtype, query.device)
    if mask is not None:
        scores = scores + mask[..., :k_len]
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if kv_length > k_len:  # sdpa cut the keys no query could see (prefill into a longer static cache)
        weights = torch.nn.functional.pad(weights, (0, kv_length - k_len))
    return weights
