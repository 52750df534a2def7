"""What adapters know about timm and transformers: the attention they capture and how to make it eager.

An attention *source* is one library's attention: ``targets()`` (the functions
and the local that holds the post-softmax map), ``switch_globally(undo)`` (for
models built later), ``prepare(module, undo, built)`` (one module of a model
already built) and ``owns(owner)`` (whether a captured call is ours). The
libraries are imported only when an adapter is activated.
"""
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from getlocal.maps import Segment, TokenLayout

from ._labels import parent, square
from ._undo import Undo

Targets = List[Tuple[Callable, str]]


class TimmAttention:
    """timm's ViT ``Attention`` blocks, captured on ``attn``.

    mode='eager' switches the fused path off; mode='fast' leaves ``fused_attn``
    as it is and rebuilds a fused block's map from ``q`` and ``k``.
    ``optional``: a model without timm (a Llama alone) is fine. timm 0.9.x keeps
    ``Attention`` in ``timm.models.vision_transformer``, 1.0.x in ``timm.layers.attention``.
    """

    def __init__(self, optional: bool = False):
        self.optional = optional
        self.classes: tuple = ()
        self.was_fused = False  # whether timm built blocks fused before we switched it off

    def targets(self) -> Targets:
        try:
            import timm.models.vision_transformer  # noqa: F401  (imports timm.layers too)
        except ImportError:
            if not self.optional:
                raise
            self.classes = ()
            return []
        found = []
        for name in ("timm.layers.attention", "timm.models.vision_transformer"):
            cls = getattr(sys.modules.get(name), "Attention", None)
            if cls is not None and cls not in found:
                found.append(cls)
        self.classes = tuple(found)
        return [(cls.forward, "attn") for cls in self.classes]

    def switch_globally(self, undo: Undo) -> None:
        """timm models built from now on take the non-fused path that materialises ``attn``.

        Saved and restored through the module global because ``set_fused_attn`` has
        no getter for the 'experimental' level (2).
        """
        config = sys.modules.get("timm.layers.config")
        self.was_fused = bool(getattr(config, "_USE_FUSED_ATTN", 0))
        if self.was_fused:
            undo.set(config, "_USE_FUSED_ATTN", 0)

    def prepare(self, module, undo: Undo, built: bool) -> None:
        """Put one timm attention block on the path that builds ``attn`` (and say how to undo it)."""
        if not self.owns(module):
            return
        if getattr(module, "fused_attn", False):
            undo.set(module, "fused_attn", False)
        elif built and self.was_fused:  # built while our global switch said "not fused": give it what timm would have
            undo.add(lambda ref=weakref.ref(module): ref() is not None and setattr(ref(), "fused_attn", True))

    def owns(self, owner) -> bool:
        return bool(self.classes) and isinstance(owner, self.classes)

    # -- mode='fast': every block keeps fused_attn as it is (see _keep.keep_timm) ---

    def fast_targets(self, fast) -> List[Tuple[Callable, Tuple[str, ...], Callable]]:
        """``(Attention.forward, locals, keep)``: a non-fused block's ``attn``, a fused one's ``q`` and ``k``."""
        from . import _keep

        found = []
        for func, _ in self.targets():
            present = set(func.__code__.co_varnames)
            found.append((func, tuple(n for n in _keep.TIMM_LOCALS if n in present), fast.keep_timm))
        return found

    def check_fast(self, module, path: str = "") -> None:
        """Raise if ``module`` is a fused timm block whose map ``mode='fast'`` cannot rebuild exactly."""
        if not self.owns(module) or not getattr(module, "fused_attn", False):
            return  # a non-fused block is read as it is
        from . import _keep

        why = _keep.timm_unrebuildable(module)
        if why:
            raise _unsupported(f"{type(module).__name__}{f' ({path})' if path else ''} {why}")


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

    # -- mode='fast': the model keeps its kernel (see _keep) ---------------------

    def fast_targets(self, fast) -> List[Tuple[Callable, Tuple[str, ...], Callable]]:
        """``(function, locals, keep)``: the sdpa kernel's softmax inputs, and each eager kernel's weights."""
        import transformers

        from . import _keep

        try:
            from transformers.integrations import sdpa_attention
        except ImportError:
            sdpa_attention = None
        eager = self.targets()
        old = [func for func, _ in eager if getattr(func, "__name__", "") != "eager_attention_forward"]
        if sdpa_attention is None or old:
            owner = getattr(old[0], "__qualname__", "the attention module").split(".")[0] if old else "the attention"
            raise _unsupported(
                f"transformers {transformers.__version__} computes attention inside {owner}.forward and its "
                f"Sdpa/Flash subclasses, with no attention-interface function whose arguments are the softmax "
                "inputs (transformers >= 4.48 has one)")
        sdpa = sdpa_attention.sdpa_attention_forward
        present = set(sdpa.__code__.co_varnames)
        names = tuple(n for n in _keep.SDPA_LOCALS if n in present)
        return [(sdpa, names, fast.keep_sdpa)] + [(func, _keep.EAGER_LOCALS, fast.keep_eager) for func, _ in eager]

    def check_fast(self, module, path: str = "") -> None:
        """Raise unless ``module`` (one of our attention modules) runs a kernel that mode='fast' rebuilds."""
        config = getattr(module, "config", None)
        if not type(module).__name__.endswith("Attention") or not self.owns(module):
            return
        kernel = getattr(config, "_attn_implementation", None)
        if kernel not in FAST_KERNELS:
            raise _unsupported(
                f"{type(module).__name__}{f' ({path})' if path else ''} runs the {kernel!r} attention kernel, "
                f"whose softmax inputs getlocal does not rebuild yet (it does for {', '.join(map(repr, FAST_KERNELS))})")
        dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        if module.training and dropout > 0 and kernel != "eager":
            raise _unsupported(
                f"{type(module).__name__}{f' ({path})' if path else ''} is in training mode with attention dropout "
                f"{dropout:g}, which its kernel applies at random (no rebuild gives those weights back); call "
                "model.eval()")


#: The transformers kernels whose maps mode='fast' rebuilds exactly (None: a module used alone, eager).
FAST_KERNELS = ("sdpa", "eager", None)


def _unsupported(why: str):
    from getlocal import GetLocalError

    return GetLocalError(
        f"mode='fast' cannot rebuild this model's attention maps: {why}. Use mode='eager' (the default), "
        "which switches the model to eager attention and captures the maps themselves")


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
        if config._attn_implementation_internal != "eager":
            undo.set(config, "_attn_implementation_internal", "eager")
    config_type = type(config).__mro__[-2]  # PretrainedConfig, whatever the version calls it
    for value in list(vars(config).values()):
        if isinstance(value, config_type):
            set_eager(value, model_types, undo, seen)


def timm_layout(path: str, modules: Dict[str, Any], length: int) -> TokenLayout:
    """``[cls, registers, image grid]`` of the timm ViT that holds the block at ``path``."""
    vit = parent(path, modules, "patch_embed")
    cls = int(getattr(vit, "cls_token", None) is not None) if vit is not None else 0
    registers = int(getattr(vit, "num_reg_tokens", 0) or 0) if vit is not None else 0
    patches = length - cls - registers
    grid = tuple(getattr(getattr(vit, "patch_embed", None), "grid_size", None) or ())
    if len(grid) != 2 or grid[0] * grid[1] != patches:  # another input size (dynamic_img_size), or no model at hand
        grid = square(patches)
    return TokenLayout([Segment("cls", 0, cls), Segment("register", cls, cls + registers),
                        Segment("image", cls + registers, length, grid=grid)])
