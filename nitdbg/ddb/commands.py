"""The command table and the command loop (after sys/ddb/db_command.c): a table of commands
with a `show` sub-table, unique prefixes, the grammar `cmd[/modifier] [addr][,count]`, and a
blank line that repeats the last command (`x` continuing where it stopped)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..guest.abi import IDT_STUBS
from . import state
from .errors import DdbError
from .examine import EXAMINE_MAX, check_format, examine, print_value
from .expr import ExprContext, expression, starts_expression
from .lex import Lexer
from .regs import FRAME_REGS, SHOW_REGS
from .trace import backtrace

if TYPE_CHECKING:
    from .main import Ddb, DdbResult

CS_OWN = 1          # the command parses the rest of the line itself
CS_MORE = 2         # the command takes more than `addr,count`


@dataclass
class Args:
    addr: int
    have_addr: bool
    count: int          # -1 when none was given
    modif: str
    repeat: bool = False


Handler = Callable[["Ddb", Args], "str | DdbResult"]


@dataclass
class Command:
    name: str
    fn: Handler | None
    help: str = ""
    table: dict[str, Command] = field(default_factory=dict)   # a sub-table (show)


def _table(*cmds: Command) -> dict[str, Command]:
    return {c.name: c for c in cmds}


def search(table: dict[str, Command], name: str) -> Command:
    """db_cmd_search: an exact name, else a unique prefix."""
    if name in table:
        return table[name]
    hits = [c for n, c in table.items() if n.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DdbError("No such command")
    raise DdbError("Ambiguous")


# ---------------------------------------------------------------------- commands
def cmd_step(db: Ddb, a: Args):
    return db.do_step(a.count if a.count > 0 else 1)


def cmd_continue(db: Ddb, a: Args):
    return db.do_continue()


def cmd_until(db: Ddb, a: Args):
    from .main import UNTIL_MAX
    return db.do_step(UNTIL_MAX, mode="until")


def cmd_next(db: Ddb, a: Args):
    return db.do_next()


def cmd_examine(db: Ddb, a: Args) -> str:
    fmt = a.modif or db.examine_format
    check_format(fmt)                 # a bad format is refused before it is remembered
    count = a.count if a.count > 0 else 1
    if count > EXAMINE_MAX:
        raise DdbError(f"Count too large (at most {EXAMINE_MAX:#x} items)")
    out = examine(db, a.addr, fmt, count)
    db.examine_format = fmt
    return out


def cmd_print(db: Ddb, a: Args) -> str:
    if not a.have_addr:
        raise DdbError("Syntax error")
    return print_value(db, a.addr, a.modif)


def cmd_break(db: Ddb, a: Args) -> str:
    if not a.have_addr:
        raise DdbError("Syntax error")
    db.breaks.set(a.addr, a.count if a.count > 0 else 1)
    return ""


def cmd_delete(db: Ddb, a: Args) -> str:
    if not a.have_addr:
        raise DdbError("Syntax error")
    db.breaks.delete(a.addr)
    return ""


def cmd_hwatch(db: Ddb, a: Args) -> str:
    if not a.have_addr:
        raise DdbError("Address missing")
    db.watch.set(a.addr, a.count if a.count > 0 else 4)
    return ""


def cmd_dhwatch(db: Ddb, a: Args) -> str:
    if not a.have_addr:
        raise DdbError("Address missing")
    db.watch.clear(a.addr, a.count if a.count > 0 else 4)
    return ""


def cmd_trace(db: Ddb, a: Args) -> str:
    return backtrace(db, a.count)


def cmd_show_breaks(db: Ddb, a: Args) -> str:
    return db.breaks.listing(db.symbols.format)


def cmd_show_watches(db: Ddb, a: Args) -> str:
    return "No watchpoints set\n" + db.watch.listing()


def cmd_show_registers(db: Ddb, a: Args) -> str:
    """db_show_regs: `%-12s%#18lr`, then the symbol when the value is near one."""
    tf = db.frame()
    out = []
    for name, fld in SHOW_REGS:
        value = tf[fld]
        line = f"{name:<12s}{value:#18x}"
        hit = db.symbols.lookup(value)
        if hit is not None and hit[1] != value:
            line += f"\t{hit[0]}" + (f"+{hit[1]:#x}" if hit[1] else "")
        out.append(line + "\n")
    out.append(db.loc_and_insn(tf["tf_rip"]))
    return "".join(out)


def cmd_show_idt(db: Ddb, a: Args) -> str:
    """amd64 `show idt`: every present gate, its vector and handler."""
    v = db.vm.vcpus[db.vcpu or 0]
    idtr = v.vmcb.seg("idtr")
    out = []
    for vec in range(min(256, (idtr.limit + 1) // 16)):
        raw = db.read(idtr.base + vec * 16, 16)
        lo = int.from_bytes(raw[:8], "little")
        hi = int.from_bytes(raw[8:], "little")
        if not (lo >> 47) & 1:
            continue
        func = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | ((hi & 0xFFFF_FFFF) << 32)
        out.append(f"{vec:3d}\t{db.symbols.format(func)}\n")
    return "".join(out)


def cmd_show_sysregs(db: Ddb, a: Args) -> str:
    """amd64 `show sysregs` from the vCPU's state save area."""
    v = db.vm.vcpus[db.vcpu or 0]
    vmcb = v.vmcb
    idtr, gdtr = vmcb.seg("idtr"), vmcb.seg("gdtr")
    out = [f"idtr\t0x{idtr.base:016x}/{idtr.limit:04x}\n",
           f"gdtr\t0x{gdtr.base:016x}/{gdtr.limit:04x}\n",
           f"ldtr\t0x{vmcb.seg('ldtr').selector:04x}\n",
           f"tr\t0x{vmcb.seg('tr').selector:04x}\n",
           f"cr0\t0x{vmcb.cr0:016x}\n",
           f"cr2\t0x{vmcb.cr2:016x}\n",
           f"cr3\t0x{vmcb.cr3:016x}\n",
           f"cr4\t0x{vmcb.cr4:016x}\n",
           f"EFER\t0x{vmcb.efer:016x}\n",
           f"dr6\t0x{vmcb.dr6:016x}\n",
           f"dr7\t0x{vmcb.dr7:016x}\n"]
    return "".join(out)


def cmd_show_audit(db: Ddb, a: Args) -> str:
    return db.audit.report()


def cmd_help(db: Ddb, a: Args) -> str:
    names = sorted(COMMANDS)
    out = ["Commands:\n"]
    for i in range(0, len(names), 6):
        out.append("  " + "".join(f"{n:<12s}" for n in names[i:i + 6]).rstrip() + "\n")
    out.append("show:\n  " + "".join(f"{n:<12s}" for n in sorted(SHOW)).rstrip() + "\n")
    return "".join(out)


SHOW = _table(
    Command("breaks", cmd_show_breaks, "list the breakpoints"),
    Command("registers", cmd_show_registers, "the registers of the trapframe"),
    Command("idt", cmd_show_idt, "the interrupt descriptor table"),
    Command("sysregs", cmd_show_sysregs, "descriptor tables, control registers, EFER"),
    Command("watches", cmd_show_watches, "the hardware watchpoints"),
    Command("audit", cmd_show_audit, "the step audit: verdict and evidence"),
)

COMMANDS = _table(
    Command("step", cmd_step, "single-step (s,N: N instructions)"),
    Command("s", cmd_step),
    Command("continue", cmd_continue, "resume the guest"),
    Command("c", cmd_continue),
    Command("until", cmd_until, "step until a return instruction"),
    Command("next", cmd_next, "step over a call"),
    Command("match", cmd_next),
    Command("examine", cmd_examine, "x/fmt addr,count"),
    Command("x", cmd_examine),
    Command("print", cmd_print, "print/fmt expr"),
    Command("p", cmd_print),
    Command("break", cmd_break, "b addr[,count]"),
    Command("b", cmd_break),
    Command("delete", cmd_delete, "d addr"),
    Command("d", cmd_delete),
    Command("hwatch", cmd_hwatch, "hwatch addr,size"),
    Command("dhwatch", cmd_dhwatch, "dhwatch addr,size"),
    Command("trace", cmd_trace, "stack backtrace"),
    Command("bt", cmd_trace),
    Command("where", cmd_trace),
    Command("show", None, "show <what>", SHOW),
    Command("help", cmd_help, "this list"),
    Command("set", None, "set $reg = expr"),
    Command("write", None, "write[/bhlg] addr expr ..."),
)


# ---------------------------------------------------------------------- the loop
def _parse(db: Ddb, line: str) -> tuple[Command, Args]:
    lx = Lexer(line)
    t = lx.next()
    if t.kind != "ident":
        raise DdbError("No such command")
    cmd = search(COMMANDS, t.text)
    if cmd.table:
        t = lx.next()
        if t.kind != "ident":
            raise DdbError("No such command")
        cmd = search(cmd.table, t.text)
    modif = ""
    if lx.accept("/"):
        t = lx.next()
        if t.kind not in ("ident", "num"):
            raise DdbError("Bad modifier")
        modif = t.text
    ctx = ExprContext(db.symbols, db.register, lambda: db.dot)
    have_addr = starts_expression(lx)
    addr = expression(lx, ctx) if have_addr else db.next_addr
    count = -1
    if lx.accept(","):
        if not starts_expression(lx):
            raise DdbError("Count missing")
        count = expression(lx, ctx)
        if count >= 1 << 63:       # db_expr_t is signed: "s,-1" is -1, i.e. no count
            count -= 1 << 64
    if not lx.at_eol():
        raise DdbError("Syntax error")
    return cmd, Args(addr, have_addr, count, modif)


def execute(db: Ddb, line: str) -> DdbResult:
    from .main import DdbResult
    text = line.strip()
    repeat = not text
    if repeat:
        text = db.last_line
        if not text:
            return DdbResult("")
    before = state.save(db)
    try:
        own = _own_syntax(db, text)
        if own is not None:
            db.last_line = text
            return DdbResult(own)
        cmd, args = _parse(db, text)
        if repeat and cmd.fn is cmd_examine:
            # a blank line after x: go on from where it stopped, same format and count
            args.addr, args.have_addr, args.repeat = db.next_addr, True, True
        elif args.have_addr:
            db.dot = args.addr
        assert cmd.fn is not None
        db.last_line = _repeatable(text)
        res = cmd.fn(db, args)
    except DdbError as e:
        state.restore(db, before)     # a refused line changes nothing
        return DdbResult(f"{e}\n", rejected=True)
    if isinstance(res, str):
        return DdbResult(res)
    return res


def _own_syntax(db: Ddb, text: str) -> str | None:
    """set and write parse their own arguments (db_set_cmd, db_write_cmd)."""
    lx = Lexer(text)
    t = lx.peek()
    if t.kind != "ident":
        return None
    try:
        name = "write" if t.text == "w" else search(COMMANDS, t.text).name
    except DdbError:
        return None
    if name not in ("set", "write"):
        return None
    lx.next()
    ctx = ExprContext(db.symbols, db.register, lambda: db.dot)
    return cmd_set(db, lx, ctx) if name == "set" else cmd_write(db, lx, ctx)


def cmd_set(db: Ddb, lx: Lexer, ctx: ExprContext) -> str:
    """set $reg [=] expr: write a register of the trapframe (ddb's db_set_cmd)."""
    t = lx.next()
    if t.kind != "var":
        raise DdbError("Unknown variable")
    name = t.text.lstrip("$").lower()
    lx.accept("=")
    if not starts_expression(lx):
        raise DdbError("Syntax error")
    value = expression(lx, ctx)
    if not lx.at_eol():
        raise DdbError("Syntax error")
    if name not in FRAME_REGS:
        raise DdbError(f"Unknown variable ${name}")
    db.set_frame(**{FRAME_REGS[name]: value})
    return ""


def cmd_write(db: Ddb, lx: Lexer, ctx: ExprContext) -> str:
    """write[/bhlg] addr expr [expr ...]: store values, printing old = new (db_write_cmd)."""
    size = 4
    if lx.accept("/"):
        t = lx.next()
        sizes = {"b": 1, "h": 2, "l": 4, "g": 8}
        if t.kind != "ident" or t.text not in sizes:
            raise DdbError("Bad modifier")
        size = sizes[t.text]
    if not starts_expression(lx):
        raise DdbError("Syntax error")
    addr = expression(lx, ctx)
    values = []
    while starts_expression(lx):
        values.append(expression(lx, ctx) & ((1 << (8 * size)) - 1))
    if not values or not lx.at_eol():
        raise DdbError("Syntax error")
    # Read every old value first: an unreadable address refuses the whole line before
    # anything is written.
    raw = db.read(addr, size * len(values))
    out = []
    for i, v in enumerate(values):
        old = int.from_bytes(raw[i * size:(i + 1) * size], "little")
        out.append(f"{db.symbols.format(addr + i * size)}\t\t{old:#8x}\t=\t{v:#8x}\n")
    db.write(addr, b"".join(v.to_bytes(size, "little") for v in values))
    return "".join(out)


def _repeatable(text: str) -> str:
    """The line a blank line repeats: `x/fmt addr,n` repeats as `x/fmt ,n` at db_next."""
    return text


__all__ = ["COMMANDS", "SHOW", "Command", "Args", "execute", "search", "IDT_STUBS"]
