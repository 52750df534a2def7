"""Keeping torch.compile (TorchDynamo) away from instrumented code.

Dynamo cannot trace a twin: it loads the recorder (and ``locals``) as
constants, which Dynamo only accepts for literals. So while a function is
instrumented, Dynamo is told to leave it alone: a compiled model breaks its
graph at each instrumented call, runs that call eagerly (recording real
tensors), and compiles the rest. ``fullgraph=True`` therefore raises Dynamo's
own error naming the skipped function. The recording code itself (every
function of _core, _store and _convert) is skipped too, so that Dynamo never
tries to compile a recorder called from a skipped frame. Skipping only acts
inside compiled calls and costs nothing elsewhere. torch is only used if
already imported.
"""
import sys
import types

_FLAG = "_torchdynamo_disable"
_REASON = "_torchdynamo_disable_msg"  # Dynamo quotes it in its graph-break error


def _dynamo():
    torch = sys.modules.get("torch")
    return getattr(torch, "_dynamo", None) if torch is not None else None


_shielded = False


def _skip_code():
    dynamo = _dynamo()
    return getattr(getattr(dynamo, "eval_frame", None), "skip_code", None)


def shield_recording_code(modules) -> None:
    """Make Dynamo skip every function of ``modules``, the recording path (once torch is loaded)."""
    global _shielded
    if _shielded:
        return
    skip_code = _skip_code()
    if skip_code is None:
        return
    pending = [obj.__code__ for module in modules for obj in _functions(module)]
    while pending:
        code = pending.pop()
        skip_code(code)
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]  # closures, lambdas
    _shielded = True


def _functions(module):
    for obj in vars(module).values():
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            yield obj
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            yield from (f for f in vars(obj).values() if isinstance(f, types.FunctionType))


def skip(func, twin) -> bool:
    """Make Dynamo skip ``func`` while it runs ``twin``; True if we set the flag."""
    if _dynamo() is None:
        return False
    skip_code = _skip_code()
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


def compiled_already(code) -> bool:
    """Whether Dynamo holds compiled code that traced ``code`` (as a frame of its own or inlined).

    Such compiled code keeps running what it traced: an instrumented twin swapped
    in later is never called from it, so nothing would be captured.
    """
    dynamo = _dynamo()
    if dynamo is None:
        return False
    try:
        from torch._dynamo.code_context import code_context

        if code_context.has_context(code):
            return True
        entries = getattr(dynamo.eval_frame, "_debug_get_cache_entry_list", None)
        return bool(entries is not None and entries(code))
    except Exception:  # private API of torch: absent or changed means we cannot tell
        return False
