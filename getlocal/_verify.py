"""Check an instrumented twin against its original before the interpreter runs it.

CPython trusts a code object: a wrong exception-table depth or a stack size
too small does not raise, it corrupts the frame and crashes the process. So a
twin is only handed over if it differs from its original in exactly one way:
in front of each return, a call to one of our recorders that leaves the stack
as it found it. Everything else -- the user's instructions in order, where
their jumps land, which handler covers them at which depth, their source
positions -- must be the same, or ``twin_matches`` raises GetLocalError and
the function runs uncaptured.
"""
import bisect
import builtins
import dis
from types import CodeType
from typing import Dict, List, Optional, Sequence, Tuple

from . import _versions
from ._errors import GetLocalError

_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
# Instructions whose argument indexes co_consts or co_names, tables that the
# rebuild may reorder: compare what they load, not the index.
_BY_VALUE = frozenset(dis.hasconst) | frozenset(dis.hasname)
_SAME_ATTRIBUTES = (
    "co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_flags",
    "co_varnames", "co_cellvars", "co_freevars", "co_name", "co_firstlineno",
)

_Unit = Tuple[int, dis.Instruction]  # (offset a jump to it lands on, the instruction)


def twin_matches(original: CodeType, twin: CodeType, recorders: Sequence[object]) -> None:
    """Raise GetLocalError unless ``twin`` is ``original`` plus recorder calls in front of its returns."""
    name = getattr(original, "co_qualname", original.co_name)

    def fail(why: str):
        raise GetLocalError(
            f"the instrumented code of {name} ({original.co_filename}:{original.co_firstlineno}) failed "
            f"verification: {why}; please report it to getlocal with the source of {name}"
        )

    for attribute in _SAME_ATTRIBUTES:
        if getattr(original, attribute) != getattr(twin, attribute):
            fail(f"{attribute} changed")
    ours, theirs = _units(original), _units(twin)
    lands: Dict[int, int] = {}  # original offset -> twin offset where control arriving there lands
    pairs: List[Tuple[dis.Instruction, dis.Instruction]] = []
    calls: List[Tuple[List[dis.Instruction], dis.Instruction]] = []
    j = 0
    for start, instr in ours:
        if j == len(theirs):
            fail(f"the twin ends before {instr.opname} at offset {instr.offset}")
        lands[start] = theirs[j][0]
        if instr.opname in _versions.RETURN_OPCODES:
            k = j
            while k < len(theirs) and theirs[k][1].opname not in _versions.RETURN_OPCODES:
                k += 1
            if k == len(theirs):
                fail(f"the return at offset {instr.offset} is missing")
            calls.append(([unit[1] for unit in theirs[j:k]], theirs[k][1]))
            j = k
        pairs.append((instr, theirs[j][1]))
        j += 1
    if j != len(theirs):
        fail(f"{theirs[j][1].opname} at offset {theirs[j][1].offset} is extra")

    for old, new in pairs:
        if not _same_instruction(old, new, lands):
            fail(f"{old.opname} {old.argrepr} at offset {old.offset} became {new.opname} {new.argrepr}")
    room = twin.co_stacksize - original.co_stacksize
    for call, ret in calls:
        problem = _call_problem(call, recorders, room)
        if problem:
            fail(f"the call before the return at offset {ret.offset} {problem}")

    handled_ours, handled_theirs = _Handlers(original), _Handlers(twin)
    for old, new in pairs:
        expected = handled_ours.at(old.offset)
        if expected is not None:
            expected = (lands.get(expected[0]), *expected[1:])
        if handled_theirs.at(new.offset) != expected:
            fail(f"{old.opname} at offset {old.offset} is covered by {handled_theirs.at(new.offset)} "
                 f"instead of {expected} (handler, depth, lasti)")
    for call, ret in calls:
        for instr in call:
            if handled_theirs.at(instr.offset) != handled_theirs.at(ret.offset):
                fail(f"the call before the return at offset {ret.offset} is not covered by that return's handler")


def _units(code: CodeType) -> List[_Unit]:
    """Each instruction with the offset a jump to it targets, its EXTENDED_ARG prefixes included."""
    units, start = [], None
    for instr in dis.get_instructions(code):
        if start is None:
            start = getattr(instr, "start_offset", instr.offset)
        if instr.opname != "EXTENDED_ARG":
            units.append((start, instr))
            start = None
    return units


def _same_instruction(old: dis.Instruction, new: dis.Instruction, lands: Dict[int, int]) -> bool:
    if old.opname != new.opname:
        return False
    if _versions.PY311 and old.positions != new.positions:
        return False
    if old.opcode in _JUMPS:
        return lands.get(old.argval) == new.argval
    if old.opcode in _BY_VALUE:
        same = old.argval is new.argval or (type(old.argval) is type(new.argval) and old.argval == new.argval)
        return same and old.argrepr == new.argrepr
    return old.arg == new.arg


def _call_problem(call: List[dis.Instruction], recorders: Sequence[object], room: int) -> Optional[str]:
    if not call:
        return "is missing"
    strangers = [i.opname for i in call if i.opname not in _versions.CALL_OPNAMES]
    if strangers:
        return f"contains {', '.join(strangers)}"
    constants = [i.argval for i in call if i.opname == "LOAD_CONST"]
    if not any(c is r for c in constants for r in recorders):
        return "calls no recorder"
    if any(c is not None and c is not builtins.locals and all(c is not r for r in recorders) for c in constants):
        return "loads a foreign constant"
    depth = peak = 0
    for instr in call:
        depth += dis.stack_effect(instr.opcode, instr.arg) if instr.arg is not None else dis.stack_effect(instr.opcode)
        peak = max(peak, depth)
    if depth != 0:
        return f"changes the stack depth by {depth}"
    if peak > room:
        return f"needs {peak} stack slots on top of the original's, and the twin has {room}"
    return None


class _Handlers:
    """Which exception-table entry covers an offset (3.11+; before, handlers are SETUP_* jumps)."""

    def __init__(self, code: CodeType):
        self.entries = _versions.exception_table(code)
        self.starts = [entry[0] for entry in self.entries]

    def at(self, offset: int) -> Optional[Tuple[int, int, bool]]:
        """``(handler offset, depth, lasti)`` of the entry covering ``offset``, or None."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.entries[i][1]:
            return self.entries[i][2:]
        return None
