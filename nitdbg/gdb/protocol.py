"""The GDB remote serial protocol's framing and argument schemas (no sockets, no machine).

A packet is `$data#cc` (cc: the sum of the data bytes mod 256, two hex digits), answered by
`+` (or `-` to ask for it again) until QStartNoAckMode; a lone 0x03 byte interrupts a running
target. In binary data `}` escapes the next byte (xor 0x20).

Dispatch follows QEMU's gdbstub (gdbstub.c, GdbCmdParseEntry): each table row names the
packet prefix, the handler and a schema for the arguments, and the schema is checked before
the handler runs, so a handler only ever sees well-formed arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PACKET = 0x4000          # what qSupported advertises as PacketSize (bytes of data)


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    return b"$" + data + b"#" + f"{checksum(data):02x}".encode()


def escape_binary(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in b"$#}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes | None:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                return None
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class Reader:
    """Split the byte stream from gdb into events: ("packet", data), ("interrupt",),
    ("bad", reason) for a packet with a wrong checksum or over MAX_PACKET, ("ack", b)."""

    def __init__(self, limit: int = MAX_PACKET):
        self.limit = limit
        self.buf = bytearray()
        self.state = "idle"          # idle, data, csum
        self.overflow = False
        self.csum = b""

    def feed(self, data: bytes) -> list[tuple]:
        ev: list[tuple] = []
        for b in data:
            if self.state == "idle":
                if b == 0x03:
                    ev.append(("interrupt",))
                elif b == 0x24:                      # $
                    self.state, self.buf, self.overflow = "data", bytearray(), False
                elif b in (0x2B, 0x2D):              # + -
                    ev.append(("ack", b))
                # anything else between packets is noise and is dropped
            elif self.state == "data":
                if b == 0x23:                        # #
                    self.state, self.csum = "csum", b""
                elif b == 0x24:                      # a new $ restarts the packet
                    self.buf, self.overflow = bytearray(), False
                elif len(self.buf) >= self.limit:
                    self.overflow = True
                else:
                    self.buf.append(b)
            else:
                self.csum += bytes((b,))
                if len(self.csum) == 2:
                    self.state = "idle"
                    if self.overflow:
                        ev.append(("bad", "oversized"))
                    elif not re.fullmatch(rb"[0-9a-fA-F]{2}", self.csum) or \
                            int(self.csum, 16) != checksum(bytes(self.buf)):
                        ev.append(("bad", "checksum"))
                    else:
                        ev.append(("packet", bytes(self.buf)))
        return ev


# ---------------------------------------------------------------------- argument schemas
# h  hex number (at most 64 bits)      t  thread id: -1, 0 or a hex number
# x  hex-encoded bytes                 b  binary data (escaped) up to the end
# s  text up to the next separator     o  one character
# ,:;=  literal separators
# A trailing ? makes everything after the prefix optional.
_TOKENS = {
    "h": rb"([0-9a-fA-F]{1,16})",
    "t": rb"(-1|[0-9a-fA-F]{1,16})",
    "x": rb"((?:[0-9a-fA-F]{2})*)",
    "b": rb"(.*)",
    "s": rb"([^,:;=]*)",
    "o": rb"(.)",
}


class SchemaError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    prefix: str
    handler: str
    schema: str = ""

    def pattern(self) -> re.Pattern[bytes]:
        body = self.schema.rstrip("?")
        rx = b"".join(_TOKENS.get(c, re.escape(c.encode())) for c in body)
        if self.schema.endswith("?"):
            rx = b"(?:" + rx + b")?"
        return re.compile(rx, re.DOTALL)

    def parse(self, rest: bytes) -> list:
        m = self.pattern().fullmatch(rest)
        if m is None:
            raise SchemaError(f"{self.prefix}: bad arguments")
        kinds = [c for c in self.schema.rstrip("?") if c in _TOKENS]
        out: list = []
        for kind, val in zip(kinds, m.groups(), strict=True):
            if val is None:
                out.append(None)
            elif kind == "h":
                out.append(int(val, 16))
            elif kind == "t":
                out.append(-1 if val == b"-1" else int(val, 16))
            elif kind == "x":
                out.append(bytes.fromhex(val.decode()))
            elif kind == "b":
                data = unescape_binary(val)
                if data is None:
                    raise SchemaError(f"{self.prefix}: bad binary data")
                out.append(data)
            else:
                out.append(val.decode(errors="replace"))
        return out


class Table:
    """Rows looked up by the longest matching prefix; a row whose schema is empty matches
    only the whole packet."""

    def __init__(self, rows: list[Row]):
        self.rows = sorted(rows, key=lambda r: -len(r.prefix))

    def lookup(self, packet: bytes) -> tuple[Row, bytes] | None:
        for r in self.rows:
            p = r.prefix.encode()
            if packet.startswith(p) and (r.schema or packet == p):
                return r, packet[len(p):]
        return None
