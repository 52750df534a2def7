"""``python -m getlocal``: the demo (capture, analyse, draw, save) and ``plot`` (draw from a saved capture).

>>> main(["demo", "--out", "getlocal-demo"])          # doctest: +SKIP
>>> main(["plot", "getlocal-demo/capture", "--out", "again"])   # doctest: +SKIP

``demo`` runs a model on a picture with every attention map captured, saves the
capture (see :mod:`getlocal.saved`) and then draws from it exactly what ``plot``
draws from a saved capture, so the two give the same files. What is drawn is
decided by the maps' labels alone (towers, phases, token layouts), never by
the model: vision towers get their heads, grid-to-grid overlays and patterns by
depth; language towers their heads and the attention of text, generated and
action tokens to the image.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ._report import RANDOM_NOTE, describe_steps, random_weights, report

DEMO_MODEL = "vit_small_patch16_224"
TINY_MODELS = ("openvla-tiny", "paligemma-tiny")
DEFAULT_OUT = "getlocal-demo"
TINY_IMAGE = 112  # the tiny models see 8 x 8 patches of 14 px
HUB_TIMEOUT = 3.0  # seconds to reach the hub before --pretrained gives up

_EPILOG = """examples:
  python -m getlocal demo                                  # ViT-S/16 on a sample photo -> getlocal-demo/
  python -m getlocal demo --model openvla-tiny             # an OpenVLA-shaped model, 7 action tokens
  python -m getlocal plot getlocal-demo/capture --out figs # the same figures, without the model
"""

_EPILOG_DEMO = f"""examples:
  python -m getlocal demo                              # {DEMO_MODEL}, random init unless its weights are cached
  python -m getlocal demo --pretrained                 # download the trained weights first (about 90 MB)
  python -m getlocal demo --weights vit_s16.safetensors  # a timm state dict on disk: trained figures offline
  python -m getlocal demo --image cat.jpg --out cat/   # your picture, your output directory
  python -m getlocal demo --model deit_small_patch16_224
  python -m getlocal demo --model openvla-tiny         # DINOv2 + SigLIP + Llama, prefill and 6 decode steps
  python -m getlocal demo --model paligemma-tiny       # Pi0 shape: SigLIP + Gemma + action expert, 2 cameras
  python -m getlocal demo --model openvla-tiny --mode fast  # the models keep their kernels (sdpa, timm fused)

writes into --out: capture/ (the saved maps), one folder of figures per tower,
summary.md and summary.json; prints the per-layer pattern table.
"""

_EPILOG_PLOT = """example:
  python -m getlocal demo --out run1                   # on the machine with the model
  python -m getlocal plot run1/capture --out figs      # anywhere: needs numpy, matplotlib, safetensors
"""


class CommandError(Exception):
    """A bad argument or an unusable input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="python -m getlocal",
        description="Capture named locals (attention maps above all) out of deep models, and look at them.",
        epilog=_EPILOG, formatter_class=raw)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="capture every attention map of a model on a picture, analyse and draw them",
        description=(
            "Run a model on a picture with every attention map captured; measure the patterns of every head "
            "(diagonal, stripe, vertical, mean attention distance); draw the heads of a few layers, grid-to-grid "
            "overlays for a few query patches, the patterns against depth and, for VLA models, the attention of "
            "text and action tokens to the image; save the capture; write summary.md and summary.json; print "
            "the per-layer table. No network unless --pretrained asks for it."),
        epilog=_EPILOG_DEMO, formatter_class=raw)
    demo.add_argument("--model", default=DEMO_MODEL, metavar="NAME",
                      help=f"a timm ViT name (default {DEMO_MODEL}), or openvla-tiny / paligemma-tiny "
                           "(small random-init VLA models; need transformers)")
    demo.add_argument("--image", metavar="PATH",
                      help="the picture (default: matplotlib's sample photo grace_hopper.jpg, shipped offline)")
    demo.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                      help=f"output directory (default ./{DEFAULT_OUT}/)")
    demo.add_argument("--pretrained", action="store_true",
                      help="download the trained weights of a timm model from the Hugging Face hub if not cached")
    demo.add_argument("--weights", metavar="PATH",
                      help="load the model's weights from disk: a state-dict file (.safetensors, .pth, .pt, .bin) "
                           "or a directory holding model.safetensors or pytorch_model.bin (what save_pretrained "
                           "writes); no network")
    demo.add_argument("--mode", choices=("eager", "fast"), default="eager",
                      help="eager (default): the model is switched to eager attention and its maps captured; "
                           "fast: the model keeps its own kernel (timm fused, transformers sdpa) and the maps are "
                           "rebuilt exactly from the kernel's inputs")
    demo.add_argument("--quiet", action="store_true", help="no progress bars (they only show on a terminal anyway)")
    demo.set_defaults(run=_demo)
    plot = commands.add_parser(
        "plot", help="draw the figures and summary of a saved capture, without the model",
        description=("Read a capture saved by `python -m getlocal demo` or getlocal.save(path, maps) and write "
                     "the same figures, summary.md and summary.json as the demo, without the model "
                     "(no torch needed)."),
        epilog=_EPILOG_PLOT, formatter_class=raw)
    plot.add_argument("capture", metavar="CAPTURE_DIR", help="a directory written by getlocal.save()")
    plot.add_argument("--out", required=True, metavar="DIR", help="output directory for figures and summary")
    plot.add_argument("--quiet", action="store_true", help="no progress bar (it only shows on a terminal anyway)")
    plot.set_defaults(run=_plot)
    view = commands.add_parser(
        "view", help="write one self-contained HTML page to explore a saved capture in the browser",
        description="Write an interactive page (no server, no network) of a capture saved by getlocal.save() or "
                    "the demo; by default beside the capture: CAPTURE_DIR.html.")
    view.add_argument("capture", metavar="CAPTURE_DIR", help="a directory written by getlocal.save()")
    view.add_argument("--out", metavar="FILE.html", help="the page to write (default: CAPTURE_DIR.html)")
    view.set_defaults(run=_view)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from ._errors import GetLocalError

    try:
        return args.run(args)
    except (CommandError, GetLocalError) as exc:
        print(f"getlocal {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"getlocal {args.command}: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- checks done before any work


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".getlocal-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        why = getattr(exc, "strerror", None) or exc
        raise CommandError(f"cannot write to --out {path!r} ({why}); choose another directory") from None
    return out


def _picture_file(path: Optional[str]) -> Tuple[str, str]:
    """``(file, how to describe it)``; the default is matplotlib's sample photograph."""
    if path is None:
        from matplotlib.cbook import get_sample_data

        return str(get_sample_data("grace_hopper.jpg", asfileobj=False)), "grace_hopper.jpg (matplotlib's sample data)"
    if "\0" in path or not os.path.isfile(path):
        raise CommandError(f"--image {path}: no such file; give a JPEG/PNG picture, or leave --image out "
                           "for the sample photo")
    return path, os.path.basename(path)


def _open_picture(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise CommandError(f"--image {path}: too large to open safely ({exc}); give a smaller picture") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CommandError(f"--image {path}: not a picture PIL can read ({exc}); give a JPEG or PNG") from None


def _square(picture, size: int):
    """The centre square of ``picture`` resized to ``size`` x ``size``, as uint8 ``[H, W, 3]``."""
    import numpy as np
    from PIL import Image

    w, h = picture.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(picture.crop(box).resize((size, size), Image.BICUBIC))


def _check_model(name: str) -> None:
    if name in TINY_MODELS:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise CommandError(f"--model {name} needs transformers: python -m pip install -e \".[adapters]\"") from None
        return
    import timm

    if not timm.is_model(name):
        raise CommandError(
            f"unknown model {name!r}; use {DEMO_MODEL} (the default), openvla-tiny, paligemma-tiny, or another "
            "timm ViT name (python -c \"import timm; print(timm.list_models('vit_*'))\")")


# --------------------------------------------------------------------------- demo


def _demo(args) -> int:
    if args.pretrained and args.model in TINY_MODELS:
        raise CommandError(f"--pretrained is for timm models; {args.model} is random init by design "
                           "(--weights PATH loads a checkpoint of it from disk)")
    if args.pretrained and args.weights:
        raise CommandError("--pretrained and --weights both say where the weights come from; give one")
    _check_model(args.model)
    weights = _weights_file(args.weights) if args.weights else None
    file, described = _picture_file(args.image)
    picture = _open_picture(file)
    out = _out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")  # a command line writes files; it never opens windows
    from . import saved

    stages = _progress(args.quiet, total=2, desc=args.model, unit="stage")
    stages.set_postfix_str("building and running the model")
    try:
        maps, images, info = _capture(args.model, args.pretrained, picture, weights, args.mode)
        stages.update()
        stages.set_postfix_str("saving the capture")
        info.update(model=args.model, image=described)
        capture = saved.save(out / "capture", maps, images=images, info=info)
        stages.update()
    finally:
        stages.close()
    print(f"{args.model}: {info['weights']}")
    print(f"image: {described}, {info['preprocessing']}")
    print(describe_steps(maps))
    size = sum(f.stat().st_size for f in capture.rglob("*") if f.is_file())
    print(f"saved the capture to {capture}/ ({len(maps)} maps, {size / 2**20:.1f} MB); "
          f"`python -m getlocal plot {capture} --out DIR` redraws everything below without the model")
    report(maps, images, info, out, quiet=args.quiet)
    from .viewer import view

    page = view(capture, out=out / "view.html")
    if random_weights(info):
        print(f"\nnote: {RANDOM_NOTE}")
    print(f"\nexplore the capture in a browser: open {page.path} (one self-contained page)")
    return 0


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


def _plot(args) -> int:
    from . import saved

    found = saved.read(args.capture)
    if hasattr(found.data, "ranks"):  # a recorded episode (getlocal.record)
        return _plot_run(args, found.data)
    if not hasattr(found.data, "select"):
        raise CommandError(f"{args.capture} holds a raw cache (get_local.cache); plot draws labelled maps: "
                           "save the AttentionMaps of an adapter's collect() instead")
    if not len(found.data):
        raise CommandError(f"{args.capture} holds no attention maps; nothing to draw")
    out = _out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")
    info = _known_info(found.info)
    print(f"{info.get('model', 'capture')}: {info.get('weights', 'weights unknown')} "
          f"(saved by getlocal {found.version or '?'})")
    print(describe_steps(found.data))
    try:
        report(found.data, found.images, info, out, quiet=args.quiet)
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        # load() checked every label getlocal relies on; this is a capture no getlocal wrote
        raise CommandError(f"cannot draw {args.capture}: {type(exc).__name__}: {exc}; its maps are not what "
                           "getlocal saves (was it edited?)") from None
    if random_weights(info):
        print(f"\nnote: {RANDOM_NOTE}")
    return 0


def _plot_run(args, run) -> int:
    """Episode figures of a run recorded by getlocal.record: one set per part (process)."""
    if not len(run):
        raise CommandError(f"{args.capture} is a recorded run with no completed step; nothing to draw")
    out = _out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")
    from ._report import report_run

    for line in report_run(run, out):
        print(line)
    return 0


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


def _view(args) -> int:
    from .viewer import view

    capture = Path(args.capture)
    page = view(capture, out=args.out or capture.parent / f"{capture.resolve().name}.html")
    print(f"wrote {page.path} ({len(page.html) / 2**20:.1f} MB); open it in a browser")
    return 0


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_file(path: str) -> str:
    """The state-dict file that ``--weights`` names (a file, or a directory that save_pretrained wrote)."""
    if "\0" not in path and os.path.isdir(path):
        for name in _WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CommandError(f"--weights {path}: a directory without {' or '.join(_WEIGHT_FILES)}; give the "
                           "checkpoint file itself or a directory written by save_pretrained")
    if "\0" in path or not os.path.isfile(path):
        raise CommandError(f"--weights {path}: no such file; give a .safetensors/.pth state dict of the model")
    return path


def _load_weights(model, path: str, what: str) -> None:
    """Load the state dict in ``path`` into ``model``, every key and shape exactly; else one line."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(f"--weights {path}: not a readable state dict ({first[:160]}); give a .safetensors "
                           "or .pth file saved from the model's state_dict()") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights one level down
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"--weights {path}: not a state dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {word} (e.g. {v[0]})" for v, word in ((missing, "missing"), (unexpected, "unexpected"),
                                                                    (wrong, "of another shape")) if v]
        raise CommandError(f"--weights {path} does not fit {what}: keys {', '.join(parts)}; give a checkpoint "
                           "of this very model")
    model.load_state_dict(state, strict=True)


def _check_hub(repo: str) -> None:
    """Fail within seconds, in one line, where the hub cannot be reached (instead of the client's minute of retries)."""
    import socket
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CommandError(f"--pretrained needs the network to download {repo}, but HF_HUB_OFFLINE is set; "
                           "unset it, or pass --weights PATH to a checkpoint on disk")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlsplit(endpoint)
    proxy = getproxies().get(url.scheme)
    target = urlsplit(proxy) if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=HUB_TIMEOUT).close()
    except OSError as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        via = f" through the proxy {proxy}" if proxy else ""
        raise CommandError(f"--pretrained: cannot reach {endpoint}{via} ({why}); check the network (and "
                           "HF_ENDPOINT), pass --weights PATH to a checkpoint on disk, or leave --pretrained out "
                           "for random weights") from None


def _vit_model(name: str, pretrained: bool, weights: Optional[str] = None):
    """The timm model and a sentence saying which weights it has. Never touches the network unless asked."""
    import timm

    if weights:
        model = timm.create_model(name, pretrained=False)
        _load_weights(model, weights, f"{name}")
        return model, f"weights from {weights}"

    repo = getattr(timm.models.get_pretrained_cfg(name) or object(), "hf_hub_id", None)
    cached = None
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str):
                    cached = found
                    break
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            pass
    if cached:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model, f"trained weights from the local Hugging Face cache ({repo})"
    if pretrained:
        _check_hub(repo or name)
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CommandError(f"could not download the weights of {repo or name} ({type(exc).__name__}: {first}); "
                               "check the network, or run without --pretrained for random init") from None
        return model, f"trained weights downloaded from the Hugging Face hub ({repo})"
    import torch

    torch.manual_seed(0)  # the same random weights on every run, so runs can be compared
    model = timm.create_model(name, pretrained=False)
    flag = "" if name == DEMO_MODEL else f" --model {name}"
    how = f"run `python -m getlocal demo{flag} --pretrained` to download them" if repo else \
        "timm has no trained weights for it on the Hugging Face hub"
    return model, (f"random init: no trained weights for {repo or name} in the local Hugging Face cache; {how}. "
                   "Random weights show the machinery; trained ones show the patterns")


class _Demo(NamedTuple):
    """A demo model ready to run: the adapter that captures it, and what the capture is saved with."""

    model: Any
    run: Callable[[], Any]  # one run on the picture
    adapter: Any  # getlocal.adapters.vit, openvla or paligemma
    images: Dict[str, Any]
    info: Dict[str, Any]
    options: Dict[str, Any] = {}  # for the adapter's capture(): cameras, state_tokens


def _capture(name: str, pretrained: bool, picture, weights: Optional[str] = None, mode: str = "eager"):
    """``(maps, images, info)``: the demo model ``name`` run once on ``picture`` with every map captured."""
    from getlocal import get_local

    build = {"openvla-tiny": _openvla_demo, "paligemma-tiny": _pi0_demo}.get(name, _vit_demo)
    demo = build(name, pretrained, picture, weights, mode)
    demo.info["mode"] = mode
    get_local.clear()
    try:
        with demo.adapter.capture(demo.model, mode=mode, **demo.options) as maps:
            demo.run()
    finally:
        get_local.clear()
    if not len(maps):
        raise CommandError(f"--model {name}: no attention map was captured; its blocks are not timm Attention "
                           f"modules; give a ViT such as {DEMO_MODEL}")
    return maps, demo.images, demo.info


def _vit_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    import numpy as np
    import torch

    from getlocal.adapters import vit

    model, described = _vit_model(name, pretrained, weights)
    model.eval()
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise CommandError(f"--model {name} is not a vision transformer (no blocks/patch_embed); "
                           f"give a ViT such as {DEMO_MODEL}, or openvla-tiny / paligemma-tiny")
    size = int(model.patch_embed.img_size[0])
    shown = _square(picture, size)
    mean = np.asarray(model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)), dtype=np.float32)
    std = np.asarray(model.pretrained_cfg.get("std", (0.5, 0.5, 0.5)), dtype=np.float32)
    pixels = torch.from_numpy(((shown / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    info = {"weights": described, "random_weights": described.startswith("random init"),
            "patch_size": {"vit": vit.patch_size(model)},
            "preprocessing": f"centre square resized to {size}x{size}, normalised with mean {mean.tolist()} "
                             f"std {std.tolist()}"}
    return _Demo(model, torch.no_grad()(lambda: model(pixels)), vit, {"image": shown}, info)


def _tiny_pixels(shown):
    import torch

    return torch.from_numpy(shown / 127.5 - 1.0).float().permute(2, 0, 1)[None]  # [-1, 1], as SigLIP


def _openvla_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    from getlocal.adapters import openvla, tiny

    model = tiny.openvla(image_size=TINY_IMAGE, attn_implementation="eager" if mode == "eager" else None)
    if weights:
        _load_weights(model, weights, name)
    shown = _square(picture, TINY_IMAGE)
    _, ids = tiny.openvla_inputs(model)
    info = {"weights": f"weights from {weights}" if weights else
                       "random init (a small OpenVLA-shaped model: timm DINOv2 with registers + SigLIP, an MLP "
                       "projector and a 2-layer Llama; no trained weights exist for it)",
            "random_weights": not weights,
            "patch_size": {"dinov2": 14, "siglip": 14},
            "preprocessing": f"centre square resized to {TINY_IMAGE}x{TINY_IMAGE}; 7 generated (action) tokens",
            "generated": "action"}
    return _Demo(model, lambda: tiny.generate(model, _tiny_pixels(shown), ids, max_new_tokens=7), openvla,
                 {"image": shown}, info)


def _pi0_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    import numpy as np
    from PIL import Image

    from getlocal.adapters import paligemma, tiny

    model = tiny.pi0(image_size=TINY_IMAGE, attn_implementation="eager" if mode == "eager" else None)
    if weights:
        _load_weights(model, weights, name)
    exterior = _square(picture, TINY_IMAGE)
    w, h = picture.size
    wrist = picture.crop((w // 4, h // 2, 3 * w // 4, h)).resize((TINY_IMAGE, TINY_IMAGE), Image.BICUBIC)
    wrist = np.asarray(wrist)
    _, ids, state = tiny.pi0_inputs(model, cameras=2)
    info = {"weights": f"weights from {weights}" if weights else
                       "random init (a small Pi0-shaped model: PaliGemma = SigLIP + 2-layer Gemma, beside a Gemma "
                       "action expert; no trained weights exist for it)",
            "random_weights": not weights,
            "patch_size": {"vision": 14},
            "preprocessing": (f"two cameras: exterior = centre square, wrist = a crop of the lower half, both "
                              f"resized to {TINY_IMAGE}x{TINY_IMAGE}; 1 state + 4 action tokens, 3 denoising steps")}
    return _Demo(model, lambda: model.sample_actions([_tiny_pixels(exterior), _tiny_pixels(wrist)], ids, state,
                                                     horizon=4, steps=3),
                 paligemma, {"exterior": exterior, "wrist": wrist}, info,
                 {"cameras": ["exterior", "wrist"], "state_tokens": 1})
