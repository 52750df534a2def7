"""The mode and selection keywords of ``activate`` / ``capture``, checked and normalised before anything changes."""
import sys
from typing import Any, Dict, Sequence

from getlocal import _check
from getlocal._convert import MODES


def check_choice(choice: Dict[str, Any], convert, towers_known: Sequence[str]) -> Dict[str, Any]:
    """``mode`` and the selection, checked and normalised (a tuple for every list) before anything changes.

    ``towers_known``: the towers the adapter writes.
    """
    out = dict(DEFAULT_CHOICE, **choice)
    _check.choice("mode", out["mode"], ("eager", "fast"))
    towers = out["towers"]
    if towers is not None:
        towers = (towers,) if isinstance(towers, str) else _sequence("towers", towers, "tower names")
        for tower in towers:
            _check.choice("towers", tower, towers_known)
        out["towers"] = frozenset(towers)
    if out["layers"] is not None:
        out["layers"] = tuple(_check.integer("layers", n, low=None, high=None) for n in _as_tuple(out["layers"]))
    out["queries"] = _check_queries(out["queries"])
    heads = out["heads"]
    if heads is not None and not isinstance(heads, str):
        heads = _as_tuple(heads)
        if not heads:
            raise _check.ArgumentError("heads=[] keeps no head; give head indices, 'mean', 'max' or None")
        out["heads"] = tuple(_check.integer("heads", n, low=0, high=None) for n in heads)
    else:
        _check.choice("heads", heads, ("mean", "max"), optional=True)
    dtype = out["dtype"]
    if dtype is not None:
        if type(dtype).__name__ == "dtype" and type(dtype).__module__ == "torch":  # torch.float16 -> 'float16'
            dtype = str(dtype)[len("torch."):]
        out["dtype"] = _check.choice("dtype", dtype, _DTYPES)
        if out["dtype"] == "bfloat16" and convert == "numpy":
            raise _check.ArgumentError(
                "dtype='bfloat16' with convert='numpy': numpy has no bfloat16; use dtype='float16', or "
                "convert='cpu' / 'device' to keep bfloat16 tensors")
    return out


def check_model(model) -> None:
    """``model`` is None or a torch module (probed through type(): the argument may be anything)."""
    if model is None:
        return
    torch = sys.modules.get("torch")
    if torch is None or not issubclass(type(model), torch.nn.Module):
        raise _check.ArgumentTypeError(
            f"model must be a torch.nn.Module (the model, or torch.compile(model)) or None; got {_check.show(model)}")


def check_activation(model, convert, max_calls, max_bytes) -> None:
    check_model(model)
    if not callable(convert):
        _check.choice("convert", convert, MODES)
    _check.integer("max_calls", max_calls, low=1, high=None, optional=True)
    _check.integer("max_bytes", max_bytes, low=1, high=None, optional=True)


#: ``activate()``'s mode and selection keywords, and their defaults (everything, whole, as computed).
DEFAULT_CHOICE = {"mode": "eager", "queries": None, "heads": None, "towers": None, "layers": None, "dtype": None}
_DTYPES = ("float32", "float16", "bfloat16")


def show_choice(choice: Dict[str, Any]) -> str:
    """The keywords that differ from the defaults, as the user would write them (``mode`` always)."""
    shown = {k: v for k, v in choice.items() if k == "mode" or v != DEFAULT_CHOICE[k]}
    return ", ".join(f"{k}={sorted(v) if isinstance(v, frozenset) else v!r}" for k, v in shown.items())


def _sequence(name: str, value, what: str) -> tuple:
    if isinstance(value, (list, tuple)) and value:
        return tuple(value)
    raise _check.ArgumentTypeError(f"{name} must be one of the {what} or a non-empty list of them; got {_check.show(value)}")


def _as_tuple(value) -> tuple:
    """One value, or a list / tuple / range of them, as a tuple."""
    return tuple(value) if isinstance(value, (list, tuple, range)) else (value,)


def _check_queries(queries):
    """``queries=``: None, ``'generated'``/``'action'``, a row index, a list of them, or a slice of rows."""
    if queries is None or isinstance(queries, str):
        return _check.choice("queries", queries, ("generated", "action"), optional=True)
    if isinstance(queries, slice):
        for part in ("start", "stop", "step"):
            _check.integer(f"queries slice {part}", getattr(queries, part), low=None, high=None, optional=True)
        if queries.step is not None and queries.step <= 0:
            raise _check.ArgumentError(f"queries={queries!r}: the slice's step must be positive")
        return queries
    rows = _as_tuple(queries)
    if not rows:
        raise _check.ArgumentError("queries=[] keeps no row; give row indices, a slice, 'generated', 'action' or None")
    return tuple(_check.integer("queries", r, low=None, high=None) for r in rows)
