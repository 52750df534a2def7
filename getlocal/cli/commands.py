"""What each command does, given its parsed arguments: ``demo``, ``plot`` and ``view``; each returns the exit status.

>>> from getlocal.cli import main
>>> main(["view", "getlocal-demo/capture"])       # doctest: +SKIP
wrote getlocal-demo/capture.html (0.3 MB); open it in a browser
0

``demo`` runs a model and saves its capture, then draws from the capture exactly
what ``plot`` draws from a saved one (:func:`getlocal.cli.report.report`), so the
two write the same files. The report is imported by the command that draws, once
matplotlib is switched to Agg (a command line writes files; it never opens
windows): ``view`` and ``--help`` need no matplotlib.
"""
import os
import sys
from pathlib import Path

from getlocal import GetLocalError, saved
from getlocal.viewer import MAX_PAGE_MB, page_size
from getlocal.viewer import view as view_page

from .inputs import CommandError, made, open_picture, out_dir, picture_file, weights_file
from .models import TINY_MODELS, capture, check_model

#: Where ``demo`` writes without ``--out``: one folder per model inside it (:func:`default_out`).
DEFAULT_OUT = "getlocal-demo"


def demo(args) -> int:
    # Every argument and path is checked before torch and timm are imported (seconds): their errors come at once.
    if args.pretrained and args.model in TINY_MODELS:
        raise CommandError(f"--pretrained is for timm models; {args.model} is random init by design "
                           "(--weights PATH loads a checkpoint of it from disk)")
    if args.pretrained and args.weights:
        raise CommandError("--pretrained and --weights both say where the weights come from; give one")
    weights = weights_file(args.weights) if args.weights else None
    file, described = picture_file(args.image)
    picture = open_picture(file)
    out = out_dir(args.out if args.out is not None else default_out(args.model))
    check_model(args.model)
    import matplotlib

    matplotlib.use("Agg")
    from .report import RANDOM_NOTE, describe_steps, random_weights, report

    stages = _progress(args.quiet, total=2, desc=args.model, unit="stage")
    stages.set_postfix_str("building and running the model")
    try:
        maps, images, info, relevance = capture(args.model, args.pretrained, picture, weights, args.mode)
        stages.update()
        stages.set_postfix_str("saving the capture")
        info.update(model=args.model, image=described)
        with made(out):  # made now that there is something to write; removed again if what follows fails
            saved_to = saved.save(out / "capture", maps, images=images, info=info)
            stages.update()
            stages.close()
            print(f"{args.model}: {info['weights']}")
            print(f"image: {described}, {info['preprocessing']}")
            print(describe_steps(maps))
            size = sum(f.stat().st_size for f in saved_to.rglob("*") if f.is_file())
            print(f"saved the capture to {saved_to}/ ({len(maps)} maps, {size / 2**20:.1f} MB); "
                  f"`python -m getlocal plot {saved_to} --out DIR` redraws everything below without the model")
            report(maps, images, info, out, quiet=args.quiet)
            for line in _explain_figures(maps, images, info, out, relevance):
                print(line)
            size = page_size(maps, images=images)
            if size <= PAGE_MB * 2**20:
                view_page(saved_to, out=out / PAGE, max_mb=PAGE_MB)
    finally:
        stages.close()
    if random_weights(info):
        print(f"\nnote: {_TINY_NOTE if args.model in TINY_MODELS else RANDOM_NOTE}")
    if size <= PAGE_MB * 2**20:
        print(f"\nexplore the capture in a browser: open {out / PAGE} (one self-contained page)")
    else:  # the figures and the capture are written: a page of part of it is one call away
        print(f"\nno page written: one page of all {len(maps)} maps would be about {size / 2**20:.0f} MB, above "
              f"{PAGE_MB:g} MB; view a part of the capture: getlocal.view(getlocal.load('{saved_to}')"
              f".select(tower={maps.towers[0]!r}, layer=[...]))")
    return 0


#: The largest page ``demo`` writes, in MB (the viewer's own limit): above it the page is left out and said.
PAGE_MB = MAX_PAGE_MB
#: The page ``demo`` writes beside its capture: the name ``view CAPTURE_DIR`` gives it (``CAPTURE_DIR.html``).
PAGE = "capture.html"
#: The closing note of a tiny model: no trained weights exist for it, so ``--pretrained`` is no way out.
_TINY_NOTE = ("these weights are random and no trained weights exist for the tiny models: the figures show the "
              "machinery, not learned patterns. For trained patterns, run a timm ViT with trained weights: "
              "python -m getlocal demo --pretrained")


def default_out(model: str) -> str:
    """``getlocal-demo/MODEL``: one folder per model, so that two models' figures never mix."""
    folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in model).strip(".") or "model"
    return os.path.join(DEFAULT_OUT, folder)


def _progress(quiet: bool, **kwargs):
    """A tqdm bar on stderr when it is a terminal (none with --quiet, or when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the demo extra
        quiet = True

        class tqdm:  # noqa: N801 - the same few calls, doing nothing
            def __init__(self, *a, **k): pass
            def update(self, *a): pass
            def set_postfix_str(self, *a): pass
            def close(self): pass
    return tqdm(file=sys.stderr, disable=True if quiet else None, **kwargs)


def plot(args) -> int:
    found = saved.read(args.capture)
    if hasattr(found.data, "ranks"):  # a recorded episode (getlocal.record)
        return _plot_run(args, found.data)
    if not hasattr(found.data, "select"):
        raise CommandError(f"{args.capture} holds a raw cache (get_local.cache); plot draws labelled maps: "
                           "save the AttentionMaps of an adapter's collect() instead")
    if not len(found.data):
        raise CommandError(f"{args.capture} holds no attention maps; nothing to draw")
    out = out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")
    from .report import RANDOM_NOTE, describe_steps, random_weights, report

    info = _known_info(found.info)
    print(f"{info.get('model', 'capture')}: {info.get('weights', 'weights unknown')} "
          f"(saved by getlocal {found.version or '?'})")
    print(describe_steps(found.data))
    try:
        with made(out):
            report(found.data, found.images, info, out, quiet=args.quiet)
            for line in _explain_figures(found.data, found.images, found.info, out):
                print(line)
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        # load() checked every label getlocal relies on; this is a capture no getlocal wrote
        raise CommandError(f"cannot draw {args.capture}: {type(exc).__name__}: {exc}; its maps are not what "
                           "getlocal saves (was it edited?)") from None
    if random_weights(info):
        print(f"\nnote: {RANDOM_NOTE}")
    return 0


#: Where ``demo`` and ``plot`` write the explanation figures, inside their output directory.
EXPLAIN_DIR = "explain"


def _explained(maps):
    """``(maps of one pass, rows, exclude, what the rows are)``: what the demo's model is explained by.

    Pi0: its action queries through the prefix and the last denoise step; a
    model that generates: its generated rows through the prefill and decode
    steps, its BOS (a sink) left out; a ViT: its [CLS] row.
    """
    towers = maps.towers
    if "language" in towers and "expert" in towers:
        steps = [step for step, _ in maps.steps]
        chain = maps.select(tower=["language", "expert"], step=[steps[0], steps[-1]])
        return chain, "action", None, \
            f"the {len(chain[len(chain) - 1].keys.indices('action'))} action queries of denoise step {steps[-1]}"
    tower = towers[-1]
    chain = maps.select(tower=tower)
    layout = chain[len(chain) - 1].keys  # the longest: a decode step's keys hold every generated token
    kinds = {s.kind for s in layout.segments}
    if "generated" in kinds:
        return chain, "generated", "bos" if "bos" in kinds else None, \
            f"the {len(layout.indices('generated'))} generated tokens' rows" + (" (BOS left out)" if "bos" in kinds else "")
    if "cls" in kinds:
        return maps.select(tower=tower, step=maps.steps[0][0]), "cls", None, "the [CLS] row"
    raise GetLocalError(f"the {tower} tower has no [CLS], generated or action rows to explain")


def _explain_figures(maps, images, info, out: Path, relevance=None):
    """``explain/rollout*.png`` (and ``relevance*.png``): per camera, the last layer beside the explanation.

    The rollout is read from the capture (``plot`` redraws it); ``relevance``,
    ``(Explanation, what its target is)``, comes from the demo's second pass
    with gradients. A capture that cannot be rolled out (a map that keeps only
    some rows) gets a line saying why, never an error: the rest is written.
    """
    from getlocal import explain

    try:
        chain, rows, exclude, what = _explained(maps)
        result = explain.rollout(chain, rows=rows, exclude=exclude)
    except (GetLocalError, LookupError, ValueError) as exc:  # the figures are extra: the demo goes on without them
        return [f"no explanation figure: {exc}"]
    lines = [_explanation_figure(result, f"attention rollout from {what}", "rollout", images, info, out,
                                 f"explanation: {result.method} of {result.tower} from {what}, through "
                                 f"{len(result.layers)} layers, beside the last layer's map")]
    if relevance is not None:
        why, target = relevance
        lines.append(_explanation_figure(why, f"relevance of {target} (Chefer et al. 2021)", "relevance", images,
                                         info, out, f"explanation: relevance of {target} to {why.tower}'s "
                                         "[CLS] row ([CLS] key left out), beside the last layer's map"))
    return lines


def _explanation_figure(result, title, name, images, info, out: Path, said: str) -> str:
    """``explain/NAME[_CAMERA].png`` of one Explanation, titled; the line to print."""
    import matplotlib.pyplot as plt

    from getlocal import plot
    from getlocal._files import write_atomic

    from .report import random_weights

    pad = info.get("pad_to_square", False)
    cameras = result.keys.cameras
    if not cameras:
        return f"no {name} figure: {result.tower}'s keys hold no image tokens to draw it over"
    written = []
    (out / EXPLAIN_DIR).mkdir(exist_ok=True)
    for camera in cameras:
        picture = images.get(camera) if camera is not None else None
        if picture is None:
            picture = images.get("image", next(iter(images.values()), None))
        if picture is None:
            return f"no {name} figure: the capture has no picture of {camera or 'the image'}"
        one = camera if len(cameras) > 1 else None
        fig = plot.relevance_figure(result, picture, camera=one, pad_to_square=pad is True)
        heading = f"{result.tower}{' ' + camera if one else ''}: {title}"
        if random_weights(info):  # as on every other demo figure: say that nothing here was learned
            heading += "\nRANDOM WEIGHTS: shares near the even share are noise, not a learned pattern"
        fig.suptitle(heading, fontsize=10, y=1.0, va="bottom")
        file = f"{EXPLAIN_DIR}/{name}{'_' + camera if one else ''}.png"
        write_atomic(out / file, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(file)
    return f"{said} -> {', '.join(str(out / n) for n in written)}"


def _plot_run(args, run) -> int:
    """Episode figures of a run recorded by getlocal.record: one set per part (process)."""
    if not len(run):
        raise CommandError(f"{args.capture} is a recorded run with no completed step; nothing to draw")
    out = out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")
    from .report import report_run

    with made(out):
        lines = _plot_explanations(run, out)
        try:
            if lines and not any(len(step.maps) for step in run):  # labels only: no array is read
                raise GetLocalError("the steps hold no maps (recorded with maps=False)")
            lines += report_run(run, out)
        except GetLocalError as exc:  # a run of explanations alone (record(maps=False)) has no maps to draw
            if not lines:
                raise
            lines.append(f"no attention figures: {exc}")
        for line in lines:
            print(line)
    return 0


def _plot_explanations(run, out: Path):
    """``episode-explanation*.gif`` and ``.png`` for each part whose steps hold explanations (``record(explain=...)``)."""
    import matplotlib.pyplot as plt

    from getlocal import plot
    from getlocal._files import safe_name, write_atomic

    lines = []
    for part, meta in run.parts.items():
        steps = run.select(part=part)
        found = next((e for e in (s.explanation for s in steps) if e is not None), None)  # each read once
        if found is None:
            continue
        pad = (meta.get("info") or {}).get("pad_to_square", False)
        folder = out / safe_name(part) if len(run.parts) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        pad = pad if isinstance(pad, (bool, dict)) else False
        for name in (sorted(found) if isinstance(found, dict) else [True]):
            stem = folder / ("episode-explanation" if name is True else f"episode-explanation-{safe_name(name)}")
            gif = plot.episode_gif(steps, stem.with_suffix(".gif"), explanation=name, pad_to_square=pad)
            fig = plot.episode_grid(steps, explanation=name, pad_to_square=pad)
            write_atomic(stem.with_suffix(".png"), lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
            plt.close(fig)
            lines.append(f"{part} (rank {meta.get('rank')}): {len(steps)} steps' explanations -> {gif}, "
                         f"{stem.with_suffix('.png')}")
    return lines


def _known_info(info):
    """The parts of a capture's free-form info that the report reads, when they have the types the demo writes."""
    out = {k: v for k, v in info.items() if k in ("model", "weights", "image", "preprocessing", "generated")
           and isinstance(v, str)}
    if isinstance(info.get("random_weights"), bool):
        out["random_weights"] = info["random_weights"]
    patch = info.get("patch_size")
    if isinstance(patch, dict):
        out["patch_size"] = {k: v for k, v in patch.items()
                             if type(v) in (int, float) and 0 < v < float("inf")}
    return out


def view(args) -> int:
    capture_dir = Path(args.capture)
    page = view_page(capture_dir, out=args.out or capture_dir.parent / f"{capture_dir.resolve().name}.html")
    print(f"wrote {page.path} ({len(page.html) / 2**20:.1f} MB); open it in a browser")
    return 0
