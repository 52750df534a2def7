"""Every difference between CPython versions that the rewriter depends on.

Nothing else in getlocal looks at ``sys.version_info``: the rest imports the
flags and the small instruction builders below.
"""
import sys
from typing import List, Tuple

from bytecode import Instr

PY310 = sys.version_info >= (3, 10)
PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

# 3.12 (gh-101632) added RETURN_CONST: `return <constant>` (and the implicit
# `return None`) no longer passes through RETURN_VALUE.
RETURN_OPCODES = frozenset({"RETURN_VALUE", "RETURN_CONST"} if PY312 else {"RETURN_VALUE"})

# Opcodes that unbind a local. A captured name that one of them touches cannot
# be pre-bound to a sentinel without changing what the user's code sees.
DELETE_OPCODES = frozenset({"DELETE_FAST", "DELETE_DEREF"})


# Every opcode `call` below emits, on any version: the verifier accepts
# nothing else in front of a return.
CALL_OPNAMES = frozenset(
    {"PUSH_NULL", "LOAD_CONST", "LOAD_FAST", "LOAD_DEREF", "PRECALL", "CALL", "CALL_FUNCTION", "POP_TOP"}
)


def call(func: object, args: List[List[Instr]], lineno: int, keep: bool = False) -> List[Instr]:
    """Instructions that call ``func(*args)`` and discard the result.

    Each item of ``args`` is the instruction list that pushes one argument.

    The stack is left exactly as it was, so the sequence can sit in front of
    any return instruction, with the return value still on the stack. With
    ``keep`` the result stays on the stack instead (to be an argument).
    """
    n = len(args)
    if PY313:
        # 3.13 (gh-116166) pushes the callable first, then NULL for "no self".
        head = [Instr("LOAD_CONST", func, lineno=lineno), Instr("PUSH_NULL", lineno=lineno)]
        tail = [Instr("CALL", n, lineno=lineno)]
    elif PY312:
        # 3.12 (gh-102859) dropped PRECALL; NULL still goes below the callable.
        head = [Instr("PUSH_NULL", lineno=lineno), Instr("LOAD_CONST", func, lineno=lineno)]
        tail = [Instr("CALL", n, lineno=lineno)]
    elif PY311:
        # 3.11 (bpo-44207, PEP 659) split a call into PRECALL + CALL after a NULL.
        head = [Instr("PUSH_NULL", lineno=lineno), Instr("LOAD_CONST", func, lineno=lineno)]
        tail = [Instr("PRECALL", n, lineno=lineno), Instr("CALL", n, lineno=lineno)]
    else:
        head = [Instr("LOAD_CONST", func, lineno=lineno)]
        tail = [Instr("CALL_FUNCTION", n, lineno=lineno)]
    pop = [] if keep else [Instr("POP_TOP", lineno=lineno)]
    return head + [instr for arg in args for instr in arg] + tail + pop


def exception_table(code) -> List[Tuple[int, int, int, int, bool]]:
    """``[(start, end, handler, depth, lasti), ...]`` in byte offsets; empty before 3.11.

    3.11 (bpo-40222, "zero-cost" exceptions) replaced SETUP_FINALLY and the
    block stack with ``co_exceptiontable``: per entry four varints of 6-bit
    chunks, most significant first, 0x40 marking that another chunk follows
    and 0x80 marking an entry's first byte; offsets are in code units, and the
    last varint is ``depth << 1 | lasti`` (Objects/exception_handling_notes.txt).
    """
    if not PY311:
        return []
    data = iter(code.co_exceptiontable)

    def varint(byte):
        value = byte & 63
        while byte & 64:
            byte = next(data)
            value = (value << 6) | (byte & 63)
        return value

    entries = []
    for first in data:
        start = varint(first) * 2
        end = start + varint(next(data)) * 2
        handler = varint(next(data)) * 2
        depth_lasti = varint(next(data))
        entries.append((start, end, handler, depth_lasti >> 1, bool(depth_lasti & 1)))
    return entries
