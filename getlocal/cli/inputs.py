"""The paths a user names on the command line, checked before any work; ``CommandError`` when one is unusable.

>>> picture_file("no-such.jpg")
Traceback (most recent call last):
getlocal.cli.inputs.CommandError: --image no-such.jpg: no such file; give a JPEG/PNG picture, ...
>>> issubclass(CommandError, GetLocalError)
True
"""
import os
from pathlib import Path
from typing import Optional, Tuple

from getlocal import GetLocalError


class CommandError(GetLocalError):
    """A bad argument or an unusable input: printed as one line, exit status 2."""


def out_dir(path: str) -> Path:
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


def picture_file(path: Optional[str]) -> Tuple[str, str]:
    """``(file, how to describe it)``; the default is matplotlib's sample photograph."""
    if path is None:
        from matplotlib.cbook import get_sample_data

        return str(get_sample_data("grace_hopper.jpg", asfileobj=False)), "grace_hopper.jpg (matplotlib's sample data)"
    if "\0" in path or not os.path.isfile(path):
        raise CommandError(f"--image {path}: no such file; give a JPEG/PNG picture, or leave --image out "
                           "for the sample photo")
    return path, os.path.basename(path)


def open_picture(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise CommandError(f"--image {path}: too large to open safely ({exc}); give a smaller picture") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CommandError(f"--image {path}: not a picture PIL can read ({exc}); give a JPEG or PNG") from None


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_file(path: str) -> str:
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
