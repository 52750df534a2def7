"""What the demo and ``plot`` draw and write from labelled maps: figures, tables, summary.

``report(maps, images, info, out)`` decides what to draw from the maps' labels
alone (towers, phases, token layouts), never from a model: vision towers get
their heads, grid-to-grid overlays and patterns by depth; language towers their
heads and the attention of text, generated and action tokens to the image.

>>> report(maps, images, info, Path("figures"))     # doctest: +SKIP

Importing this module imports matplotlib (through :mod:`getlocal.plot`): the
commands import it after switching matplotlib to Agg, and ``view`` never does.
"""
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import matplotlib.pyplot as plt
import numpy as np

from getlocal import GetLocalError, patterns, plot
from getlocal._files import safe_name, write_atomic
from getlocal.maps import AttentionMaps
from getlocal.patterns import display

DPI = 110  # a 16 x 16 patch grid stays legible in a 2.6 inch panel
_VISION_KINDS = {"cls", "register", "image"}

def _per_step(maps) -> Dict[Tuple[int, str], Dict[str, list]]:
    """``{(step, phase): {tower: [number of maps, shape of the first]}}`` in order, in one pass over the maps."""
    steps: Dict[Tuple[int, str], Dict[str, list]] = {}
    for m in maps:
        steps.setdefault((m.step, m.phase), {}).setdefault(m.tower, [0, list(m.shape)])[0] += 1
    return steps


def describe_steps(maps) -> str:
    steps = _per_step(maps)
    lines = [f"captured {len(maps)} attention maps in {len(steps)} step(s):"]
    for (step, phase), towers in steps.items():
        lines.append(f"  step {step} {phase}: " + ", ".join(f"{t} {n} x {shape}" for t, (n, shape) in towers.items()))
    for tower, layout in maps.layouts.items():
        lines.append(f"  {tower} tokens: {layout}")
    return "\n".join(lines)


def _is_vision(maps) -> bool:
    return all({s.kind for s in m.keys.segments} <= _VISION_KINDS and m.shape[-2] == m.shape[-1] for m in maps)


def _layers(maps) -> Dict[int, Any]:
    """One map per layer (the first call of each), in layer order."""
    out = {}
    for m in maps:
        out.setdefault(m.layer, m)
    return dict(sorted(out.items()))


def _chosen(layers: List[int]) -> List[int]:
    """First, middle and last layer."""
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]})


def _query_cells(grid) -> List[Tuple[int, int]]:
    h, w = grid
    return list(dict.fromkeys([(h // 2, w // 2), (h // 4, w // 4), (3 * h // 4, 3 * w // 4)]))


def _picture_of(images, camera):
    if not images:
        return None
    if camera is not None and camera in images:
        return images[camera]
    return images.get("image", next(iter(images.values())))


class _Plan:
    """The figures to write (drawn later, under a progress bar) and the tables to print."""

    def __init__(self, out: Path, random: bool = False):
        self.out = out
        self.random = random  # every figure's title then says the weights were random
        self.jobs: List[Tuple[Path, Callable[[], Any]]] = []
        self.towers: Dict[str, Dict[str, Any]] = {}
        self._taken = set()

    def figure(self, tower, phase, layer, mode, draw):
        # labels come from the capture, which may come from anyone: each becomes one plain name inside out/
        path = plot.figure_path(self.out, name=safe_name(tower), phase=safe_name(phase), layer=safe_name(layer),
                                mode=safe_name(mode), ext="png")
        stem, number = path.stem, 1
        while path.as_posix().lower() in self._taken:  # lower(): macOS and Windows folders ignore case
            number += 1
            path = path.with_name(f"{stem}-{number}.png")
        self._taken.add(path.as_posix().lower())
        self.jobs.append((path, draw))


def random_weights(info) -> bool:
    """Whether the capture came from random weights, by the demo's own flag (or the words of older captures)."""
    flag = info.get("random_weights")
    if isinstance(flag, bool):
        return flag
    return str(info.get("weights") or "").startswith("random init")


RANDOM_NOTE = ("these weights are random: what the figures show is how far from uniform attention random weights "
               "already are (each figure's title measures it: the smallest and largest ratio to uniform and the share "
               "of entries outside 0.8-1.25x), not learned patterns; on the figures' fixed 1/8x-8x scale such noise "
               "stays pale. For trained weights: --pretrained, or --weights PATH to a checkpoint on disk")


def report(maps, images, info, out: Path, *, quiet: bool = False) -> None:
    """Analyse ``maps``, print the tables and write figures and summary into ``out``: the demo's and plot's shared half."""
    plan = _Plan(out, random_weights(info))
    towers: Dict[str, list] = {}
    partial = 0
    for m in maps:  # one pass: select(tower=) per tower is quadratic in a capture of many towers
        if getattr(m, "rows", None) is not None:  # the scores assume every row, the last Q key positions
            partial += 1
            continue
        towers.setdefault(m.tower, []).append(m)
    if partial:
        print(f"{partial} maps hold some rows only (captured with queries= row indices); the pattern scores and "
              "figures need whole maps, so they are left out")
    for tower, mine in towers.items():
        mine = AttentionMaps(mine, maps.layouts)
        if _is_vision(mine):
            _plan_vision(plan, tower, mine, images, info)
        else:
            _plan_language(plan, tower, mine, images, info)
    for tower, entry in plan.towers.items():
        print(f"\n{tower}: {entry['title']}")
        print(entry["table"])
    shares = _plan_kind_shares(plan, towers, maps.layouts)
    _draw(plan, quiet)
    summary = _summary(maps, info, plan)
    summary["kind_shares"] = shares
    text = json.dumps(summary, indent=1, allow_nan=False)
    write_atomic(out / "summary.json", lambda f: f.write(text.encode("utf-8")))
    markdown = _markdown(summary) + _kind_shares_markdown(shares)
    write_atomic(out / "summary.md", lambda f: f.write(markdown.encode("utf-8")))
    folders = sorted({str(path.parent.relative_to(out)) for path, _ in plan.jobs})
    print(f"\nwrote {len(plan.jobs)} figures into {out}/ ({', '.join(f + '/' for f in folders)}), "
          f"{out / 'summary.md'} and {out / 'summary.json'}")


def _plan_vision(plan: _Plan, tower: str, maps, images, info) -> None:
    step, phase = maps.steps[0]
    first = maps.select(step=step)
    cameras = list(dict.fromkeys(m.camera for m in first))
    for camera in cameras:  # every camera is scored and drawn (a wrist camera too), each under its own name
        several = len(cameras) > 1 and camera is not None
        _plan_camera(plan, tower, first, camera, f"{tower} {camera}" if several else tower,
                     f"-{camera}" if several else "", step, phase, images, info)


def _plan_camera(plan: _Plan, tower, first, camera, name, suffix, step, phase, images, info) -> None:
    layers = _layers(m for m in first if m.camera == camera)
    layout = next(iter(layers.values())).keys
    patch = (info.get("patch_size") or {}).get(tower)
    table = patterns.summarize({k: m.array for k, m in layers.items()}, image_tokens=layout.image(),
                               grid=layout.grid(), patch_size=patch)
    seen = f", camera {camera}" if camera else ""
    plan.towers[name] = {"title": f"step {step} {phase}{seen}, {len(layers)} layers, tokens {layout}",
                         "table": table, "phase": phase, "step": step, "camera": camera, "layout": layout.to_dict()}
    picture = _picture_of(images, camera)
    cls = layout.find("cls")
    registers = layout.indices("register").tolist()
    for layer in _chosen(list(layers)):
        arr = layers[layer].array[0]
        plan.figure(tower, phase, layer, f"heads{suffix}", lambda a=arr, lay=layout, t=f"{name} layer {layer}": _titled(
            plot.layer_heads(a, layout=lay), t))
        if picture is None:
            continue
        for r, c in _query_cells(layout.grid()):
            plan.figure(tower, phase, layer, f"query{suffix}-r{r}c{c}", lambda a=arr, q=(r, c), t=f"{name} layer {layer}":
                        _titled(plot.grid_to_grid(a, picture, query=q, image_tokens=layout.image(), grid=layout.grid(),
                                                  cls_token=cls[0].start if cls else None,
                                                  registers=registers or None), t))
    _plan_depth(plan, tower, phase, table, pixels=False, suffix=suffix, name=name)  # in patches, as in the tables


def _plan_depth(plan: _Plan, tower, phase, table, pixels: bool, suffix: str = "", name: str = "") -> None:
    name = name or tower

    def patterns_by_depth():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.3]}, layout="constrained")
        plot.label_map(table, ax=axes[0])
        plot.pattern_scores(table, ax=axes[1])
        return _titled(fig, f"{name}: head labels and pattern scores by depth")

    def distance():
        fig, ax = plt.subplots(figsize=(4.4, 3.2))
        plot.attention_distance(table, ax=ax, pixels=pixels)
        return _titled(fig, f"{name}: mean attention distance (patches)")

    plan.figure(tower, phase, "all", f"patterns{suffix}", patterns_by_depth)
    if not all(math.isnan(v) for v in table["distance"].ravel()):
        plan.figure(tower, phase, "all", f"distance{suffix}", distance)


def _plan_language(plan: _Plan, tower: str, maps, images, info) -> None:
    square = [m for m in maps if m.shape[-2] == m.shape[-1]]
    if square:  # the prompt step (prefill / prefix): square causal maps
        step = square[0].step
        layers = _layers(m for m in square if m.step == step)
        sample = next(iter(layers.values()))
        layout = sample.keys
        cameras = [s.camera for s in layout.find("image")]
        grid_args = {"image_tokens": layout.image(cameras[0]), "grid": layout.grid(cameras[0])} if cameras else {}
        # the layout's runs of one kind (bos, image, text, ...) are the segments of the block pattern
        segments = {"segments": layout} if len(layout.segments) > 1 else {}
        # which keys each query sees comes from the maps (a prefix-LM's prefix is bidirectional), not from causal=
        table = patterns.summarize({k: m.array for k, m in layers.items()}, **grid_args, **segments)
        plan.towers[tower] = {"title": f"step {step} {sample.phase}, {len(layers)} layers, tokens {layout}",
                              "table": table, "phase": sample.phase, "step": step, "camera": None,
                              "layout": layout.to_dict()}
        for layer in _chosen(list(layers)):
            arr = layers[layer].array[0]
            plan.figure(tower, sample.phase, layer, "heads", lambda a=arr, lay=layout, t=f"{tower} layer {layer}, {sample.phase}":
                        _titled(plot.layer_heads(a, layout=lay), t))
            sinks = sorted({int(k) for head in patterns.sink_keys(arr) for k in head})
            if sinks:  # first-token sinks dwarf everything else: the same heads without them, rows renormalised
                plan.figure(tower, sample.phase, layer, "heads-without-sinks",
                            lambda a=arr, s=sinks, lay=layout, t=f"{tower} layer {layer}, {sample.phase}, without sinks":
                            _titled(plot.layer_heads(a, layout=lay, sinks=s), t))
            rows = layout.indices("text")
            if cameras and rows.size:
                plan.figure(tower, sample.phase, layer, "text-to-image",
                            lambda a=arr, r=rows, lay=layout, cams=cameras, t=f"{tower} layer {layer}: text tokens -> image":
                            _overlay(a, r, lay, cams, images, t))
    later = [m for m in maps if m.shape[-2] != m.shape[-1]]
    if not later:
        return
    phase = later[0].phase
    kind = "action" if later[0].queries.find("action") else "generated"
    per_layer: Dict[int, list] = {}
    for m in later:
        per_layer.setdefault(m.layer, []).append(m)
    keys = min(m.shape[-1] for m in later)
    layout = later[0].keys.window(0, keys)  # the prompt and what every step saw, positions shared by all steps
    cameras = [s.camera for s in layout.find("image")]
    if not cameras:
        return
    if tower not in plan.towers:
        plan.towers[tower] = {"title": f"{len(later)} {phase} maps over {len(per_layer)} layers; tokens {layout}",
                              "table": f"({phase} maps only: {kind} queries over the prompt, no square map to score)",
                              "phase": phase, "step": later[0].step, "camera": None, "layout": layout.to_dict()}
    steps = len({m.step for m in later})
    what = "generated (action) tokens" if kind == "generated" and info.get("generated") == "action" else f"{kind} tokens"
    for layer in _chosen(sorted(per_layer)):
        # every step's query rows of that kind, stacked, over the keys all steps share
        rows = np.concatenate([m.array[0][:, m.queries.indices(kind), :keys] for m in per_layer[layer]], axis=1)
        plan.figure(tower, phase, layer, f"{kind}-to-image",
                    lambda a=rows, lay=layout, cams=cameras, t=f"{tower} layer {layer}: {what} -> image, {steps} {phase} steps":
                    _overlay(a, slice(None), lay, cams, images, t))


def _overlay(arr, rows, layout, cameras, images, title):
    pictures = [_picture_of(images, c) for c in cameras]
    if any(p is None for p in pictures):
        fig, ax = plt.subplots(figsize=(4, 3.4))
        heat = plot.query_heatmap(arr, image_tokens=layout.image(cameras[0]), queries=rows, grid=layout.grid(cameras[0]))
        plot.attention_map(heat, ax=ax)  # no picture saved: the heat map on its grid
        return _titled(fig, title)
    fig = plot.camera_attention(pictures, arr, image_tokens=[layout.image(c) for c in cameras], queries=rows,
                                grids=[layout.grid(c) for c in cameras],
                                titles=[c or "image" for c in cameras], panel_size=3.0)
    return _titled(fig, title)


def _measured(fig) -> str:
    """What a random-weights figure's title may claim, measured on the maps drawn on the 'uniform' scale in it."""
    drawn = [np.asarray(im.get_array(), dtype=np.float64).ravel() for ax in fig.axes for im in ax.images
             if getattr(im.get_cmap(), "name", "") == display.UNIFORM_CMAP]
    if not drawn:
        return "the scores of random weights, not learned patterns"
    values = np.concatenate(drawn)
    d = display.departure(values)
    pale = " (within 0.5-2x: pale, noise)" if d["n"] and 0.5 <= d["min"] and d["max"] <= 2 else ""
    return display.departure_text(values) + pale + "; not a learned pattern"


def _titled(fig, title):
    fig.suptitle(title, fontsize=10, y=1.0, va="bottom")  # above the panels and their titles, whatever its lines; savefig's tight box keeps it
    return fig


def _draw(plan: _Plan, quiet: bool = False) -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the demo extra; without it, no bar
        def tqdm(items, **_):
            return items
    # disable=None: a bar on a terminal, nothing when the output is a file or a pipe
    inside = plan.out.resolve()
    for path, draw in tqdm(plan.jobs, desc="figures", unit="fig", file=sys.stderr, disable=True if quiet else None):
        fig = draw()
        title = getattr(fig, "_suptitle", None)
        if plan.random and title is not None:
            title.set_text(title.get_text() + "\nRANDOM WEIGHTS: " + _measured(fig))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if inside not in (path.parent.resolve(), *path.parent.resolve().parents):
                raise GetLocalError(f"{path.parent} is a link that leads out of {plan.out}; remove it or write "
                                    "into another directory")
            write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
        finally:
            plt.close(fig)


# --------------------------------------------------------------------------- token kinds


def _plan_kind_shares(plan: _Plan, towers: Dict[str, list], layouts) -> Dict[str, Any]:
    """Per language tower, its first step's token-kind attention shares by layer; the image-share figure."""
    out: Dict[str, Any] = {}
    for tower, mine in towers.items():
        mine = AttentionMaps(mine, layouts)
        if _is_vision(mine) or not mine.maps:
            continue
        step, phase = mine.steps[0]
        chosen = mine.select(step=step)
        shares = chosen.kind_shares()
        out[tower] = {"step": step, "phase": phase, "query_kinds": list(shares.query_kinds),
                      "key_kinds": list(shares.key_kinds), "rows": shares.to_records()}
        if any(k == "image" or k.startswith("image:") for k in shares.key_kinds):
            def draw(s=shares, t=tower, ph=phase):
                fig, ax = plt.subplots(figsize=(4.8, 3.2), layout="constrained")
                plot.image_share(s, ax=ax)
                return _titled(fig, f"{t} ({ph}): attention to image tokens by depth")

            plan.figure(tower, phase, "all", "image-share", draw)
    return out


def _kind_shares_markdown(shares: Dict[str, Any]) -> str:
    lines = []
    for tower, entry in shares.items():
        keys = entry["key_kinds"]
        lines += ["", f"## {tower}: share of each query kind's attention per key kind "
                      f"(step {entry['step']} {entry['phase']}, mean over heads)", "",
                  "Each cell: the share, then in brackets that share divided by what uniform attention over the keys "
                  "each query sees would give (its baseline: the share of those keys of that kind). 1.00x is no "
                  "preference; 0.93 on image tokens at 1.00x says the image holds 93% of the keys, nothing more.", "",
                  "| layer | queries | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
        for rec in entry["rows"]:
            lines.append(f"| {rec['layer']} | {rec['query']} | " + " | ".join(_share_cell(rec, k) for k in keys) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def _share_cell(rec, kind) -> str:
    share, base = rec.get(kind), rec.get(f"{kind} uniform")
    if share is None:
        return "-"
    if base is None or base <= 0:
        return f"{share:.3f} (unseen)" if base == 0 else f"{share:.3f}"
    return f"{share:.3f} ({share / base:.2f}x)"


# --------------------------------------------------------------------------- summary


def _summary(maps, info, plan: _Plan) -> Dict[str, Any]:
    towers = {}
    for tower, entry in plan.towers.items():
        table = entry["table"]
        scored = not isinstance(table, str)
        towers[tower] = {
            "step": entry["step"], "phase": entry["phase"], "camera": entry["camera"], "tokens": entry["layout"],
            "layers": table.to_records("layer") if scored else [],
            "heads": table.to_records("head") if scored else [],
            "note": None if scored else table,
        }
    return {
        "model": info.get("model"), "weights": info.get("weights"), "random_weights": plan.random,
        "image": info.get("image"),
        "preprocessing": info.get("preprocessing"),
        "steps": [{"step": s, "phase": p, "maps": {t: n for t, (n, _) in towers.items()}}
                  for (s, p), towers in _per_step(maps).items()],
        "towers": towers,
        "figures": [path.relative_to(plan.out).as_posix() for path, _ in plan.jobs],
    }


_LEGEND = [
    ("layer", "the block's index, 0 the first."),
    ("heads", "how many heads the layer has."),
    ("diag, stripe, vert, block, mixed", "how many of its heads got each label (getlocal.patterns.classify_heads): "
                                         "diagonal (each token attends to one position at a fixed offset: itself, "
                                         "the previous token, ...), stripe (to its neighbouring patches), vertical "
                                         "(every query to the same few keys), block (within its own segment), mixed "
                                         "(none of these holds half of the attention)."),
    ("offset", "the offsets of the layer's diagonal heads: 0 itself, -1 the previous token, +1 the next."),
    ("self", "mean over heads of the attention each query gives its own position (the diagonal); uniform "
             "attention gives 1 / (keys it sees): {uniform_self}."),
    ("nbr8", "mean over heads of the attention each image query gives its 8 neighbouring patches (stripes); "
             "uniform attention gives at most 8 / (keys it sees)."),
    ("top2%", "mean over heads of the attention that goes to the top 2 % of keys (vertical lines: sinks, registers); "
              "uniform attention gives about 2 %: {uniform_top}."),
    ("dist", "mean attention distance in patches (ViT paper, Fig. 7): how far on the grid a query looks; "
             "uniform attention gives {uniform_distance}."),
    ("H/lnN", "mean attention entropy divided by ln(number of keys the query sees, read from the map: its past under "
              "a causal mask, every key in a bidirectional prefix): 1 is uniform attention, 0 all on one key; never "
              "above 1."),
    ("nmi", "normalised mutual information between query and key (getlocal.patterns.query_key_nmi): 0 when every "
            "query has the same key distribution (vertical lines, uniform attention), 1 when each query has its own "
            "key (a diagonal)."),
    ("sinks", "key positions that receive more than 0.3 of the attention of the queries that can see them, on "
              "average (Gu et al., ICLR 2025; getlocal.patterns.sink_keys): BOS, [CLS], registers. Uniform attention "
              "has none."),
    ("-", "not defined for this tower (no image grid, or no image queries)."),
]


def _uniform_distances(summary) -> str:
    """The 'dist' of uniform attention on each grid the towers have, in words: '5.2 on the 8 x 8 grid of vit'."""
    parts = []
    for tower, entry in summary["towers"].items():
        for seg in (entry.get("tokens") or {}).get("segments", []):
            if seg.get("grid"):
                h, w = seg["grid"]
                d = float(patterns.mean_attention_distance(np.full((1, h * w, h * w), 1 / (h * w)), grid=(h, w))[0])
                parts.append(f"{d:.1f} patches on the {h} x {w} grid of {tower}")
                break
    return ", ".join(dict.fromkeys(parts)) or "no grid here"


def _uniform_scores(summary) -> Dict[str, str]:
    """What uniform attention scores on each scored tower's keys: self mass and top-2% mass, in words."""
    self_, top = [], []
    for tower, entry in summary["towers"].items():
        segments = (entry.get("tokens") or {}).get("segments", [])
        if not entry["layers"] or not segments:
            continue
        k = segments[-1]["stop"]
        self_.append(f"{1 / k:.3f} with the {k} keys of {tower} (bidirectional; about ln K / K = {math.log(k) / k:.3f} "
                     "causal)")
        top.append(f"{math.ceil(0.02 * k) / k:.3f} for {tower}")
    return {"uniform_self": "; ".join(self_) or "-", "uniform_top": "; ".join(top) or "-"}


def _cell(value) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(f"{int(v):+d}" if v else "0" for v in value)
    return str(value)


def _markdown(summary: Dict[str, Any]) -> str:
    lines = [f"# getlocal: {summary['model']}", "",
             f"- weights: {summary['weights']}", f"- image: {summary['image']}",
             f"- preprocessing: {summary['preprocessing']}"]
    if summary.get("random_weights"):
        lines.append(f"- **{RANDOM_NOTE}**")
    if any(entry["layers"] for entry in summary["towers"].values()):
        refs = {"uniform_distance": _uniform_distances(summary), **_uniform_scores(summary)}
        lines += ["", "## Columns of the per-layer tables", ""] + [
            f"- **{c}**: {text.format(**refs)}" for c, text in _LEGEND]
    lines += ["", "## Steps", "",
             "| step | phase | maps per tower |", "| --- | --- | --- |"]
    for s in summary["steps"]:
        lines.append(f"| {s['step']} | {s['phase']} | " + ", ".join(f"{t}: {n}" for t, n in s["maps"].items()) + " |")
    columns = [("layer", "layer"), ("heads", "heads"), ("diagonal", "diag"), ("stripe", "stripe"),
               ("vertical", "vert"), ("block", "block"), ("mixed", "mixed"), ("offset", "offset"),
               ("self_mass", "self"), ("neighbour_mass", "nbr8"),
               ("top_key_mass", "top2%"), ("nmi", "nmi"), ("distance", "dist"), ("entropy_norm", "H/lnN"),
               ("sinks", "sinks")]
    for tower, entry in summary["towers"].items():
        lines += ["", f"## {tower} (step {entry['step']} {entry['phase']})", ""]
        if not entry["layers"]:
            lines.append(entry["note"] or "")
            continue
        lines.append("| " + " | ".join(c for _, c in columns) + " |")
        lines.append("|" + " --- |" * len(columns))
        for rec in entry["layers"]:
            cells = [_cell(rec.get(k)) for k, _ in columns]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in summary["figures"]]
    return "\n".join(lines) + "\n"


def report_run(run, out: Path) -> List[str]:
    """``episode.gif``, ``episode-grid.png`` and ``image-share.png`` for each part of a recorded run; what was written."""
    lines = []
    for name, part in run.parts.items():
        steps = run.select(part=name)
        if not len(steps):
            continue
        info = part.get("info") or {}
        pad = info.get("pad_to_square", False)
        pad = pad if isinstance(pad, (bool, dict)) else False
        folder = out / safe_name(name) if len(run.parts) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        gif = plot.episode_gif(steps, folder / "episode.gif", pad_to_square=pad)
        fig = plot.episode_grid(steps, pad_to_square=pad)
        write_atomic(folder / "episode-grid.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(min(12.0, 3.0 + 0.25 * len(steps)), 2.8))
        plot.episode_image_share(steps, ax=ax)
        write_atomic(folder / "image-share.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        lines.append(f"{name} (rank {part.get('rank')}): {len(steps)} steps -> {gif}, {folder / 'episode-grid.png'}, "
                     f"{folder / 'image-share.png'}")
    return lines
