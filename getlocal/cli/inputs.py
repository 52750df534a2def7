"""The paths a user names on the command line, checked before any work; ``CommandError`` when one is unusable.

>>> picture_file("no-such.jpg")
Traceback (most recent call last):
getlocal.cli.inputs.CommandError: --image no-such.jpg: no such file; give a JPEG/PNG picture, ...
>>> issubclass(CommandError, GetLocalError)
True
"""
import contextlib
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

from getlocal import GetLocalError


class CommandError(GetLocalError):
    """A bad argument or an unusable input: printed as one line, exit status 2."""


def out_dir(path: str) -> Path:
    """``--out``, checked without creating anything: an existing directory we can write into, or a path whose
    nearest existing parent is one (the folder is made by :func:`made`, once there is something to write)."""
    def refuse(why):
        return CommandError(f"cannot write to --out {path!r} ({why}); choose another directory")

    if "\0" in path:
        raise refuse("a NUL in the name")
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise refuse("it is a file")
        try:
            probe = out / ".getlocal-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise refuse(exc.strerror or exc) from None
        return out
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise refuse(f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(f"{parent} is not writable")
    return out


@contextlib.contextmanager
def made(out: Path):
    """Make ``out`` (and its missing parents) for the block; if the block fails, remove what was made here.

    A failed run then leaves no empty or half-written ``--out`` behind that did not exist before it.
    """
    first = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot write to --out {str(out)!r} ({exc.strerror or exc}); choose another "
                           "directory") from None
    try:
        yield out
    except BaseException:
        if first is not None:
            shutil.rmtree(first, ignore_errors=True)
        raise


def picture_file(path: Optional[str]) -> Tuple[str, str]:
    """``(file, how to describe it)``; the default is matplotlib's sample photograph."""
    if path is None:
        from matplotlib.cbook import get_sample_data

        return str(get_sample_data("grace_hopper.jpg", asfileobj=False)), "grace_hopper.jpg (matplotlib's sample data)"
    if "\0" not in path and os.path.isdir(path):
        raise CommandError(f"--image {path}: is a directory; give a JPEG/PNG picture file, or leave --image out "
                           "for the sample photo")
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
