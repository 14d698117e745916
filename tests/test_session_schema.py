"""Session files are not trusted: every record is checked against the schema before anything
runs, and a bad file gets one line naming the record number and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitdbg.session import checkpoint
from nitdbg.session.cli import main_replay
from nitdbg.session.format import SESSION_MAX, SessionError, read_session
from nitdbg.session.replay import replay

SESSIONS = Path(__file__).resolve().parent.parent / "sessions"
SAMPLE = SESSIONS / "guest-breakpoint.nitrec"


def _records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def _write(tmp_path: Path, recs: list, name: str = "bad.nitrec") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _refusal(path: Path) -> str:
    with pytest.raises(SessionError) as e:
        read_session(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_recorded_sessions_pass_the_schema():
    for f in sorted(SESSIONS.glob("*.nitrec")):
        read_session(f)


# (record index, path of keys, bad value, the field the line must name)
BAD_FIELDS = [
    (0, ("config", "quantum"), -1, "config.quantum"),
    (0, ("config", "quantum"), 0, "config.quantum"),
    (0, ("config", "vcpus"), "2", "config.vcpus"),
    (0, ("config", "vcpus"), 99, "config.vcpus"),
    (0, ("config", "ram_size"), 1e9, "config.ram_size"),
    (0, ("config", "tunables"), [], "config.tunables"),
    (0, ("firmware", "sha256"), 5, "firmware.sha256"),
    (0, ("config", "name"), None, "config.name"),
    (1, ("args", "max_insns"), 10**15, "args.max_insns"),   # a prompt that never comes
    (1, ("args", "max_insns"), -5, "args.max_insns"),
    (1, ("args", "prompt"), 7, "args.prompt"),
    (1, ("op",), "format_disk", "op"),
    (1, ("n",), True, "n"),
    (1, ("args",), "boot", "args"),
    (2, ("regs",), {}, "regs"),
    (2, ("regs", 0, "rip"), "0x10", "regs[0].rip"),
    (2, ("regs", 0, "rflags"), 2**64, "regs[0].rflags"),
    (2, ("vcpus", 0, "halted"), 1, "vcpus[0].halted"),        # 1 is not true
    (2, ("vcpus", 0, "nmi_pending"), 0, "vcpus[0].nmi_pending"),
    (2, ("digests",), None, "digests"),
    (2, ("digests", "memory"), 12, "digests.memory"),
    (2, ("knobs", "delay_usecs"), False, "knobs.delay_usecs"),
    (2, ("out",), "zz", "out"),
    (2, ("surface",), "tui", "surface"),
    (-1, ("icount",), -1, "icount"),
]


@pytest.mark.parametrize("index,keys,value,field", BAD_FIELDS,
                         ids=[f"{f}={v!r}"[:40] for _, _, v, f in BAD_FIELDS])
def test_a_bad_field_is_refused_naming_the_record_and_the_field(tmp_path, index, keys, value,
                                                                field):
    recs = _records()
    target = recs[index]
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    msg = _refusal(_write(tmp_path, recs))
    number = index + 1 if index >= 0 else len(recs)
    assert f"record {number} " in msg and f"{field}:" in msg, msg


def test_a_missing_required_key_and_an_unknown_one_are_named(tmp_path):
    recs = _records()
    del recs[2]["regs"]
    assert "record 3 (ck): regs: missing" in _refusal(_write(tmp_path, recs))
    recs = _records()
    recs[1]["args"]["max_insn"] = 5
    assert "record 2 (in): args.max_insn: unknown field" in _refusal(_write(tmp_path, recs))


def test_a_field_name_with_a_newline_is_named_escaped_on_one_line(tmp_path):
    # the fuzzer's case: a map key of the file's own text, with a newline, and a bad value
    recs = _records()
    recs[2]["knobs"]["debug.nit.x\n\u00e4"] = {}
    msg = _refusal(_write(tmp_path, recs))
    assert "record 3 (ck): knobs.debug.nit.x\\n\\xe4: {} is an object" in msg, msg


def test_a_vcpu_beyond_the_header_s_vcpus_is_refused(tmp_path):
    recs = _records()
    recs.insert(3, {"t": "in", "n": 1, "op": "inject_nmi", "args": {"vcpu": 5},
                    "icount": 0, "now": 0})
    msg = _refusal(_write(tmp_path, recs))
    assert "record 4 (in): args.vcpu: 5 is out of range 0..1" in msg


def test_checkpoints_tell_true_from_1():
    """JSON `true` and `1` differ; Python's True == 1 must not hide a divergence."""
    ck = json.loads(SAMPLE.read_text().splitlines()[2])
    other = json.loads(json.dumps(ck))
    other["vcpus"][0]["halted"] = int(ck["vcpus"][0]["halted"])
    assert checkpoint.first_difference(ck, other) is not None
    assert checkpoint.first_difference(ck, json.loads(json.dumps(ck))) is None


def test_deep_nesting_is_one_line(tmp_path):
    p = tmp_path / "deep.nitrec"
    head = SAMPLE.read_text().splitlines()[0]
    p.write_text(head + "\n" + '{"t":"in","args":' + "[" * 200_000 + "]" * 200_000 + "}\n"
                 + head + "\n")
    msg = _refusal(p)
    assert "record 2" in msg


def test_dev_zero_and_directories_are_not_session_files(tmp_path):
    assert _refusal(Path("/dev/zero")).endswith("not a regular file")
    assert _refusal(tmp_path).endswith("not a regular file")


def test_a_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "huge.nitrec"
    with p.open("wb") as f:
        f.truncate(SESSION_MAX + 1)            # sparse: costs no disk
    assert "larger than a session may be" in _refusal(p)


def test_replay_cli_says_one_line_for_a_bad_file(tmp_path, capsys):
    recs = _records()
    recs[0]["config"]["quantum"] = -100
    assert main_replay([str(_write(tmp_path, recs)), "--verify"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.quantum: -100 is out of range" in err


def test_a_prompt_that_never_comes_ends_within_the_input_s_budget(tmp_path):
    recs = _records()[:1]
    recs.append({"t": "in", "n": 0, "op": "boot_to_prompt",
                 "args": {"prompt": "never-printed", "max_insns": 200_000},
                 "icount": 0, "now": 0})
    res = replay(_write(tmp_path, recs), verify=False)
    assert res.inputs == 1 and res.retired <= 200_000 + 20_000


JSONV = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=3),
                     max_leaves=8)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_value_in_any_field_is_read_or_refused_in_one_line(tmp_path, data):
    recs = _records()[:6]
    i = data.draw(st.integers(0, len(recs) - 1))
    target = recs[i]
    while isinstance(target, dict | list) and target and data.draw(st.booleans()):
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        k = data.draw(st.sampled_from(keys))
        if not isinstance(target[k], dict | list):
            break
        target = target[k]
    if isinstance(target, dict) and target:
        target[data.draw(st.sampled_from(list(target)))] = data.draw(JSONV)
    p = tmp_path / "f.nitrec"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    try:
        read_session(p)
    except SessionError as e:
        assert "\n" not in str(e)


def test_console_bytes_above_latin1_are_refused(tmp_path):
    recs = _records()
    recs.insert(3, {"t": "in", "n": 1, "op": "console_input", "args": {"data": "\u20ac"},
                    "icount": 0, "now": 0})
    assert "record 4 (in): args.data: a character above U+00FF" in _refusal(
        _write(tmp_path, recs))


def test_checkpoint_file_records_and_interrupts_are_checked_too(tmp_path):
    recs = _records()
    recs[2]["files"] = [["/tmp/ktrdump.out", "a" * 64, 120]]
    recs[2]["interrupted_at"] = 7
    read_session(_write(tmp_path, recs))
    recs[2]["files"] = [["/tmp/ktrdump.out", "zz", 120]]
    assert "record 3 (ck): files[0][1]:" in _refusal(_write(tmp_path, recs))
    recs[2]["files"] = []
    recs[2]["interrupted_at"] = "soon"
    assert "record 3 (ck): interrupted_at:" in _refusal(_write(tmp_path, recs))


def _plain_check(sch, v):  # noqa: ANN001, ANN202 - a schema node and a JSON value
    """The schema read the plain way: every field through its own check, Str's character
    tests one character at a time (what Obj's inline integer test and Str's string methods
    must agree with)."""
    from nitdbg.session import schema as S
    if isinstance(sch, S.Obj):
        if type(v) is not dict:
            return sch.check(v)
        for k, s in sch.fields.items():
            if k not in v:
                if k in sch.optional:
                    continue
                return S.Problem(k, "missing")
            p = S._at(k, _plain_check(s, v[k]))
            if p is not None:
                return p
        extra = [k for k in v if k not in sch.fields]
        return S.Problem(extra[0], "unknown field") if extra else None
    if isinstance(sch, S.List) and type(v) is list and len(v) <= sch.max_len:
        for i, x in enumerate(v):
            p = _plain_check(sch.item, x)
            if p is not None:
                return S._at(f"[{i}]", p)
        return None
    if isinstance(sch, S.Tuple) and type(v) is list and len(v) == len(sch.items):
        for i, (x, s) in enumerate(zip(v, sch.items, strict=True)):
            p = _plain_check(s, x)
            if p is not None:
                return S._at(f"[{i}]", p)
        return None
    if isinstance(sch, S.Map) and type(v) is dict and len(v) <= sch.max_items:
        for k, x in v.items():
            if len(k) > sch.key_len:
                return sch.check(v)
            p = S._at(k, _plain_check(sch.value, x))
            if p is not None:
                return p
        return None
    if isinstance(sch, S.Opt):
        return None if v is None else _plain_check(sch.inner, v)
    if isinstance(sch, S.Str) and type(v) is str and len(v) <= sch.max_len:
        if sch.latin1 and any(ord(c) > 0xFF for c in v):
            return S.Problem("", "a character above U+00FF in a string of bytes")
        if sch.choices and v not in sch.choices:
            return sch.check(v)
        if sch.hex_len and (len(v) != sch.hex_len
                            or any(c not in "0123456789abcdef" for c in v)):
            return S.Problem("", f"{S._show(v)} is not a {sch.hex_len}-digit hex digest")
        return None
    return sch.check(v)


def test_the_schema_s_fast_paths_find_the_plain_reading_s_problem_in_mutated_records():
    # Obj tests integer fields inline and Str tests characters with string methods; on
    # records with a field removed, added, retyped, out of range or with odd characters,
    # the problem found (field and words) is the plain reading's.
    import random

    from nitdbg.session import schema as S
    rnd = random.Random(7)
    recs = [json.loads(line) for p in sorted(SESSIONS.glob("*.nitrec"))
            for line in p.read_text().splitlines()[1:]]
    values = [True, False, 0, 1, -1, 1 << 64, 2.5, None, "", "ab", "0f" * 8, "0F" * 8,
              "\xff", "\u0100x", [], [1], {}, {"k": 1}]

    def mutate(x):  # noqa: ANN001, ANN202
        if isinstance(x, dict) and x and rnd.random() < 0.7:
            k = rnd.choice(list(x))
            r = rnd.random()
            if r < 0.2:
                x.pop(k)
            elif r < 0.3:
                x["zz" + k] = 1
            elif r < 0.6:
                x[k] = rnd.choice(values)
            else:
                mutate(x[k])
        elif isinstance(x, list) and x:
            i = rnd.randrange(len(x))
            if rnd.random() < 0.5:
                x[i] = rnd.choice(values)
            else:
                mutate(x[i])

    checked = 0
    for _ in range(3000):
        rec = json.loads(json.dumps(rnd.choice(recs)))
        for _ in range(rnd.choice((1, 1, 2, 3))):
            mutate(rec)
        t, op = rec.get("t"), rec.get("op")
        sch = S.RECORD_SCHEMAS.get(t) if type(t) is str else None
        if sch is None:
            continue
        if t == "in" and type(op) is str and op in S.ARGS:
            args = rec.get("args")
            assert S.ARGS[op].check(args) == _plain_check(S.ARGS[op], args)
        assert sch.check(rec) == _plain_check(sch, rec)
        checked += 1
    assert checked > 2000
    for text in ("", "abc", "\xff", "\xff\u0100", "\u0100", "x\U0001f600", "\x00\x7f\x80"):
        sch = S.Str(latin1=True)
        assert sch.check(text) == _plain_check(sch, text), text
    for text in ("0f" * 32, "0F" * 32, "g" + "0" * 63, "0" * 63 + " ", "0" * 64, "0" * 65):
        sch = S.Str(hex_len=64)
        assert sch.check(text) == _plain_check(sch, text), text
