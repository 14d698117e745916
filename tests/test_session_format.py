"""The .nitrec format: a recording is whole JSON lines; a reader refuses foreign, truncated or
unknown-version files with one line and ignores (and reports) a torn last line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitdbg.machine import Machine
from nitdbg.session import (
    SessionError,
    default_session_path,
    main_replay,
    read_session,
    replay,
    start_recording,
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("rec") / "s.nitrec"
    m = start_recording(p, vcpus=1)
    m.boot_to_prompt()
    m.host("bhyvectl --vm=vm2 --cpu=0 --capname=pause_exit --setcap=0")
    m.type_line("sysctl machdep.kdb_on_nmi=0")
    m.host("sysctl debug.nit.delay_usecs=800000")
    m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    m.host("sleep 1")
    m.close()
    return p


def test_header_inputs_checkpoints_and_end_record_written_last(recorded):
    recs = [json.loads(x) for x in recorded.read_text().splitlines()]
    h = recs[0]
    assert (h["t"], h["format"], h["version"]) == ("header", "nitrec", 1)
    assert len(h["firmware"]["sha256"]) == 64 and h["config"]["vcpus"] == 1
    assert h["policy"] == "iret-tracing" and h["knobs"]["delay_usecs"] == 0
    assert recs[-1]["t"] == "end" and recs[-1]["inputs"] == 6
    ins = [r for r in recs if r["t"] == "in"]
    assert [r["op"] for r in ins][:2] == ["boot_to_prompt", "host"]
    assert all("icount" in r and "now" in r for r in ins)
    cks = [r for r in recs if r["t"] == "ck"]
    assert len(cks) == len(ins) and "rflags" in cks[-1]["regs"][0]
    assert set(cks[-1]["digests"]) >= {"arch", "vmcb", "devices", "ktr", "memory"}


def test_every_prefix_of_a_recording_is_refused_in_one_line_or_read_with_a_note(recorded,
                                                                                 tmp_path):
    data = recorded.read_bytes()
    header_end = data.index(b"\n") + 1
    for cut in range(1, len(data), max(1, len(data) // 60)):
        p = tmp_path / "cut.nitrec"
        p.write_bytes(data[:cut])
        if cut < header_end:
            with pytest.raises(SessionError, match="truncated header"):
                read_session(p)
            continue
        s = read_session(p)
        assert s.end is None
        assert (s.torn is not None) == (not data[:cut].endswith(b"\n"))


def test_a_torn_last_line_is_ignored_and_reported_and_the_prefix_replays(recorded, tmp_path):
    data = recorded.read_bytes()
    lines = data.splitlines(keepends=True)
    p = tmp_path / "torn.nitrec"
    p.write_bytes(b"".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    res = replay(p)
    assert res.ok, res.divergence
    assert any("torn last record" in n for n in res.notes)
    assert any("no end record" in n for n in res.notes)


@pytest.mark.parametrize("content,msg", [
    (b"", "empty file"),
    (b"hello world\n", "not a nitrec session"),
    (b'{"some": "json"}\n', "not a nitrec session"),
    (b'{"t":"header","format":"nitrec","version":2,"config":{},"firmware":{}}\n',
     "version 2 is not supported"),
    (b'{"t":"header","format":"nitrec","vers', "truncated header"),
    (b'{"t":"header","format":"nitrec","version":1}\n', "truncated header"),
])
def test_bad_files_are_refused_with_one_line(tmp_path, capsys, content, msg):
    p = tmp_path / "bad.nitrec"
    p.write_bytes(content)
    with pytest.raises(SessionError, match=msg) as e:
        read_session(p)
    assert "\n" not in str(e.value)
    assert main_replay([str(p), "--verify"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err
    assert p.read_bytes() == content          # refusing changes nothing


def test_garbage_in_the_middle_is_refused(recorded, tmp_path):
    lines = recorded.read_bytes().splitlines(keepends=True)
    p = tmp_path / "mid.nitrec"
    p.write_bytes(b"".join(lines[:3]) + b"garbage\n" + b"".join(lines[3:]))
    with pytest.raises(SessionError, match="line 4 is not a nitrec record"):
        read_session(p)


def test_recording_refuses_what_it_cannot_replay(tmp_path):
    m = start_recording(tmp_path / "a.nitrec", vcpus=1)
    with pytest.raises(SessionError, match="cannot be recorded"):
        m.run(until=lambda: True)
    m.close()
    ran = Machine(vcpus=1)
    ran.run(max_insns=100)
    with pytest.raises(SessionError, match="already run"):
        start_recording(tmp_path / "b.nitrec", machine=ran)


def test_default_path_is_numbered_in_the_user_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    m = start_recording(vcpus=1, sync=False)
    m.close()
    assert m.path.parent == tmp_path / "nitdbg" / "sessions"
    assert m.path.name == "session-0001.nitrec"
    assert default_session_path().name == "session-0002.nitrec"
