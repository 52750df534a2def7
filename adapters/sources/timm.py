"""timm's ViT ``Attention``: its targets, its switch (``fused_attn``) and fast mode's rebuild of a fused block.

timm 0.9.x keeps ``Attention`` in ``timm.models.vision_transformer``, 1.0.x in
``timm.layers.attention``; timm is imported when an adapter is activated.
Also the token layout of a timm ViT (``timm_layout``): cls, registers, image grid.
"""
import functools
import sys
import weakref
from typing import Any, Dict, Optional

from getlocal.maps import Segment, TokenLayout

from .._keep import Keep, Skipped, unsupported
from .._labels import parent, square
from .._undo import Undo
from . import FastTargets, Targets

#: The locals of timm's ``Attention.forward`` that ``keep_timm`` reads (those a version lacks are left out):
#: ``attn`` is bound only when the block ran non-fused; ``attn_mask``/``is_causal`` exist from timm 1.0.
TIMM_LOCALS = ("attn", "q", "k", "attn_mask", "is_causal")


class TimmAttention:
    """timm's ViT ``Attention`` blocks, captured on ``attn``.

    mode='eager' switches the fused path off; mode='fast' leaves ``fused_attn``
    as it is and rebuilds a fused block's map from ``q`` and ``k``.
    ``optional``: a model without timm (a Llama alone) is fine.
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

    # -- mode='fast': every block keeps fused_attn as it is ---------------------

    def fast_targets(self, keeper: Keep) -> FastTargets:
        """``(Attention.forward, locals, keep)``: a non-fused block's ``attn``, a fused one's ``q`` and ``k``."""
        found = []
        for func, _ in self.targets():
            present = set(func.__code__.co_varnames)
            found.append((func, tuple(n for n in TIMM_LOCALS if n in present), functools.partial(keep_timm, keeper)))
        return found

    def check_fast(self, module, path: str = "") -> None:
        """Raise if ``module`` is a fused timm block whose map ``mode='fast'`` cannot rebuild exactly."""
        if not self.owns(module) or not getattr(module, "fused_attn", False):
            return  # a non-fused block is read as it is
        why = timm_unrebuildable(module)
        if why:
            raise unsupported(f"{type(module).__name__}{f' ({path})' if path else ''} {why}")


def keep_timm(keeper: Keep, owner, values: Dict[str, Any]):
    """One call of timm's ``Attention.forward``: ``attn`` as it is if the block ran non-fused, else rebuilt.

    A fused block leaves ``q`` (unscaled) and ``k`` as they entered
    ``scaled_dot_product_attention``, with ``attn_mask`` and ``is_causal`` where
    the version has them; the rebuild is ``timm_rows``. A vision tower has no
    prompt padding, so none is kept.
    """
    attn = values.get("attn")
    if attn is not None:  # the user's block runs non-fused: the map itself
        if not keeper.wanted(owner, attn.shape[-2], attn.shape[-1]):
            return Skipped(keeper.kept_shape(*attn.shape), None)
        return keeper.finish(attn)
    q, k = values.get("q"), values.get("k")
    if q is None or k is None:
        return None
    why = timm_unrebuildable(owner)
    if why:  # switched after activation (check_fast saw it fine): warned and skipped by get_local, never wrong
        raise unsupported(f"{type(owner).__name__} {why}")
    shape = keeper.kept_shape(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if not keeper.wanted(owner, q.shape[2], k.shape[2]):
        return Skipped(shape, None)
    causal = bool(values.get("is_causal", False))
    mask = None if causal else values.get("attn_mask")  # timm's causal mask takes precedence over any other
    rows = functools.partial(timm_rows, scale=owner.scale, causal=causal)
    return keeper.whole(rows, (q, k), mask, shape, None)


def timm_rows(q, k, mask, *, scale: float, causal: bool = False):
    """timm's non-fused attention weights ``[B, H, N, N]`` from one block's unscaled query and key.

    The arithmetic of ``Attention.forward`` with ``fused_attn`` off, so that a map
    equals what eager mode captures from the same weights: the query scaled before
    the product; the mask as timm 1.0 resolves it (causal: ``-inf`` above the
    diagonal; boolean: ``-inf`` where False, as sdpa reads it; float: added as it
    is); the softmax in the scores' own dtype, not float32 as transformers does.
    """
    import torch

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
