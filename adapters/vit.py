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

``vit.capture`` activates for a block only; ``maps`` is filled when it ends:

>>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0).eval()
>>> with vit.capture(model) as maps, torch.no_grad():
...     _ = model(torch.randn(1, 3, 32, 32))
>>> [m.path for m in maps]
['blocks.0.attn', 'blocks.1.attn']

What is captured: the post-softmax local ``attn`` of timm's ``Attention.forward``
(tower ``'vit'``, one map per block per forward pass, phase ``'encode'``), laid
out as ``[cls, registers, image grid]`` from the model's ``cls_token``,
``num_reg_tokens`` and ``patch_embed.grid_size``. timm computes attention with a
fused kernel that never builds the map. In ``mode='eager'`` (the default)
``activate`` turns the fused path off on the given (or every live) model and for
models built later, and ``deactivate`` turns it back on. In ``mode='fast'``
nothing is switched: every block keeps its ``fused_attn`` and the model's
outputs do not change by a bit; a fused block's map is rebuilt from the ``q``
and ``k`` it gave the kernel, with timm's own non-fused arithmetic (so it equals
the eager-mode map), and a block the user runs non-fused is read as it is. A
fused block that no rebuild can repeat is refused, naming it: in training mode
with attention dropout (its dropped weights are random), or with a ``scale``
that the fused call does not pass.
"""
from typing import Optional

from ._choice import check_model
from ._lifecycle import register
from ._spec import Spec
from .sources.timm import TimmAttention, timm_layout

_ADAPTER = register(Spec(
    "vit",
    vision_towers=("vit",),
    kinds=("cls", "register", "image"),
    sources=[TimmAttention()],  # Attention.forward, local ``attn``
    tower=lambda owner, path, modules: "vit",
    vision_layout=timm_layout,  # [cls, registers, image grid]
))
activate, capture, collect = _ADAPTER.activate, _ADAPTER.capture, _ADAPTER.collect
deactivate, is_active = _ADAPTER.deactivate, _ADAPTER.is_active


def patch_size(model) -> Optional[int]:
    """The side of one patch in pixels (``16`` for ``vit_small_patch16_224``), or None if unknown."""
    check_model(model)
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    return int(size) if isinstance(size, int) else None
