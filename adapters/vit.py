"""Plain timm vision transformers (ViT, DeiT, DINOv2, ...): every block's attention map, labelled.

>>> import timm, torch
>>> from getlocal.adapters import vit
>>> model = timm.create_model("vit_small_patch16_224").eval()   # doctest: +SKIP
>>> vit.activate(model)                                          # doctest: +SKIP
>>> with torch.no_grad():                                        # doctest: +SKIP
...     _ = model(torch.randn(1, 3, 224, 224))
>>> maps = vit.collect(model)                                    # doctest: +SKIP
>>> maps[0].keys                                                 # doctest: +SKIP
TokenLayout(cls 0:1, image 14x14 1:197)
>>> vit.deactivate()                                             # doctest: +SKIP

What is captured: the post-softmax local ``attn`` of timm's ``Attention.forward``
(tower ``'vit'``, one map per block per forward pass, phase ``'encode'``), laid
out as ``[cls, registers, image grid]`` from the model's ``cls_token``,
``num_reg_tokens`` and ``patch_embed.grid_size``. timm computes attention with a
fused kernel that never builds the map; ``activate`` turns the fused path off on
the given (or every live) model and for models built later, and ``deactivate``
turns it back on.
"""
from typing import Optional

from getlocal.maps import AttentionMaps, TokenLayout

from . import _common
from ._common import _Spec, _Undo


class _ViT(_Spec):
    name = "vit"
    vision_towers = ("vit",)

    def __init__(self):
        self.timm_classes: tuple = ()
        self.timm_was_fused = False

    def targets(self):
        self.timm_classes = tuple(_common._timm_attention_classes())
        return [(cls.forward, "attn") for cls in self.timm_classes]

    def global_switches(self, undo: _Undo) -> None:
        self.timm_was_fused = _common._timm_unfuse_global(undo)

    def prepare_module(self, module, undo: _Undo, built: bool) -> None:
        if isinstance(module, self.timm_classes):
            _common._timm_prepare(self, module, undo, built)

    def owns(self, owner) -> bool:
        return isinstance(owner, self.timm_classes)

    def tower(self, owner, path, modules) -> str:
        return "vit"

    def vision_layout(self, owner, path, modules, length) -> TokenLayout:
        return _common._timm_layout(path, modules, length)


_ADAPTER = _common._adapter(_ViT())


def activate(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None) -> None:
    """Capture the attention map of every timm ViT block from now on.

    ``model`` is switched to the non-fused path if given, otherwise every model
    is switched at its first call; models built later are built non-fused. ``convert``, ``max_calls`` and ``max_bytes`` go to ``get_local.activate``.
    """
    _ADAPTER.activate(model, convert, max_calls, max_bytes)


def deactivate() -> None:
    """Undo everything ``activate`` changed (the cache is kept for ``collect``)."""
    _ADAPTER.deactivate()


def collect(model=None) -> AttentionMaps:
    """The captured maps, labelled: tower ``'vit'``, block index, module path, ``[cls, registers, image]`` layout.

    ``model`` names the modules (``blocks.3.attn``); without it the model given
    to ``activate`` is used, or found from the attention modules (slow).
    """
    return _ADAPTER.collect(model)


def is_active() -> bool:
    return _ADAPTER.active


def patch_size(model) -> Optional[int]:
    """The side of one patch in pixels (``16`` for ``vit_small_patch16_224``), or None if unknown."""
    _common._model(model)
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    return int(size) if isinstance(size, int) else None
