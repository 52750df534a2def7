"""``python -m getlocal``: the demo (capture, analyse, draw, save) and ``plot`` (draw from a saved capture).

>>> main(["demo"])                                  # doctest: +SKIP
>>> main(["plot", "getlocal-demo/vit_small_patch16_224/capture", "--out", "again"])   # doctest: +SKIP

``demo`` runs a model on a picture with every attention map captured, saves the
capture (see :mod:`getlocal.saved`) and then draws from it exactly what ``plot``
draws from a saved capture, so the two give the same files. What is drawn is
decided by the maps' labels alone (towers, phases, token layouts), never by
the model: vision towers get their heads, grid-to-grid overlays and patterns by
depth; language towers their heads and the attention of text, generated and
action tokens to the image.

The application, a client of the library (it imports public names only; nothing
in the library imports it): this module parses the command line and prints a
``CommandError`` or any ``GetLocalError`` as one line (exit status 2);
:mod:`~getlocal.cli.commands` does what each command does,
:mod:`~getlocal.cli.models` builds and runs the demo's models,
:mod:`~getlocal.cli.report` writes the figures, tables and summary, and
:mod:`~getlocal.cli.inputs` checks the paths a user names before any work.
"""
import argparse
import sys
from typing import List, Optional

from getlocal import GetLocalError

from . import commands
from .commands import DEFAULT_OUT, PAGE
from .inputs import CommandError
from .models import DEMO_MODEL

__all__ = ["main", "CommandError"]

_EPILOG = f"""examples:
  python -m getlocal demo                      # ViT-S/16 on a sample photo -> {DEFAULT_OUT}/{DEMO_MODEL}/
  python -m getlocal demo --model openvla-tiny # an OpenVLA-shaped model, 7 action tokens -> {DEFAULT_OUT}/openvla-tiny/
  python -m getlocal plot {DEFAULT_OUT}/{DEMO_MODEL}/capture --out figs   # the same figures, without the model
  python -m getlocal view {DEFAULT_OUT}/{DEMO_MODEL}/capture              # the page, in the browser
"""

_WRITES = f"""writes into --out (default {DEFAULT_OUT}/MODEL/, one folder per model):
  capture/        the saved maps (getlocal.load reads them; plot and view take this folder)
  TOWER/*.png     one folder of figures per tower (heads, overlays, patterns by depth, ...)
  summary.md      the tables and every figure, with a legend of the columns
  summary.json    the same numbers, for scripts
  {PAGE}    the capture in one self-contained page for the browser (what view writes)
and prints the per-layer pattern table. Arguments and paths are checked before the model is built;
a run that fails leaves no --out folder that did not exist before it.
"""

_EPILOG_DEMO = f"""examples:
  python -m getlocal demo                              # {DEMO_MODEL}, random init unless its weights are cached
  python -m getlocal demo --pretrained                 # download the trained weights first (about 90 MB)
  python -m getlocal demo --weights vit_s16.safetensors  # a timm state dict on disk: trained figures offline
  python -m getlocal demo --image cat.jpg --out cat/   # your picture, your output directory
  python -m getlocal demo --model deit_small_patch16_224
  python -m getlocal demo --model openvla-tiny         # DINOv2 + SigLIP + Llama: 7 generated tokens, the prefill
                                                       # gives the first, 6 decode steps the rest
  python -m getlocal demo --model paligemma-tiny       # Pi0 shape: SigLIP + Gemma + action expert, 2 cameras
  python -m getlocal demo --model smolvla-tiny         # LeRobot's own SmolVLAPolicy, tiny (needs lerobot)
  python -m getlocal demo --model openvla-tiny --mode fast  # the models keep their kernels (sdpa, timm fused)

{_WRITES}"""

_EPILOG_PLOT = """writes into --out: one folder of figures per tower, summary.md and summary.json (for a capture), or
one folder per part of a recorded run (episode-grid.png, image-share.png, ...); a run that fails leaves no
--out folder that did not exist before it.

example:
  python -m getlocal demo --out run1                   # on the machine with the model
  python -m getlocal plot run1/capture --out figs      # anywhere: needs numpy, matplotlib, safetensors
"""

_EPILOG_VIEW = f"""writes one .html file, by default beside the capture: CAPTURE_DIR.html (the demo's {PAGE}).

example:
  python -m getlocal view {DEFAULT_OUT}/{DEMO_MODEL}/capture   # writes {DEFAULT_OUT}/{DEMO_MODEL}/{PAGE}
"""


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = subparsers.add_parser(
        "demo", help="capture every attention map of a model on a picture, analyse and draw them",
        description=(
            "Run a model on a picture with every attention map captured; measure the patterns of every head "
            "(diagonal, stripe, vertical, mean attention distance); draw the heads of a few layers, grid-to-grid "
            "overlays for a few query patches, the patterns against depth and, for VLA models, the attention of "
            "text and action tokens to the image; save the capture; write summary.md and summary.json; print "
            "the per-layer table. No network unless --pretrained asks for it."),
        epilog=_EPILOG_DEMO, formatter_class=raw)
    demo.add_argument("--model", default=DEMO_MODEL, metavar="NAME",
                      help=f"a timm ViT name (default {DEMO_MODEL}), or openvla-tiny / paligemma-tiny / "
                           "smolvla-tiny (small random-init VLA models; need transformers, smolvla-tiny lerobot)")
    demo.add_argument("--image", metavar="PATH",
                      help="the picture (default: matplotlib's sample photo grace_hopper.jpg, shipped offline)")
    demo.add_argument("--out", metavar="DIR",
                      help=f"output directory (default ./{DEFAULT_OUT}/MODEL/, one per model; see below for what "
                           "is written)")
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
    demo.set_defaults(run=commands.demo)
    plot = subparsers.add_parser(
        "plot", help="draw the figures and summary of a saved capture, without the model",
        description=("Read a capture saved by `python -m getlocal demo` or getlocal.save(path, maps) and write "
                     "the same figures, summary.md and summary.json as the demo, without the model "
                     "(no torch needed)."),
        epilog=_EPILOG_PLOT, formatter_class=raw)
    plot.add_argument("capture", metavar="CAPTURE_DIR", help="a directory written by getlocal.save()")
    plot.add_argument("--out", required=True, metavar="DIR",
                      help="output directory for the figures and summary (see below for what is written)")
    plot.add_argument("--quiet", action="store_true", help="no progress bar (it only shows on a terminal anyway)")
    plot.set_defaults(run=commands.plot)
    view = subparsers.add_parser(
        "view", help="write one self-contained HTML page to explore a saved capture in the browser",
        description="Write an interactive page (no server, no network) of a capture saved by getlocal.save() or "
                    "the demo; by default beside the capture: CAPTURE_DIR.html.",
        epilog=_EPILOG_VIEW, formatter_class=raw)
    view.add_argument("capture", metavar="CAPTURE_DIR", help="a directory written by getlocal.save()")
    view.add_argument("--out", metavar="FILE.html", help="the page to write (default: CAPTURE_DIR.html)")
    view.set_defaults(run=commands.view)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except GetLocalError as exc:  # CommandError among them
        print(f"getlocal {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"getlocal {args.command}: interrupted", file=sys.stderr)
        return 130
