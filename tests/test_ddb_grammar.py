"""ddb units: the lexer, expressions, the command table, breakpoints, disassembly format."""

from __future__ import annotations

import pytest

from nitdbg.ddb.breakpoints import BreakpointTable
from nitdbg.ddb.commands import COMMANDS, search
from nitdbg.ddb.disasm import Disassembler
from nitdbg.ddb.errors import DdbError
from nitdbg.ddb.expr import ExprContext, expression
from nitdbg.ddb.lex import Lexer, tokenize
from nitdbg.guest.symbols import Symbol, SymbolTable

SYMS = SymbolTable([Symbol(0xFFFFFFFF80200000, "cpu_idle_acpi", 3),
                    Symbol(0xFFFFFFFF80201000, "trap", 0x200),
                    Symbol(0xFFFFFFFF80202000, "deadbeef", 8, "object")])
REGS = {"rsp": 0xFFFFFFFF80209E68, "rip": 0xFFFFFFFF80200002}


def ev(text: str) -> int:
    def var(name: str) -> int:
        if name not in REGS:
            raise DdbError(f"Unknown variable ${name}")
        return REGS[name]
    return expression(Lexer(text), ExprContext(SYMS, var, lambda: 0x1234))


def test_numbers_are_hex_by_default_as_in_ddb():
    assert ev("10") == 0x10
    assert ev("0x10") == 0x10
    assert ev("0t10") == 10
    assert ev("ff") == 0xFF               # a bare hex word that is not a symbol


def test_a_symbol_wins_over_a_hex_word_with_the_same_spelling():
    assert ev("deadbeef") == 0xFFFFFFFF80202000


def test_symbols_registers_operators_and_parentheses():
    assert ev("cpu_idle_acpi+2") == 0xFFFFFFFF80200002
    assert ev("$rsp+8") == 0xFFFFFFFF80209E70
    assert ev("(1+2)*3") == 9
    assert ev("1+2*3") == 7
    assert ev("10/4") == 4
    assert ev("-1") == (1 << 64) - 1
    assert ev(".") == 0x1234


@pytest.mark.parametrize("text,msg", [
    ("nosuchsym", "Symbol 'nosuchsym' not found"),
    ("(1+2", "Syntax error"),
    ("1+", "Syntax error"),
    ("4/0", "Division by 0"),
    ("$nosuch", "Unknown variable $nosuch"),
])
def test_expression_errors_are_ddbs_words(text, msg):
    with pytest.raises(DdbError) as e:
        ev(text)
    assert str(e.value) == msg


def test_lexer_splits_command_modifier_address_and_count():
    kinds = [(t.kind, t.text) for t in tokenize("x/gx $rsp,4")]
    assert kinds == [("ident", "x"), ("punct", "/"), ("ident", "gx"), ("var", "rsp"),
                     ("punct", ","), ("num", "4"), ("eol", "")]


def test_unique_prefixes_and_unknown_commands():
    assert search(COMMANDS, "cont").name == "continue"
    assert search(COMMANDS, "s").name == "s"
    assert search(COMMANDS, "wh").name == "where"
    with pytest.raises(DdbError, match="No such command"):
        search(COMMANDS, "frobnicate")
    with pytest.raises(DdbError, match="Ambiguous"):
        search(COMMANDS, "h")           # help or hwatch


def test_breakpoint_table_as_db_break_c():
    bt = BreakpointTable()
    assert bt.listing(SYMS.format) == "No breakpoints set\n"
    bt.set(0xFFFFFFFF80200001, 1)
    bt.set(0xFFFFFFFF80201010, 3)
    with pytest.raises(DdbError, match=r"^Already set\.$"):
        bt.set(0xFFFFFFFF80200001)
    lines = bt.listing(SYMS.format).splitlines()
    assert lines[0] == " Map      Count    Address"
    assert lines[1].startswith("*") and lines[1].endswith("    3    trap+0x10")
    assert lines[2].endswith("    1    cpu_idle_acpi+0x1")
    with pytest.raises(DdbError, match=r"^Not set\.$"):
        bt.delete(0xFFFFFFFF80200000)
    bt.delete(0xFFFFFFFF80201010)
    assert len(bt.user_breakpoints()) == 1


def test_breakpoints_insert_int3_and_restore_the_original_byte():
    mem = {0x10: 0x55, 0x20: 0xC3}
    bt = BreakpointTable()
    bt.set(0x10)
    bt.set(0x20)
    bt.insert(lambda a, n: bytes([mem[a]]), lambda a, d: mem.__setitem__(a, d[0]), skip=0x20)
    assert mem == {0x10: 0xCC, 0x20: 0xC3}
    bt.remove(lambda a, d: mem.__setitem__(a, d[0]))
    assert mem == {0x10: 0x55, 0x20: 0xC3}


def test_disassembly_in_ddbs_att_style():
    d = Disassembler(SYMS)
    assert d.decode(b"\xc3", 0).text == "ret"
    assert d.decode(b"\x48\x89\xe5", 0).text == "movq\t%rsp,%rbp"
    call = d.decode(b"\xe8\xfb\x0f\x00\x00", 0xFFFFFFFF80200000)
    assert call.text == "call\ttrap" and call.is_call
    iret = d.decode(b"\x48\xcf", 0)
    assert iret.text == "iretq" and iret.is_iret and iret.is_return


def test_decodes_kept_across_disassemblers_are_a_fresh_capstone_reading_with_own_symbols():
    # capstone's reading of (mode, bytes, address) is kept for every disassembler; what
    # each returns must be what a handle of its own reads, its own symbols applied
    import random

    from nitdbg.ddb import disasm
    from nitdbg.guest.symbols import Symbol, SymbolTable
    rnd = random.Random(9)
    other = SymbolTable([Symbol(0xFFFFFFFF80201000, "elsewhere", 0x10)])
    cases = [(b"\xe8\xfb\x0f\x00\x00", 0xFFFFFFFF80200000), (b"\x0f\x0b", 0), (b"", 5),
             (b"\x06", 0x10), (b"\xe8\xfb\x0f\x00\x00", 0xFFFFFFFF80200100),   # the same
             (b"\xeb\xfe", 0x1000), (b"\xeb\xfe", 0x2000)]          # bytes, elsewhere
    cases += [(rnd.randbytes(rnd.randrange(1, 16)), rnd.randrange(1 << 64) & ~0xF)
              for _ in range(300)]
    for mode in (64, 32):
        for syms in (SYMS, other):
            for code, addr in cases:
                kept = Disassembler(syms, mode).decode(code, addr)
                again = Disassembler(syms, mode).decode(code, addr)
                saved = dict(disasm._decoded)
                disasm._decoded.clear()
                try:
                    fresh = Disassembler(syms, mode).decode(code, addr)
                finally:
                    disasm._decoded.update(saved)
                assert kept == again == fresh, (mode, code.hex(), hex(addr))
    assert Disassembler(SYMS).decode(*cases[0]).text == "call\ttrap"
    assert Disassembler(other).decode(*cases[0]).text == "call\telsewhere"
