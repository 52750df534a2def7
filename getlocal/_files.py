"""Files that survive a kill, and file names made from labels that may come from anyone.

Every file getlocal writes (figures, summaries, a capture's index) goes through
:func:`write_atomic`: written under a temporary name in the same folder, flushed
to disk, then renamed over the final name, so a reader or a crash sees the old
file or the new one, never half of one (git's lock files, SQLite's commit).

Labels read from a capture (tower, phase) become folder and file names, and a
capture may come from a colleague: :func:`safe_name` turns any text into one
plain file name.
"""
import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 64


def safe_name(text) -> str:
    """``text`` as one file name: letters, digits and ``._-`` only, no leading dot, at most 64 characters.

    A name that had to change ends in ``~`` and a hash of the original: no untouched name has a ``~``,
    so two different labels never share a file.

    >>> safe_name("vit"), safe_name("../../x"), safe_name("/etc")
    ('vit', '_._.._x~9cdf6a50', '_etc~2824684d')
    """
    text = str(text)
    name = _UNSAFE.sub("_", text)
    name = ("_" + name[1:] if name.startswith(".") else name)[:_MAX_NAME - 9]
    if name != text:
        name += "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return name


def write_atomic(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a new file beside ``path``, flush it to disk, then rename it to ``path``.

    An interrupted write (Ctrl-C, an exception) removes the temporary file; a kill leaves at most a
    hidden ``.NAME.*.tmp`` beside it, never a damaged ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name[:80]}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # os.open rather than mkstemp: the file gets the umask's permissions, like any file the user writes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder) -> None:
    """Make the renames and new files in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are journaled by NTFS
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
