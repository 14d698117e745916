"""Faults raised by instruction handlers and caught by the step loop (raise, then deliver)."""

from __future__ import annotations


class Fault(Exception):  # noqa: N818 - the architectural name
    """An exception raised while executing an instruction: vector, optional error code.

    Handlers raise it before committing any architectural state, so the step loop only has to
    rewind RIP to the start of the instruction (faults) before delivering it.
    """

    __slots__ = ("vector", "error_code", "cr2")

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


def gp(code: int = 0) -> Fault:
    return Fault(13, code)


def ss(code: int = 0) -> Fault:
    return Fault(12, code)


def ud() -> Fault:
    return Fault(6)


class Intercepted(Exception):  # noqa: N818
    """The layer above (SVM) took control: the current instruction or event did not happen.

    Raised by a hook; the vCPU stops with RIP at the intercepted instruction (or at the
    instruction about to receive the intercepted event) and returns from run().
    """


class Unsupported(Fault):
    """An instruction nitdbg does not implement: the guest receives #UD and a record is left."""

    def __init__(self, text: str):
        super().__init__(6)
        self.text = text


# What a bug in nitdbg's own code raises (never the guest's doing). The step loop catches
# exactly these, stops the run and keeps an InternalError record for the front ends.
BUG_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
              AssertionError)


class InternalError(Exception):
    """A bug in nitdbg met while executing guest code: the vCPU stops (RIP at the
    instruction) and the front end names the bytes, the RIP and the Python error."""

    def __init__(self, rip: int, code: bytes, insn: str, error: BaseException):
        self.rip = rip
        self.code = bytes(code)
        self.insn = insn
        self.error = f"{type(error).__name__}: {error}"
        super().__init__(self.line())

    def line(self) -> str:
        return (f"nitdbg internal error at rip {self.rip:#x}, bytes "
                f"{self.code.hex(' ') or '?'} ({self.insn or '?'}): {self.error}")

    def info(self) -> dict:
        return {"rip": self.rip, "bytes": self.code.hex(" "), "insn": self.insn,
                "error": self.error, "message": self.line()}
