"""Draw attention maps: heads, patch grids, overlays on the image, patterns by depth.

Single-panel helpers take ``ax=`` (the current Axes when None) and return the
Axes; multi-panel helpers return the Figure. Maps are numpy or torch arrays of
any float dtype (bfloat16 included): ``[Q, K]``, ``[H, Q, K]`` or
``[1, H, Q, K]``. Images are numpy, torch (``HWC`` or ``CHW``) or PIL,
grayscale, RGB or RGBA. Nothing here calls ``plt.show()``.

Each function checks its arguments, takes its numbers from
:mod:`getlocal.patterns`, then draws: heads (``_heads``), patch grids and
overlays on the picture (``_overlays``, ``_pictures``), patterns by depth
(``_depth``), recorded episodes (``_episodes``), colour scales (``_scales``)
and files (``_save``).

>>> import numpy as np
>>> import matplotlib.pyplot as plt
>>> from getlocal import plot
>>> fig, ax = plt.subplots()
>>> ax = plot.attention_map(np.eye(8)[None], ax=ax)
>>> ax.get_xlabel()
'key'
"""
from ..patterns.display import SCALES, query_heatmap
from ._depth import LABEL_COLORS, attention_distance, image_share, label_map, pattern_scores
from ._explain import relevance_figure, relevance_overlay
from ._episodes import episode_gif, episode_grid, episode_image_share
from ._heads import attention_map, layer_heads
from ._overlays import camera_attention, grid_to_grid, image_attention, patch_grid
from ._save import figure_path, save_figure

__all__ = [
    "attention_map",
    "layer_heads",
    "patch_grid",
    "grid_to_grid",
    "query_heatmap",
    "image_attention",
    "camera_attention",
    "label_map",
    "SCALES",
    "pattern_scores",
    "attention_distance",
    "figure_path",
    "save_figure",
    "LABEL_COLORS",
    "image_share",
    "episode_grid",
    "episode_image_share",
    "episode_gif",
    "relevance_overlay",
    "relevance_figure",
]
