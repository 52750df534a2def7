"""Build the instrumented twin of a code object.

In front of every return instruction the twin calls a recorder with the
function's first argument (its ``self`` or ``module``) and the values of the
captured locals, then returns exactly what the original returned. The original
code object is never modified.

Two ways to hand the values over:

* ``fast``: captured plain locals are bound to a sentinel at the top of the
  body, so loading them at a return can never fail, whichever path ran (an
  unbound local is an exception before 3.12 and a NULL on the stack, i.e. a
  crash, from 3.12 on). Cells are loaded with LOAD_DEREF, so the recorder gets
  the value and not the cell.
* ``locals``: when the function deletes a captured name (``del x``, or the
  implicit delete at the end of ``except ... as x``) or captures a free
  variable, pre-binding would change what the user's code sees; the twin then
  passes the ``locals()`` snapshot, in which unbound names are simply absent.
"""
import builtins
import inspect
from types import CodeType
from typing import Sequence, Tuple

from bytecode import Bytecode, CellVar, FreeVar, Instr

from . import _versions


def first_argument(code: CodeType):
    """Name of the first positional parameter, or None."""
    if code.co_argcount + code.co_posonlyargcount > 0:
        return code.co_varnames[0]
    return None


def strategy(code: CodeType, names: Sequence[str]) -> str:
    """``'fast'`` or ``'locals'`` (see the module docstring)."""
    watched = set(names)
    owner = first_argument(code)
    if owner is not None:
        watched.add(owner)
    if watched & set(code.co_freevars):
        return "locals"
    for instr in Bytecode.from_code(code):
        if isinstance(instr, Instr) and instr.name in _versions.DELETE_OPCODES:
            arg = instr.arg
            name = arg.name if isinstance(arg, (CellVar, FreeVar)) else arg
            if name in watched:
                return "locals"
    return "fast"


def _load(code: CodeType, name: str, lineno: int) -> Instr:
    if name in code.co_cellvars:
        return Instr("LOAD_DEREF", CellVar(name), lineno=lineno)
    return Instr("LOAD_FAST", name, lineno=lineno)


def _parameters(code: CodeType) -> Tuple[str, ...]:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return code.co_varnames[:n]


def instrument(code: CodeType, names: Sequence[str], recorder, sentinel) -> Tuple[CodeType, str]:
    """Return ``(twin, strategy)``.

    ``fast``: the twin calls ``recorder(owner, value_1, ..., value_n)`` with
    ``sentinel`` standing for an unbound local. ``locals``: it calls
    ``recorder(locals_dict)``.
    """
    how = strategy(code, names)
    twin = Bytecode.from_code(code)
    items = list(twin)

    if how == "fast":
        parameters = set(_parameters(code))
        start = _versions.body_start(items)
        lineno = code.co_firstlineno
        prebind = []
        for name in names:
            if name in parameters:
                continue
            if name in code.co_cellvars:
                prebind += [Instr("LOAD_CONST", sentinel, lineno=lineno),
                            Instr("STORE_DEREF", CellVar(name), lineno=lineno)]
            else:
                prebind += [Instr("LOAD_CONST", sentinel, lineno=lineno),
                            Instr("STORE_FAST", name, lineno=lineno)]
        items[start:start] = prebind

    owner = first_argument(code)
    twin.clear()
    for item in items:
        if isinstance(item, Instr) and item.name in _versions.RETURN_OPCODES:
            lineno = item.lineno
            if how == "fast":
                args = [[_load(code, owner, lineno) if owner else Instr("LOAD_CONST", None, lineno=lineno)]]
                args += [[_load(code, name, lineno)] for name in names]
            else:
                args = [_versions.call(builtins.locals, [], lineno, keep=True)]
            twin.extend(_versions.call(recorder, args, lineno))
        twin.append(item)
    return twin.to_code(), how
