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

from getlocal.maps import AttentionMaps

from ._libraries import TimmAttention, timm_layout
from ._lifecycle import Spec, check_model, register

_ADAPTER = register(Spec(
    "vit",
    vision_towers=("vit",),
    sources=[TimmAttention()],  # Attention.forward, local ``attn``
    tower=lambda owner, path, modules: "vit",
    vision_layout=timm_layout,  # [cls, registers, image grid]
))


def activate(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
             mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None) -> None:
    """Capture the attention map of every timm ViT block from now on.

    ``model`` is switched to the non-fused path if given, otherwise every model
    is switched at its first call; models built later are built non-fused.
    ``convert``, ``max_calls`` and ``max_bytes`` go to ``get_local.activate``.

    ``mode='fast'``: nothing is switched, the blocks keep timm's fused kernel and
    each map is rebuilt exactly from the block's query and key (see the module
    doc); ``model``, if given, is only checked. ``layers``, ``heads``
    (``'mean'``/``'max'`` or head indices), ``queries`` (row indices: ``0`` is the
    class token's row; ``'generated'``/``'action'``, the new tokens of a decode or
    denoise step, keep no ViT map) and ``dtype`` select before anything is kept,
    in either mode (see :mod:`getlocal.adapters`).
    """
    _ADAPTER.activate(model, convert, max_calls, max_bytes, mode=mode, queries=queries, heads=heads,
                      towers=towers, layers=layers, dtype=dtype)


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


def capture(model=None, *, convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
            mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None):
    """``with vit.capture(model) as maps:`` activated for the block; ``maps`` is filled when it ends.

    >>> import timm, torch
    >>> from getlocal.adapters import vit
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0).eval()
    >>> with vit.capture(model) as maps, torch.no_grad():
    ...     _ = model(torch.randn(1, 3, 32, 32))
    >>> [m.path for m in maps]
    ['blocks.0.attn', 'blocks.1.attn']

    ``maps`` is an empty ``AttentionMaps`` inside the block and holds what
    ``collect(model)`` gives for the calls made in it once the block ends
    without error. The adapter is deactivated on exit, error or not, unless it
    was active before the block: then it stays active, under its own
    ``convert``, ``max_calls`` and ``max_bytes`` (and its calls stay in
    ``get_local.cache``); otherwise the block's calls are taken out of the
    cache (``maps`` holds them). ``mode`` and the selection are those of
    :func:`activate`: ``vit.capture(model, mode='fast')`` leaves the model
    fused and gives the same maps.
    """
    return _ADAPTER.capture(model, convert, max_calls, max_bytes, mode=mode, queries=queries, heads=heads,
                            towers=towers, layers=layers, dtype=dtype)


def patch_size(model) -> Optional[int]:
    """The side of one patch in pixels (``16`` for ``vit_small_patch16_224``), or None if unknown."""
    check_model(model)
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    return int(size) if isinstance(size, int) else None
