"""The inputs a session records: the Machine calls that feed or run the machine, with every
argument made explicit (defaults filled in), so a later default change cannot alter a replay.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import TYPE_CHECKING, Any

from .format import SessionError

if TYPE_CHECKING:
    from ..machine import Machine, StopEvent

# op -> the argument that carries bytes (stored as a latin-1 string)
OPS: dict[str, tuple[str, ...]] = {
    "host": (),
    "type_line": (),
    "console_input": ("data",),
    "debugger": (),
    "enter_debugger": (),
    "assert_lapic_lvt": (),
    "inject_nmi": (),
    "run": (),
    "settle": (),
    "boot_to_prompt": ("prompt",),
    "run_until_output": ("text",),
    "step_vcpu": (),
    "leave_kdb": (),
    "force_reset": (),
    "force_poweroff": (),
}


def bind(machine_cls: type, op: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every argument of `op` by name, defaults included, bytes as latin-1 text."""
    if op not in OPS:
        raise SessionError(f"'{op}' is not a recordable input")
    sig = inspect.signature(getattr(machine_cls, op))
    try:
        ba = sig.bind(None, *args, **kwargs)
    except TypeError as e:
        raise SessionError(f"{op}: {e}") from None
    ba.apply_defaults()
    out = dict(ba.arguments)
    out.pop("self", None)
    if op == "run" and out.get("until") is not None:
        raise SessionError("run(until=...) cannot be recorded (a callable is not an input); "
                           "use run_until_output() or settle()")
    out.pop("until", None)
    if op == "enter_debugger":
        ev = out.pop("ev")
        out["ev"] = {"reason": ev.reason, "vcpu": ev.vcpu, "info": ev.info}
    for name in OPS[op]:
        if isinstance(out.get(name), bytes | bytearray):
            out[name] = bytes(out[name]).decode("latin-1")
    return out


def apply(m: Machine, op: str, args: dict[str, Any]) -> Any:
    """Make the recorded call on a machine."""
    from ..machine import StopEvent
    if op not in OPS:
        raise SessionError(f"unknown input '{op}'")
    kw = dict(args)
    for name in OPS[op]:
        if isinstance(kw.get(name), str):
            kw[name] = kw[name].encode("latin-1")
    if op == "enter_debugger":
        e = kw.pop("ev")
        kw["ev"] = StopEvent(e["reason"], e["vcpu"], dict(e["info"]))
    try:
        return getattr(m, op)(**kw)
    except TypeError as e:
        raise SessionError(f"input '{op}' has bad arguments: {e}") from None


def result_digest(result: Any) -> str:
    """A short digest of what an input returned (text, a stop event, a flag)."""
    if isinstance(result, str):
        data = result.encode()
    elif _is_stop(result):
        ev: StopEvent = result
        data = repr((ev.reason, ev.vcpu, sorted((str(k), repr(v)) for k, v in ev.info.items())
                     )).encode()
    else:
        data = repr(result).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _is_stop(x: Any) -> bool:
    return type(x).__name__ == "StopEvent" and hasattr(x, "reason")


def describe(op: str, args: dict[str, Any]) -> str:
    """An input the way a person typed it, for transcripts and divergence reports."""
    if op == "host":
        return f"host$ {args['line']}"
    if op == "type_line":
        return f"guest# {args['line']}"
    if op == "console_input":
        return f"guest< {args['data']!r}"
    if op == "debugger":
        return f"db> {args['line']}"
    if op == "enter_debugger":
        return f"(debugger entered on vCPU {args['ev']['vcpu']})"
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None)
    return f"{op}({shown})"
