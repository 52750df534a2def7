"""A twin is handed to the interpreter only if it is its original plus recorder calls before the returns.

Each test corrupts a correct twin in one way the interpreter would not
notice until it crashed or misbehaved, and checks that the verifier names the
function and refuses it.
"""
import textwrap
import warnings

import pytest
from bytecode import Bytecode, ControlFlowGraph, Instr, Label

from getlocal import GetLocalError, _rewrite, _verify, _versions, get_local

SOURCE = """
def forward(x):
    attn = x * 2
    try:
        if x > 5:
            return attn
    finally:
        for _ in range(2):
            try:
                try:
                    raise ValueError
                except ValueError:
                    raise ValueError
            except ValueError:
                attn = attn + 1
    return attn - 1
"""


def record(*args):
    pass


def _original():
    namespace = {}
    exec(compile(textwrap.dedent(SOURCE), "<verify>", "exec"), namespace)
    return namespace["forward"].__code__


def _twin(original):
    return _rewrite.instrument(original, ["attn"], record, record)[0]


def _rebuilt(code, edit):
    """``code`` with ``edit`` applied to its instruction list, the exception-table depths kept."""
    instructions = Bytecode.from_code(code, conserve_exception_block_stackdepth=True)
    edit(instructions)
    return instructions.to_code(stacksize=code.co_stacksize, compute_exception_stack_depths=False)


def _rejects(twin, words):
    with pytest.raises(GetLocalError, match=f"forward.*{words}"):
        _verify.twin_matches(_original(), twin, (record,))


def test_correct_twin_passes():
    original = _original()
    _verify.twin_matches(original, _twin(original), (record,))


@pytest.mark.skipif(not _versions.PY311, reason="exception tables exist from 3.11")
def test_exception_table_depths_recomputed_by_the_control_flow_graph_are_rejected():
    # What the rewriter used to hand over on 3.11+: the graph's depth for a
    # try region resumed after a nested handler's cleanup is too deep.
    twin = _twin(_original())
    recomputed = ControlFlowGraph.from_bytecode(Bytecode.from_code(twin)).to_code()
    _rejects(recomputed.replace(co_stacksize=twin.co_stacksize), "covered by")


def test_changed_user_instruction_is_rejected():
    def edit(instructions):
        index = next(i for i, instr in enumerate(instructions)
                     if isinstance(instr, Instr) and instr.name == "LOAD_CONST" and instr.arg == 2)
        instructions[index] = Instr("LOAD_CONST", 3, lineno=instructions[index].lineno)

    _rejects(_rebuilt(_twin(_original()), edit), "became")


def test_jump_that_lands_elsewhere_is_rejected():
    def edit(instructions):
        jumps = [instr for instr in instructions if isinstance(instr, Instr) and isinstance(instr.arg, Label)]
        first = jumps[0]
        first.arg = next(j.arg for j in jumps if j.arg is not first.arg)

    _rejects(_rebuilt(_twin(_original()), edit), "became")


def test_return_without_recorder_call_is_rejected():
    original = _original()
    _rejects(_rebuilt(original, lambda instructions: None), "is missing")


def test_call_that_leaves_its_result_on_the_stack_is_rejected():
    def edit(instructions):
        index = next(i for i, instr in enumerate(instructions)
                     if isinstance(instr, Instr) and instr.name in _versions.RETURN_OPCODES)
        assert instructions[index - 1].name == "POP_TOP"
        del instructions[index - 1]

    _rejects(_rebuilt(_twin(_original()), edit), "changes the stack depth by 1")


def test_stack_size_without_room_for_the_call_is_rejected():
    original = _original()
    _rejects(_twin(original).replace(co_stacksize=original.co_stacksize), "stack slots")


def test_function_whose_twin_fails_verification_runs_uncaptured_with_a_warning(monkeypatch):
    # A rewriter bug simulated at its source: calls that leave the recorder's
    # result on the stack, so the twin would return None instead of the value.
    real_call = _versions.call
    monkeypatch.setattr(_versions, "call", lambda *args, **kwargs: real_call(*args, **kwargs)[:-1]
                        if not kwargs.get("keep") else real_call(*args, **kwargs))

    def forward(x):
        attn = x * 2
        return attn + 1

    get_local("attn")(forward)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_local.activate(convert="raw")
    messages = [str(w.message) for w in caught]
    assert any("forward" in m and "failed verification" in m and "runs uncaptured" in m for m in messages), messages
    assert forward(3) == 7
    assert get_local.cache == {}
