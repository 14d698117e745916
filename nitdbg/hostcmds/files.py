"""Where the host shell's files live.

- MemoryFiles (the default below the front ends): a small table, so scenarios and tests are
  the same on every machine and touch no disk.
- DiskFiles(cwd): the real file system, relative paths against the console's working
  directory (the console installs it: `ktrdump -o /tmp/ktrdump.out` is then a file an ordinary
  shell can grep).
- DiskFiles(cwd, scratch=DIR): what replay uses unless told to write in place: every file the
  session writes goes under DIR (`/tmp/ktrdump.out` -> DIR/tmp/ktrdump.out); reads look there
  first, then at the real path.

Each write is logged (path as typed, SHA-256 and size of the content) for the session record.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

MAX_READ = 64 << 20        # cat/grep refuse files larger than this


class HostFileError(OSError):
    """str() is the tool-independent part of the message ("PATH: No such file ...")."""


@dataclass(frozen=True)
class Written:
    path: str          # as the command named it
    sha256: str
    size: int

    def as_record(self) -> list:
        return [self.path, self.sha256, self.size]


def written(path: str, text: str) -> Written:
    data = text.encode()
    return Written(path, hashlib.sha256(data).hexdigest(), len(data))


class HostFiles:
    """The interface: read a text file, write one (whole), say where a path lands."""

    def read(self, path: str) -> str:
        raise NotImplementedError

    def write(self, path: str, text: str) -> None:
        raise NotImplementedError

    def where(self, path: str) -> str:
        return path


class MemoryFiles(HostFiles):
    def __init__(self) -> None:
        self.table: dict[str, str] = {}

    @staticmethod
    def _key(path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def read(self, path: str) -> str:
        text = self.table.get(self._key(path))
        if text is None:
            raise HostFileError(f"{path}: No such file or directory")
        return text

    def write(self, path: str, text: str) -> None:
        self.table[self._key(path)] = text


class DiskFiles(HostFiles):
    def __init__(self, cwd: str | os.PathLike, scratch: str | os.PathLike | None = None):
        self.cwd = os.fspath(cwd)
        self.scratch = os.fspath(scratch) if scratch is not None else None

    def _real(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, os.path.expanduser(path)))

    def where(self, path: str) -> str:
        if self.scratch is None:
            return self._real(path)
        rel = os.path.normpath(path).lstrip(os.sep) if os.path.isabs(path) else \
            os.path.normpath(path)
        if rel.startswith(".."):
            rel = os.path.relpath(self._real(path), os.sep)
        return os.path.join(self.scratch, rel)

    def read(self, path: str) -> str:
        _check_name(path)
        candidates = [self.where(path)]
        if self.scratch is not None:
            candidates.append(self._real(path))
        err: OSError | None = None
        for p in candidates:
            try:
                size = os.stat(p).st_size
                if os.path.isdir(p):
                    raise HostFileError(f"{path}: Is a directory")
                if size > MAX_READ:
                    raise HostFileError(f"{path}: larger than {MAX_READ >> 20} MiB, not read")
                with open(p, "rb") as f:
                    return f.read(MAX_READ + 1)[:MAX_READ].decode(errors="replace")
            except HostFileError:
                raise
            except OSError as e:
                err = err or e
        raise HostFileError(f"{path}: {_strerror(err)}")

    def write(self, path: str, text: str) -> None:
        _check_name(path)
        p = self.where(path)
        try:
            if self.scratch is not None:
                os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise HostFileError(f"{path}: {_strerror(e)}") from None


def _check_name(path: str) -> None:
    """A NUL cannot be in a file name (the OS refuses it with ValueError, which escaped)."""
    if "\0" in path:
        raise HostFileError(f"{path!r}: not a valid file name")


def _strerror(e: OSError | None) -> str:
    return (e.strerror if e is not None and e.strerror else str(e)) or "error"
