"""Build the instrumented twin of a code object.

In front of every return instruction the twin calls a recorder, then returns
exactly what the original returned; the original code object is untouched.

A captured local may be unbound when the function returns (assigned on one
branch only, deleted, a free variable not yet assigned by the enclosing
function). Loading it would raise (before 3.12) or push NULL and crash the
interpreter (3.12+), so each return point gets one of two calls:

* ``fast(owner, value_1, ..., value_n)`` where a definite-assignment analysis
  (the same one CPython 3.12 runs to choose LOAD_FAST over LOAD_FAST_CHECK)
  proves that every captured name is bound there. Cells are loaded with
  LOAD_DEREF, so the recorder gets the value and not the cell.
* ``from_locals(locals())`` everywhere else: the snapshot simply lacks the
  names that are unbound. It costs a dict of all locals, so it is only used
  where the analysis cannot prove the cheap path safe.

The user's own instructions are never changed, so what the function returns,
raises, and sees of its own locals stays exactly the same; ``_verify`` checks
that of every twin before the interpreter runs it.
"""
import builtins
import inspect
from types import CodeType
from typing import Dict, FrozenSet, Sequence, Tuple

from bytecode import Bytecode, CellVar, ControlFlowGraph, FreeVar, Instr, TryBegin

from . import _verify, _versions

_STORES = {"STORE_FAST", "STORE_DEREF"}
# 3.13 fused pairs of local accesses into single instructions (gh-113305).
_STORE_PAIRS = {"STORE_FAST_STORE_FAST": (0, 1), "STORE_FAST_LOAD_FAST": (0,)}
# LOAD_FAST_AND_CLEAR (3.12, PEP 709 inlined comprehensions) saves a name
# before a comprehension reuses it, and a later STORE_FAST puts the saved value
# back -- NULL if the name was unbound before -- so a name it touches is never
# proven bound, whatever stores follow.
_CLEARS = "LOAD_FAST_AND_CLEAR"
_UNBINDS = set(_versions.DELETE_OPCODES) | {_CLEARS}
# Before 3.11 a try block is entered by an instruction that jumps to its handler.
_SETUPS = {"SETUP_FINALLY", "SETUP_WITH", "SETUP_ASYNC_WITH"}


def first_argument(code: CodeType):
    """Name of the first positional parameter, or None."""
    if code.co_argcount + code.co_posonlyargcount > 0:
        return code.co_varnames[0]
    return None


def _parameters(code: CodeType) -> Tuple[str, ...]:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return code.co_varnames[:n]


def _arg_name(arg):
    return arg.name if isinstance(arg, (CellVar, FreeVar)) else arg


def _transfer(instr: Instr, state: FrozenSet[str]) -> FrozenSet[str]:
    name = instr.name
    if name in _STORES:
        return state | {_arg_name(instr.arg)}
    if name in _STORE_PAIRS:
        return state | {instr.arg[i] for i in _STORE_PAIRS[name]}
    if name in _UNBINDS:
        return state - {_arg_name(instr.arg)}
    return state


def bound_at_returns(cfg: ControlFlowGraph, code: CodeType, tracked: Sequence[str]) -> Dict[int, FrozenSet[str]]:
    """``{id(return instruction): names of `tracked` definitely bound there}``.

    A forward must-analysis over the control-flow graph: a name is bound at a
    point if every path from the entry stores it and no later instruction on
    that path unbinds it. An exception handler is entered with the state at
    the start of its try block (names only get bound inside it), minus every
    name that the function unbinds anywhere.
    """
    tracked = set(tracked)
    unbound_somewhere = set()
    for block in cfg:
        for instr in block:
            if isinstance(instr, Instr) and instr.name in _UNBINDS:
                unbound_somewhere.add(_arg_name(instr.arg))
                if instr.name == _CLEARS:
                    tracked.discard(instr.arg)
    entry = frozenset(tracked & set(_parameters(code)))
    state_in: Dict[int, FrozenSet[str]] = {id(cfg[0]): entry}
    pending = [cfg[0]]

    def flow(block, state):
        old = state_in.get(id(block))
        new = state if old is None else old & state
        if new != old:
            state_in[id(block)] = new
            pending.append(block)

    def walk(block, on_return=None):
        state = state_in[id(block)]
        for instr in block:
            if isinstance(instr, TryBegin):
                flow(instr.target, state - unbound_somewhere)
                continue
            if not isinstance(instr, Instr):
                continue
            if on_return is not None and instr.name in _versions.RETURN_OPCODES:
                on_return[id(instr)] = state
            state = _transfer(instr, state) & tracked
            if instr.has_jump():
                flow(instr.arg, state - unbound_somewhere if instr.name in _SETUPS else state)
        last = next((i for i in reversed(list(block)) if isinstance(i, Instr)), None)
        if block.next_block is not None and (last is None or not last.is_final()):
            flow(block.next_block, state)

    while pending:
        walk(pending.pop())
    at_returns: Dict[int, FrozenSet[str]] = {}
    for block in cfg:
        if id(block) in state_in:
            walk(block, at_returns)
    return at_returns


def _load(code: CodeType, name: str, lineno: int) -> Instr:
    if name in code.co_cellvars:
        return Instr("LOAD_DEREF", CellVar(name), lineno=lineno)
    return Instr("LOAD_FAST", name, lineno=lineno)


def instrument(code: CodeType, names: Sequence[str], fast, from_locals) -> Tuple[CodeType, Dict[str, int]]:
    """Return the verified twin and how many return points use each call.

    The counts are ``{'fast': n, 'locals': m, 'unreachable': k}``; unreachable
    returns (3.9 and 3.10 keep an implicit ``return None`` after an if/else
    that returns on both branches) never run, and get the safe call.

    The twin is built from the flat instruction list, not from the
    control-flow graph (which serves the analysis only), and keeps the
    original's exception-table depths: ``bytecode`` recomputes a depth per
    try region from the stack height where it meets the region, which is
    wrong for a region resumed after a nested handler's cleanup (a return in
    an ``except`` nested in a ``finally``), and a handler that unwinds to a
    wrong depth crashes 3.11+. The inserted calls leave the stack as they
    found it and sit in the region of the return they precede, so the
    original depths stay right. Raises GetLocalError when ``_verify`` finds
    the twin differs from the original in anything but the inserted calls.
    """
    owner = first_argument(code)
    needed = set(names) | ({owner} if owner else set())
    bytecode = Bytecode.from_code(code, conserve_exception_block_stackdepth=True)
    cfg = ControlFlowGraph.from_bytecode(bytecode)
    bound = bound_at_returns(cfg, code, [n for n in needed if n not in code.co_freevars])
    # The graph copies the instructions in order, so its returns pair with the list's by position.
    states = iter([bound.get(id(i)) for block in cfg for i in block if _is_return(i)])
    used = {"fast": 0, "locals": 0, "unreachable": 0}
    items, extra = [], 0
    for item in bytecode:
        if _is_return(item):
            state, lineno = next(states), item.lineno
            if state is None:
                used["unreachable"] += 1
            if needed <= (state or frozenset()):
                args = [[_load(code, owner, lineno) if owner else Instr("LOAD_CONST", None, lineno=lineno)]]
                args += [[_load(code, name, lineno)] for name in names]
                call = _versions.call(fast, args, lineno)
                used["fast"] += 1
            else:
                args = [_versions.call(builtins.locals, [], lineno, keep=True)]
                call = _versions.call(from_locals, args, lineno)
                used["locals"] += state is not None
            items += call
            extra = max(extra, _peak(call))
        items.append(item)
    bytecode.clear()
    bytecode.extend(items)
    # `bytecode` numbers locals by first use after `argnames`; seeding it with
    # every local keeps co_varnames (what locals() and debuggers list) in order.
    bytecode.argnames = list(code.co_varnames)
    # The stack is at most co_stacksize deep at a return, and a call adds at most `extra` on top.
    twin = bytecode.to_code(stacksize=code.co_stacksize + extra, compute_exception_stack_depths=False)
    _verify.twin_matches(code, twin, (fast, from_locals))
    return twin, used


def _is_return(item) -> bool:
    return isinstance(item, Instr) and item.name in _versions.RETURN_OPCODES


def _peak(instrs: Sequence[Instr]) -> int:
    depth = peak = 0
    for instr in instrs:
        depth += instr.stack_effect(jump=False)
        peak = max(peak, depth)
    return peak
