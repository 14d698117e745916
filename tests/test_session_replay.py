"""Replay: every recorded session in sessions/ re-executes bit for bit (checkpoint by
checkpoint), and an edited input is reported as the first divergence, naming the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nitdbg.scenarios import list_scenarios
from nitdbg.session import main_replay, replay

SESSIONS = Path(__file__).resolve().parent.parent / "sessions"
FILES = sorted(SESSIONS.glob("*.nitrec"))
DIVERGENCE = re.compile(r"^checkpoint \d+ at icount \d+: \S+ .+ != .+ \(replaying vs recorded\)$")


def test_there_is_a_recorded_session_for_every_scenario():
    stems = {f.name.split(".")[0] for f in FILES}
    assert {s.name for s in list_scenarios()} <= stems


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_recorded_session_replays_with_verify(path):
    res = replay(path, verify=True)
    assert res.ok, res.divergence
    assert res.inputs > 0 and res.checkpoints == res.inputs and not res.notes


def _edit(src: Path, dst: Path, op: str, match: str, new: dict) -> None:
    lines = src.read_text().splitlines()
    for i, ln in enumerate(lines):
        r = json.loads(ln)
        if r.get("t") == "in" and r["op"] == op and match in json.dumps(r["args"]):
            r["args"].update(new)
            lines[i] = json.dumps(r, separators=(",", ":"))
            break
    else:
        raise AssertionError(f"no {op} input matching {match}")
    dst.write_text("\n".join(lines) + "\n")


def test_an_edited_sysctl_is_the_first_divergence(tmp_path):
    p = tmp_path / "edited.nitrec"
    _edit(SESSIONS / "pending-interrupt.nitrec", p, "host", "delay_usecs=800000",
          {"line": "sysctl debug.nit.delay_usecs=400000"})
    res = replay(p, verify=True)
    assert not res.ok
    assert DIVERGENCE.match(res.divergence), res.divergence
    assert "debug.nit.delay_usecs 400000 != 800000" in res.divergence


def test_an_edited_debugger_command_diverges_in_a_register(tmp_path, capsys):
    p = tmp_path / "edited.nitrec"
    _edit(SESSIONS / "single-step-after-nmi.nitrec", p, "debugger", '"s"',
          {"line": "x/i $rip"})
    res = replay(p, verify=True)
    assert DIVERGENCE.match(res.divergence), res.divergence
    assert main_replay([str(p), "--verify"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DIVERGED ") and "(replaying vs recorded)" in out


def test_replay_show_prints_the_transcript_and_verify_says_ok(capsys):
    assert main_replay([str(SESSIONS / "pending-nmi.nitrec"), "--show", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "host$ sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1" in out
    assert "vNMI unblocked precisely" in out
    assert out.splitlines()[-1].startswith("OK ")


def test_a_checkpoint_digest_is_the_sha256_of_json_dumps_sorted_with_repr_for_the_rest():
    # the recorded format: sha256 of json.dumps(obj, sort_keys=True, default=repr); the
    # checkpoint keeps one encoder for every digest, which must give those bytes
    import dataclasses
    import hashlib

    from nitdbg.machine import Machine
    from nitdbg.session import checkpoint
    obj = {"b": [1, (2, 3)], "a": {"z": None, "y": True, "x": 1.5}, "c": b"\x00", "d": "é"}
    want = hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()
    assert checkpoint._sha(obj) == want
    knobs = Machine(vcpus=1).vm.knobs
    knobs.delay_usecs = 7
    assert checkpoint._knobs(knobs) == dataclasses.asdict(knobs)
