"""The host shell: a line is validated whole before it acts, files are real in the console,
grep does what people type, and the session records the files written."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nitdbg.hostcmds import DiskFiles, MemoryFiles
from nitdbg.hostcmds.grep import GrepUsage, make_matcher, parse_grep_args
from nitdbg.hostcmds.regex import RegexError, compile_regex
from nitdbg.machine import Machine
from nitdbg.session import replay, start_recording
from nitdbg.session.checkpoint import take


@pytest.fixture(scope="module")
def booted() -> Machine:
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    return m


@pytest.fixture
def m(booted) -> Machine:
    return booted.clone()


# ---------------------------------------------------------------- validate, then act
@pytest.mark.parametrize("line, says", [
    ("bhyvectl --vm=vm2 --inject-nmi --capname=foo",
     'bhyvectl: capability "foo" is not supported (capabilities: pause_exit)\n'),
    ("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=7",
     "bhyvectl: vcpu 7 out of range (the VM has 1 vcpus: 0 to 0, or -1 for all)\n"),
    ("bhyvectl --vm=vm2 --inject-nmi --setcap=1",
     "bhyvectl: --setcap and --getcap need --capname (capabilities: pause_exit)\n"),
    ("sysctl debug.nit.recursive_nmi=1 |", "sh: syntax error near unexpected token `|'\n"),
    ("sysctl debug.nit.recursive_nmi=1 | grep -E '('", "grep: Unmatched ( or \\(\n"),
    ("sudo bhyvectl --vm=vm2 --inject-nmi | cat", "sh: only grep, head, tail, wc may follow a "
                                                  "pipe here, not 'cat'\n"),
    ("sleep nan", "sleep: invalid time interval: nan (seconds of virtual time, 0 to 3600)\n"),
    ("sleep inf", "sleep: invalid time interval: inf (seconds of virtual time, 0 to 3600)\n"),
    ("sleep -1", "sleep: invalid time interval: -1 (seconds of virtual time, 0 to 3600)\n"),
    ("sleep 1e3", "sleep: invalid time interval: 1e3 (seconds of virtual time, 0 to 3600)\n"),
    ("ktrdump -x -o /tmp/x", None),
    ("sysctl debug.nit.recursive_nmi=1 debug.nit.nope=1", "sysctl: unknown oid 'debug.nit.nope'\n"),
])
def test_a_rejected_host_line_says_one_thing_and_changes_nothing(m, line, says):
    before = take(m)
    out = m.host(line)
    if says is not None:
        assert out == says
    assert out.endswith("\n") and "Traceback" not in out
    assert take(m) == before                 # registers, NMI pending, devices, KTR, knobs
    assert m.shell.files == {}


def test_a_wrong_capname_leaves_no_nmi_pending(m):
    m.host("bhyvectl --vm=vm2 --inject-nmi --capname=foo")
    assert not m.vcpus[0].nmi_pending
    m.host("bhyvectl --vm=vm2 --inject-nmi --capname=pause_exit")   # accepted: it acts
    assert m.vcpus[0].nmi_pending


def test_sleep_takes_decimal_seconds_of_virtual_time(m):
    t = m.now()
    assert m.host("sleep 0.25") == ""
    assert m.now() - t >= 250_000_000


def test_a_guest_sysctl_typed_at_the_host_gets_a_hint(m):
    assert m.host("sysctl machdep.kdb_on_nmi=1") == (
        "machdep.kdb_on_nmi is a guest sysctl: type it at guest# "
        "(@guest sysctl machdep.kdb_on_nmi=1)\n")
    assert m.host("sysctl debug.nit.nope=1") == "sysctl: unknown oid 'debug.nit.nope'\n"


def test_help_lists_the_host_commands_and_options(m):
    out = m.host("help")
    for word in ("bhyvectl", "--assert-lapic-lvt=1", "--force-reset", "--capname=pause_exit",
                 "sysctl", "ktrdump", "-cto /tmp/ktrdump.out", "sleep", "cat", "grep", "-A N"):
        assert word in out
    assert m.host("help grep").startswith("grep [-EFGHchilnqsvx]")
    assert m.host("help frob").startswith("help: no host command 'frob'")


# ---------------------------------------------------------------- files
def test_ktrdump_o_writes_a_real_file_relative_to_the_console_directory(m, tmp_path):
    m.shell.fs = DiskFiles(tmp_path)
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    m.settle()
    assert m.host("sudo ktrdump -cto ktrdump.out") == ""
    text = (tmp_path / "ktrdump.out").read_text()
    assert text.startswith("index  cpu timestamp") and "vNMIs unblocked precisely" in text
    assert m.host("cat ktrdump.out") == text
    assert m.host(f"grep -c vNMI {tmp_path}/ktrdump.out") == \
        f"{sum('vNMI' in ln for ln in text.splitlines())}\n"


def test_ktrdump_o_into_a_missing_folder_is_one_line(m, tmp_path):
    m.shell.fs = DiskFiles(tmp_path)
    assert m.host("ktrdump -o nowhere/x.out") == \
        "ktrdump: nowhere/x.out: No such file or directory\n"
    assert m.shell.take_written() == []


def test_scratch_files_land_under_the_scratch_folder(tmp_path):
    fs = DiskFiles(tmp_path / "cwd", scratch=tmp_path / "scratch")
    fs.write("/tmp/ktrdump.out", "x\n")
    fs.write("rel.out", "y\n")
    assert (tmp_path / "scratch" / "tmp" / "ktrdump.out").read_text() == "x\n"
    assert (tmp_path / "scratch" / "rel.out").read_text() == "y\n"
    assert fs.read("/tmp/ktrdump.out") == "x\n"


def test_the_console_writes_the_plans_file_and_an_ordinary_grep_finds_the_line(tmp_path):
    script = ("sysctl debug.nit.delay_usecs=800000\n"
              "sudo sysctl debug.ktr.clear=1\n"
              "sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1\n"
              "sleep 1\n"
              "sudo ktrdump -cto ktrdump.out\n")
    r = subprocess.run([sys.executable, "-m", "nitdbg", "console", "--no-record",
                        "--vcpus", "1"], input=script, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path,
                       env={"PYTHONPATH": str(_repo()), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    dump = tmp_path / "ktrdump.out"
    lines = dump.read_text().splitlines()
    assert any("vNMIs unblocked precisely" in ln for ln in lines)
    if shutil.which("grep"):
        g = subprocess.run(["grep", "-n", "vNMIs unblocked precisely", str(dump)],
                           capture_output=True, text=True)
        assert g.returncode == 0 and re.match(r"\d+:\s+\d+\s+0\s+\d+ vm vm2\[0\]: vNMIs "
                                              r"unblocked precisely", g.stdout)


def _repo() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- sessions
def test_a_session_records_each_file_written_and_replay_verifies_it(tmp_path):
    path = tmp_path / "files.nitrec"
    rec = start_recording(path, vcpus=1, sync=False)
    rec.shell.fs = DiskFiles(tmp_path)
    rec.boot_to_prompt()
    rec.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    rec.settle()
    (tmp_path / "out").mkdir()
    rec.host("ktrdump -cto out/ktr.txt")
    rec.close()
    data = (tmp_path / "out" / "ktr.txt").read_bytes()
    cks = [r for r in map(json.loads, path.read_text().splitlines()) if "files" in r]
    assert [r["files"] for r in cks] == [   # one per host line: bhyvectl wrote nothing
        [], [["out/ktr.txt", hashlib.sha256(data).hexdigest(), len(data)]]]
    # replay (into memory) verifies the digest ...
    res = replay(path, verify=True)
    assert res.ok, res.divergence
    assert res.files == ["out/ktr.txt"]
    # ... and an edited digest is the first divergence, naming the file
    bad = tmp_path / "bad.nitrec"
    bad.write_text(path.read_text().replace(hashlib.sha256(data).hexdigest(), "0" * 64))
    res = replay(bad, verify=True)
    assert not res.ok and "file out/ktr.txt: sha256" in res.divergence


def test_nitdbg_replay_writes_files_into_a_scratch_folder_unless_in_place(tmp_path):
    path = tmp_path / "s.nitrec"
    rec = start_recording(path, vcpus=1, sync=False)
    rec.shell.fs = DiskFiles(tmp_path)
    rec.boot_to_prompt()
    rec.host("ktrdump -o k.out")
    rec.close()
    (tmp_path / "k.out").unlink()
    env = {"PYTHONPATH": str(_repo()), "PATH": "/usr/bin:/bin", "XDG_DATA_HOME":
           str(tmp_path / "data"), "HOME": str(tmp_path)}
    run = [sys.executable, "-m", "nitdbg", "replay", str(path)]
    r = subprocess.run([*run, "--verify", "--files-dir", str(tmp_path / "scr")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK "), r.stdout + r.stderr
    assert " inputs, 2 checkpoints verified, " in r.stdout
    assert (tmp_path / "scr" / "k.out").is_file() and not (tmp_path / "k.out").exists()
    assert f"files the session wrote: {tmp_path / 'scr' / 'k.out'}" in r.stderr
    r = subprocess.run([*run, "--in-place"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0 and (tmp_path / "k.out").is_file()
    assert "2 inputs" in r.stdout and "checkpoints not compared; --verify compares them" \
        in r.stdout and "0 checkpoints" not in r.stdout


# ---------------------------------------------------------------- grep
TEXT = "alpha one\nBeta two\ngamma three\ndelta four\nepsilon five\nzeta six\n"


def _grep(line: str, files: dict[str, str] | None = None, stdin: str = TEXT) -> str:
    from nitdbg.hostcmds.shell import HostShell
    sh = HostShell(None)  # type: ignore[arg-type]  # grep and cat need no machine
    sh.fs = MemoryFiles()
    for k, v in (files or {}).items():
        sh.fs.write(k, v)
    stages = sh.parse(line)
    out = stdin
    for st in stages:
        out = st(out)
    return out


@pytest.mark.parametrize("args, want", [
    ("-c a", "5\n"),
    ("-ci beta", "1\n"),
    ("-v a", "epsilon five\n"),
    ("-n ta", "2:Beta two\n4:delta four\n6:zeta six\n"),
    ("-E 'one|six'", "alpha one\nzeta six\n"),
    ("'one\\|six'", "alpha one\nzeta six\n"),
    ("-F 'a|b'", ""),
    ("-x 'zeta six'", "zeta six\n"),
    ("-i '^BETA'", "Beta two\n"),
    ("-A1 three", "gamma three\ndelta four\n"),
    ("-B 1 -n three", "2-Beta two\n3:gamma three\n"),
    ("-C1 -n -e one -e six", "1:alpha one\n2-Beta two\n--\n5-epsilon five\n6:zeta six\n"),
    ("-2 -n four", "2-Beta two\n3-gamma three\n4:delta four\n5-epsilon five\n6-zeta six\n"),
    ("-E '[[:digit:]]|f(i|o)[uv]'", "delta four\nepsilon five\n"),
    ("-E 'e{2}'", "gamma three\n"),
    ("-E 't(w|h)'", "Beta two\ngamma three\n"),
])
def test_grep_options_people_type(args, want):
    assert _grep(f"grep {args}") == want


def test_grep_reads_several_files_and_names_them():
    files = {"/a": "x1\ny\n", "/b": "x2\n"}
    assert _grep("grep x /a /b", files) == "/a:x1\n/b:x2\n"
    assert _grep("grep -c x /a /b /nope", files) == \
        "/a:1\n/b:1\ngrep: /nope: No such file or directory\n"
    assert _grep("grep -l 2 /a /b", files) == "/b\n"
    assert _grep("grep -h x /a /b", files) == "x1\nx2\n"


@pytest.mark.parametrize("args, says", [
    ("-Q x", "grep: invalid option -- 'Q'"),
    ("-A x y", "grep: x: invalid context length argument (-A)"),
    ("'\\(a\\)\\1'", "grep: back-references are not supported"),
    ("-E 'a{300}'", "grep: Invalid content of \\{\\} (counts up to 255)"),
    ("-E -F x", "grep: conflicting matchers specified"),
    ("", "usage: grep"),
])
def test_a_bad_grep_line_is_refused_before_anything_runs(args, says):
    with pytest.raises(GrepUsage) as e:
        make_matcher(parse_grep_args(shlex.split(args)))
    assert str(e.value).startswith(says)


def test_nested_quantifiers_match_in_linear_time_without_backtracking():
    # A backtracking engine takes exponential time on this; the NFA visits each character
    # once with a bounded set of states.
    rx = compile_regex("(a*)*b", extended=True)
    assert not rx.search("a" * 50_000)
    assert rx.search("a" * 50_000 + "b")
    assert len(rx.nfa) < 10


def test_the_regex_engine_agrees_with_python_re_on_random_posix_patterns():
    rnd = random.Random(15)

    def gen(d: int = 0) -> str:
        r = rnd.random()
        if d > 3 or r < 0.3:
            return rnd.choice(["a", "b", ".", "[ab]", "[^a]"])
        if r < 0.5:
            return gen(d + 1) + gen(d + 1)
        if r < 0.65:
            return f"({gen(d + 1)}|{gen(d + 1)})"
        if r < 0.8:
            return f"({gen(d + 1)}){rnd.choice('*+?')}"
        return f"({gen(d + 1)}){{{rnd.randint(0, 2)},{rnd.randint(2, 3)}}}"
    for _ in range(500):
        p = ("^" if rnd.random() < 0.2 else "") + gen() + ("$" if rnd.random() < 0.2 else "")
        mine, ref = compile_regex(p, extended=True), re.compile(p)
        for _ in range(8):
            t = "".join(rnd.choice("abc") for _ in range(rnd.randint(0, 8)))
            assert mine.search(t) == bool(ref.search(t)), (p, t)


def test_patterns_too_large_are_refused():
    with pytest.raises(RegexError, match="pattern too large"):
        compile_regex("((((a{255}){255}){255}))", extended=True)


@pytest.mark.parametrize("line, want", [
    ("cat /a | head -2", "1\n2\n"),
    ("cat /a | head -n 1", "1\n"),
    ("cat /a | tail -n 2", "3\n4\n"),
    ("cat /a | tail -0", ""),
    ("cat /a | grep -v 2 | wc -l", "       3\n"),
    ("wc -lw /a", "       4       4 /a\n"),
    ("head -1 /a /nope /a", "==> /a <==\n1\nhead: /nope: No such file or directory\n\n"
                            "==> /a <==\n1\n"),
])
def test_head_tail_and_wc_after_a_pipe_and_on_files(line, want):
    assert _grep(line, {"/a": "1\n2\n3\n4\n"}, stdin="") == want


def test_a_bad_head_is_refused_before_the_pipe_runs(m):
    before = take(m)
    assert m.host("sysctl debug.nit.recursive_nmi=1 | head -z") == \
        "head: illegal option -- z\nusage: head [-n lines] [file ...]\n"
    assert take(m) == before


def test_deeply_nested_groups_are_refused_not_a_recursion_error():
    with pytest.raises(RegexError, match="nested deeper than"):
        compile_regex("(" * 500 + "a" + ")" * 500, extended=True)
    assert compile_regex("(" * 64 + "a" + ")" * 64, extended=True).search("xa")


def test_words_and_pipes_split_as_shlex_and_the_quote_aware_scan_do():
    # the shell splits a plain line with str methods; on any line (quotes, escapes, tabs,
    # other whitespace, non-ASCII) the words and stages are shlex's and the quote scan's
    from nitdbg.hostcmds.shell import split_pipes, words

    def scan(line: str) -> list[str]:
        parts, cur, quote = [], "", ""
        for ch in line:
            if quote:
                cur += ch
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote, cur = ch, cur + ch
            elif ch == "|":
                parts, cur = [*parts, cur], ""
            else:
                cur += ch
        return [*parts, cur]

    def shlex_or_error(s: str) -> list[str] | str:
        try:
            return shlex.split(s)
        except ValueError as e:
            return str(e)

    rnd = random.Random(4)
    alphabet = "ab =-./|#;&\t\n\x0b\x0c\"'\\é\x00 "
    for _ in range(4000):
        line = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(12)))
        assert split_pipes(line) == scan(line), repr(line)
        for stage in scan(line):
            try:
                got: list[str] | str = words(stage)
            except ValueError as e:
                got = str(e)
            assert got == shlex_or_error(stage), repr(stage)
