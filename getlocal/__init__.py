"""Capture named local variables (attention maps above all) out of deep models.

>>> from getlocal import get_local
>>> @get_local('attn')
... def softmax_scores(x):
...     attn = [v / sum(x) for v in x]
...     return len(attn)
>>> with get_local.capture():
...     softmax_scores([1, 3])
2
>>> get_local.cache['softmax_scores']
[[0.25, 0.75]]
"""
from . import _live
from ._core import GetLocal
from ._errors import GetLocalError
from ._store import Call

__version__ = "0.1.0"

get_local = GetLocal()
_live.hand(get_local, __version__)  # storage saves and empties this cache; it never imports the front door

__all__ = ["get_local", "GetLocal", "GetLocalError", "Call", "save", "load", "record", "view", "__version__"]


def __getattr__(name):
    # save/load need numpy and safetensors, so getlocal.saved is imported on first use:
    # `import getlocal` itself needs nothing but bytecode.
    if name in ("save", "load"):
        from . import saved

        return getattr(saved, name)
    if name == "view":  # numpy, and the page is built only when asked for
        from .viewer import view

        return view
    if name == "record":
        from . import recording

        return recording.record
    raise AttributeError(f"module 'getlocal' has no attribute {name!r}")
