"""Keeping torch.compile (TorchDynamo) away from instrumented code.

Dynamo cannot trace a twin: it loads the recorder and the unbound-sentinel as
constants, which Dynamo only accepts for literals. So while a function is
instrumented, Dynamo is told to leave it alone: a compiled model breaks its
graph at each instrumented call, runs that call eagerly (recording real
tensors), and compiles the rest. ``fullgraph=True`` therefore raises Dynamo's
own error naming the skipped function. torch is only used if already imported.
"""
import sys

_FLAG = "_torchdynamo_disable"
_REASON = "_torchdynamo_disable_msg"  # Dynamo quotes it in its graph-break error


def _dynamo():
    torch = sys.modules.get("torch")
    return getattr(torch, "_dynamo", None) if torch is not None else None


def shield(recorder):
    """The recorder, made to run eagerly even when called from compiled code."""
    torch = sys.modules.get("torch")
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(recorder) if disable is not None else recorder


def skip(func, twin) -> bool:
    """Make Dynamo skip ``func`` while it runs ``twin``; True if we set the flag."""
    dynamo = _dynamo()
    if dynamo is None:
        return False
    skip_code = getattr(getattr(dynamo, "eval_frame", None), "skip_code", None)
    if skip_code is not None:
        skip_code(twin)
    if func.__dict__.get(_FLAG):
        return False
    setattr(func, _FLAG, True)
    setattr(func, _REASON, (
        f"getlocal is capturing locals of {func.__qualname__}, so it runs eagerly; "
        "call get_local.deactivate() (or get_local.remove on it) to compile it with fullgraph=True"
    ))
    return True


def unskip(func) -> None:
    func.__dict__.pop(_FLAG, None)
    func.__dict__.pop(_REASON, None)
