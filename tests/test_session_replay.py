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
    assert knobs.as_dict() == dataclasses.asdict(knobs)


def test_first_difference_comparing_groups_whole_names_what_the_field_walk_names():
    # first_difference compares each group (vcpus, regs, knobs, digests) whole before it
    # walks the fields; on a recorded checkpoint with a field changed, retyped (1 for true,
    # a float for an int), removed or added, it names what the plain walk names
    import random

    from nitdbg.session import checkpoint
    rnd = random.Random(12)
    recs = [json.loads(line) for p in sorted(SESSIONS.glob("*.nitrec"))[:8]
            for line in p.read_text().splitlines()]
    cks = [r for r in recs if r.get("t") == "ck"]

    def plain(a: dict, b: dict) -> str | None:
        saved = checkpoint._same_scalars
        checkpoint._same_scalars = lambda _a, _b: False
        try:
            return checkpoint.first_difference(a, b)
        finally:
            checkpoint._same_scalars = saved

    values = [0, 1, True, False, 1.0, -0.0, None, "", "idle", "0" * 64, [1], {"a": 1}]
    seen_none = seen_diff = 0
    for _ in range(1500):
        a = json.loads(json.dumps(rnd.choice(cks)))
        b = json.loads(json.dumps(a))
        for _ in range(rnd.choice((0, 0, 1, 2))):
            group = rnd.choice(("vcpus", "regs", "knobs", "digests"))
            d = b[group][0] if group in ("vcpus", "regs") else b[group]
            k = rnd.choice(list(d)) if d else "x"
            r = rnd.random()
            if r < 0.2:
                d.pop(k, None)
            elif r < 0.3:
                d["zz" + k] = rnd.choice(values)
            elif r < 0.4:
                d[k] = d.pop(k, 0)          # the same field, moved to the end
            else:
                d[k] = rnd.choice(values)
        got = checkpoint.first_difference(a, b)
        assert got == plain(a, b)
        seen_none += got is None
        seen_diff += got is not None
    assert seen_none > 300 and seen_diff > 300
    # equal as Python values, not as JSON: fields in another order with their types
    # swapped, a list holding 1 against one holding true
    a = json.loads(json.dumps(cks[0]))
    b = json.loads(json.dumps(a))
    a["knobs"], b["knobs"] = {"x": 1, "y": True}, {"y": 1, "x": True}
    assert checkpoint.first_difference(a, b) == plain(a, b) == "debug.nit.x 1 != True"
    b["knobs"] = a["knobs"]
    a["vcpus"][0]["halted"], b["vcpus"][0]["halted"] = [1], [True]
    assert checkpoint.first_difference(a, b) == plain(a, b) is not None
