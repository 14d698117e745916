"""The README's console examples: each is marked `<!-- console: ARGS -->`, followed by a
```sh block of the lines to type and a ```text block of what `nitdbg console --no-record ARGS`
prints for them. `python3 tests/readme_transcripts.py` rewrites the text blocks from real
runs (after a change to the firmware or the console, say); test_readme_transcripts.py
checks that they are still what the console prints.

Files the examples write under /tmp go into a private folder while they run, so parallel
runs do not share /tmp/ktrdump.out; paths are put back before comparing."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
_BLOCK = re.compile(r"<!-- console:(?P<args>[^>]*)-->\n```sh\n(?P<lines>.*?)```\n"
                    r"(?P<between>.*?)```text\n(?P<out>.*?)```\n", re.S)


@dataclass
class Example:
    args: list[str]
    lines: str
    out: str
    span: tuple[int, int]        # of the text block's contents in the README


def examples(text: str) -> list[Example]:
    found = []
    for m in _BLOCK.finditer(text):
        found.append(Example(m["args"].split(), m["lines"], m["out"], m.span("out")))
    return found


def run_console(ex: Example) -> str:
    with tempfile.TemporaryDirectory(prefix="nitdbg-readme-") as d:
        script = ex.lines.replace("/tmp/", f"{d}/")
        r = subprocess.run([sys.executable, "-m", "nitdbg", "console", "--no-record",
                            *ex.args], input=script, capture_output=True, text=True,
                           timeout=600, cwd=d, env={"PYTHONPATH": str(REPO),
                                                    "PATH": "/usr/bin:/bin"})
        if r.returncode != 0:
            raise RuntimeError(f"nitdbg console {' '.join(ex.args)}: {r.stderr.strip()}")
        return r.stdout.replace(f"{d}/", "/tmp/")


def typed_lines(transcript: str) -> list[str]:
    """The lines after the console's prompts."""
    out = []
    for ln in transcript.splitlines():
        for p in ("host$ ", "guest# ", "db> "):
            if ln.startswith(p):
                out.append(ln[len(p):])
                break
    return out


def update(path: Path = README) -> int:
    text = path.read_text()
    for ex in reversed(examples(text)):
        a, b = ex.span
        text = text[:a] + run_console(ex) + text[b:]
    path.write_text(text)
    return len(examples(text))


if __name__ == "__main__":
    print(f"{update()} console examples rewritten in {README}")
