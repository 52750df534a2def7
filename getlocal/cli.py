"""``python -m getlocal``: the command line.

>>> main(["--help"])  # doctest: +SKIP
"""
import argparse
import sys
from typing import List, Optional

DEMO_MODEL = "vit_small_patch16_224"

_EPILOG_DEMO = """example:
  python -m getlocal demo                 # random init unless the weights are cached
  python -m getlocal demo --pretrained    # download the trained weights first
"""


class CommandError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m getlocal",
        description="Capture named locals (attention maps) out of deep models.",
        epilog="example:\n  python -m getlocal demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="capture the attention map of every block of a ViT and describe it",
        description=(
            f"Build timm's {DEMO_MODEL} (trained weights if they are in the local Hugging Face "
            "cache or --pretrained asks for a download, random init otherwise), capture the "
            "local `attn` of every attention block during one forward pass, and print one line per block."
        ),
        epilog=_EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--pretrained", action="store_true",
                      help="download the trained weights from the Hugging Face hub if they are not cached")
    demo.set_defaults(run=_demo)
    return parser


def _vit(pretrained: bool):
    """The demo ViT and a sentence saying which weights it has. Never touches the network unless asked."""
    import timm

    cfg = timm.models.get_pretrained_cfg(DEMO_MODEL)
    repo = cfg.hf_hub_id
    cached = None
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
        model = timm.create_model(DEMO_MODEL, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model, f"trained weights from the local cache ({repo})"
    if pretrained:
        try:
            model = timm.create_model(DEMO_MODEL, pretrained=True)
        except Exception as exc:
            raise CommandError(
                f"could not download the weights of {repo} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check the network, or run without --pretrained for random init"
            ) from exc
        return model, f"trained weights downloaded from the Hugging Face hub ({repo})"
    model = timm.create_model(DEMO_MODEL, pretrained=False)
    return model, (
        f"random init: no trained weights for {repo} in the local Hugging Face cache; "
        "run `python -m getlocal demo --pretrained` to download them (about 90 MB)"
    )


def _demo(args) -> int:
    import torch

    from . import get_local

    model, weights = _vit(args.pretrained)
    model.eval()
    print(f"{DEMO_MODEL}: {weights}")
    # timm's fused attention (scaled_dot_product_attention) never materialises
    # the attention map; the explicit path computes the same thing step by step.
    forwards = {type(block.attn).forward for block in model.blocks}
    for block in model.blocks:
        block.attn.fused_attn = False
    for forward in forwards:
        get_local("attn")(forward)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with get_local.capture() as cache, torch.no_grad():
        model(image)
    maps = [m for forward in forwards for m in cache[get_local.key_of(forward)]]
    for forward in forwards:
        get_local.remove(forward)
    for index, attn in enumerate(maps):
        print(f"block {index:2d}: attn {tuple(attn.shape)} {attn.dtype}, rows sum to {attn.sum(-1).mean():.3f}")
    print(f"captured {len(maps)} attention maps from {len(model.blocks)} blocks")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"getlocal {args.command}: {exc}", file=sys.stderr)
        return 2
