"""KTR ring and ktrdump(8) output (usr.bin/ktrdump/ktrdump.c formats), and the virtual clock
that stamps its entries."""

import sys

import pytest

from nitdbg.vmm.ktr import (
    KTRDUMP_USAGE,
    Ktr,
    KtrdumpUsage,
    KtrError,
    c_format,
    parse_ktrdump_args,
    register_ktr_sysctls,
    run_ktrdump,
)
from nitdbg.vmm.sysctl import SysctlTree

HEADER_CT = ("index  cpu timestamp        trace\n"
             "------ --- ---------------- ----- \n")


def sample_ring():
    k = Ktr()
    k.vcpu_log("vm2", 0, 1500, "Injecting vNMI")
    k.vcpu_log("vm2", 0, 1510, "vNMI blocking enabled")
    k.vcpu_log("vm2", 0, 2000, "%s %s vmexit at %#lx/%d", "handled", "iret",
               0xFFFFFFFF80201234, 0)
    return k


def test_ktrdump_ct_exact_columns_newest_first():
    # header: "%-6s " "%-3s " "%-16s " "trace"; lines "%6d " "%3d " "%16ju " message
    assert sample_ring().ktrdump(cpu_col=True, time_col=True, quiet=False) == (
        HEADER_CT
        + "     2   0             2000 vm vm2[0]: handled iret vmexit at 0xffffffff80201234/0\n"
        + "     1   0             1510 vm vm2[0]: vNMI blocking enabled\n"
        + "     0   0             1500 vm vm2[0]: Injecting vNMI\n")


def test_ktrdump_without_columns_and_quiet():
    k = sample_ring()
    assert k.ktrdump().splitlines()[:2] == ["index  trace", "------ ----- "]
    assert k.ktrdump(quiet=True).splitlines()[0] == "     2 vm vm2[0]: handled iret vmexit " \
                                                    "at 0xffffffff80201234/0"


def test_ktrdump_live_mode_runs_oldest_to_newest():
    lines = sample_ring().ktrdump(quiet=True, newest_first=False).splitlines()
    assert [ln[:6] for ln in lines] == ["     0", "     1", "     2"]


def test_ktrdump_relative_timestamps_count_back_from_the_newest():
    out = sample_ring().ktrdump(time_col=True, quiet=True, relative=True).splitlines()
    assert [ln.split()[1] for ln in out] == ["0", "490", "10"]


def test_ktrdump_file_column_names_the_logging_source_line():
    k = Ktr()
    where = f"test_vmm_ktr.py:{sys._getframe().f_lineno + 1}"
    k.log(0, 5, "here")
    assert k.ktrdump(file_col=True, quiet=True) == f"     0 {where:<40} here\n"
    assert k.ktrdump(file_col=True).splitlines()[0] == "index  " + "file and line".ljust(41) \
        + "trace"


def test_ktrdump_thread_column_prints_p():
    k = Ktr()
    k.log(0, 5, "x")
    assert k.ktrdump(thread_col=True, quiet=True) == "     0 0x0 x\n"


def test_ring_wraps_and_keeps_the_newest_entries_with_slot_indices():
    k = Ktr(entries=4)
    for i in range(6):
        k.log(i % 2, 100 * i, f"event {i}")
    assert len(k) == 4 and k.total_logged == 6
    out = k.ktrdump(cpu_col=True, time_col=True, quiet=True).splitlines()
    assert out == [
        "     1   1              500 event 5",
        "     0   0              400 event 4",
        "     3   1              300 event 3",
        "     2   0              200 event 2",
    ]
    assert k.messages() == ["event 2", "event 3", "event 4", "event 5"]


def test_clear_empties_the_ring_and_restarts_at_slot_0():
    k = sample_ring()
    k.clear()
    assert k.ktrdump(quiet=True) == ""
    assert k.ktrdump() == "index  trace\n------ ----- \n"
    k.log(0, 7, "after")
    assert k.ktrdump(quiet=True) == "     0 after\n"


def test_debug_ktr_clear_sysctl_reads_zero_and_clears():
    k = sample_ring()
    tree = SysctlTree()
    register_ktr_sysctls(tree, k)
    assert tree.set("debug.ktr.clear", "1") == "debug.ktr.clear: 0 -> 0"
    assert len(k) == 0
    assert tree.get("debug.ktr.entries") == f"debug.ktr.entries: {k.entries}"


def test_vcpu_log_prefix():
    k = Ktr()
    k.vcpu_log("vm2", 1, 0, "Delaying %d usecs", 800000)
    assert k.messages() == ["vm vm2[1]: Delaying 800000 usecs"]
    assert next(k.iter_entries()).cpu == 1


def test_vcpu_log_allows_four_parameters_like_vcpu_ctr4():
    k = Ktr()
    k.vcpu_log("vm2", 0, 0, "%d %d %d %d", 1, 2, 3, 4)
    with pytest.raises(KtrError):
        k.vcpu_log("vm2", 0, 0, "%d %d %d %d %d", 1, 2, 3, 4, 5)
    assert len(k) == 1


def test_mismatched_parameters_are_refused_and_leave_the_ring_unchanged():
    k = Ktr()
    with pytest.raises(KtrError):
        k.logf(0, 0, "Injecting %s at vector %d", "nmi")
    with pytest.raises(KtrError):
        k.logf(0, -1, "bad time")
    assert len(k) == 0


@pytest.mark.parametrize(("fmt", "args", "out"), [
    ("%#lx", (0,), "0"),                               # C: no 0x prefix for zero
    ("%#x", (13,), "0xd"),
    ("%#lx", (0xFFFFFFFF80200000,), "0xffffffff80200000"),
    ("%lx", (-1,), "ffffffffffffffff"),
    ("%x", (-1,), "ffffffff"),
    ("%d", (0xFFFFFFFF,), "-1"),                        # int is 32 bits
    ("%ld", (-5,), "-5"),
    ("%lu", (-1,), "18446744073709551615"),
    ("%jd/%zu", (3, 4), "3/4"),
    ("%5d|%-5d|%05d", (42, 42, -42), "   42|42   |-0042"),
    ("%s=%s", ("a", "b"), "a=b"),
    ("%.3s", ("abcdef",), "abc"),
    ("%#o", (8,), "010"),
    ("%c%%", (65,), "A%"),
    ("%p", (0x1000,), "0x1000"),
    ("Reflecting exception %d/%#x into the guest", (13, 0),
     "Reflecting exception 13/0 into the guest"),
    ("nested page fault on gpa %#lx/%#lx at rip %#lx", (0x1000, 0x100000004, 0xffffffff80201000),
     "nested page fault on gpa 0x1000/0x100000004 at rip 0xffffffff80201000"),
])
def test_c_format_matches_printf(fmt, args, out):
    assert c_format(fmt, args) == out


@pytest.mark.parametrize(("argv", "expect"), [
    (["-cto", "/tmp/x"], dict(cpu=True, timestamp=True, outfile="/tmp/x")),
    (["-c", "-t", "-q", "-o", "FILE"], dict(cpu=True, timestamp=True, quiet=True,
                                             outfile="FILE")),
    (["-ofile"], dict(outfile="file")),
    (["-lrH"], dict(live=True, relative=True, thread=True)),
    (["-f", "-i", "in.ktr"], dict(file_and_line=True, infile="in.ktr")),
    ([], {}),
])
def test_ktrdump_argv_like_bsd_getopt(argv, expect):
    opts = parse_ktrdump_args(argv)
    for k, v in expect.items():
        assert getattr(opts, k) == v
    others = {"cpu", "timestamp", "quiet", "live", "relative", "thread", "file_and_line"} \
        - set(expect)
    assert not any(getattr(opts, k) for k in others)


def test_ktrdump_illegal_option_message():
    with pytest.raises(KtrdumpUsage) as ei:
        parse_ktrdump_args(["-ctx"])
    assert str(ei.value) == "ktrdump: illegal option -- x\n" + KTRDUMP_USAGE


def test_ktrdump_missing_option_argument():
    with pytest.raises(KtrdumpUsage, match="option requires an argument -- o"):
        parse_ktrdump_args(["-ct", "-o"])


def test_ktrdump_extra_operand_prints_usage_only():
    with pytest.raises(KtrdumpUsage) as ei:
        parse_ktrdump_args(["-c", "stray"])
    assert str(ei.value) == KTRDUMP_USAGE


def test_dump_with_parsed_options():
    k = sample_ring()
    assert k.dump(parse_ktrdump_args(["-cto", "/tmp/x"])) == k.ktrdump(True, True, False)


def test_run_ktrdump_hands_the_text_to_the_caller_for_o():
    k = sample_ring()
    r = run_ktrdump(k, ["-cto", "/tmp/ktrdump.out"])
    assert (r.stdout, r.status, r.outfile) == ("", 0, "/tmp/ktrdump.out")
    assert r.text == k.ktrdump(True, True, False)
    r = run_ktrdump(k, ["-q"])
    assert r.stdout == r.text == k.ktrdump(quiet=True)
    r = run_ktrdump(k, ["-k"])
    assert r.status == 1 and r.stderr.startswith("ktrdump: illegal option -- k\n")


def test_snapshot_excludes_source_positions_and_tracks_contents():
    k = sample_ring()
    d = k.digest()
    assert k.snapshot()["entries"][0] == (0, 0, 0, 1500, "vm vm2[0]: Injecting vNMI")
    k.log(0, 1, "more")
    assert k.digest() != d


def _digest_of_every_record(k: Ktr) -> str:
    """The digest's definition: the ring position, then every filled slot's record (format
    and parameters) in slot order, hashed from scratch."""
    import hashlib
    h = hashlib.sha256(f"{k._idx}:{k._seq}".encode())
    h.update("".join(repr(rec[:5]) for rec in k._buf if rec is not None).encode())
    return h.hexdigest()


def test_digest_kept_between_checkpoints_equals_the_digest_of_every_record():
    # The ring keeps each record's part of the digest until the slot is written again; a
    # digest after any mix of writes, wraps (several between two digests), clears and a
    # take-over must be the hash of the whole ring computed from scratch.
    import random
    rnd = random.Random(11)
    k = Ktr(entries=8)
    for step in range(600):
        op = rnd.random()
        if op < 0.7:
            for _ in range(rnd.choice((1, 2, 3, 9, 17))):
                k.vcpu_log("vm2", rnd.randrange(2), step, "handled %s vmexit at %#lx/%d",
                           "inout", rnd.randrange(1 << 64), rnd.randrange(4))
        elif op < 0.75:
            k.clear()
        elif op < 0.78:
            other = Ktr(entries=8)
            for i in range(rnd.randrange(20)):
                other.log(0, i, f"other {i}")
            k.take_over(other)
        assert k.digest() == _digest_of_every_record(k), step


def test_digest_repeated_without_a_log_is_kept_and_any_write_since_renews_it():
    # the digest is kept while nothing is logged; a clear or a take-over that leaves the
    # ring at the same record count with other records must not return the kept one
    k = Ktr(entries=4)
    for i in range(3):
        k.log(0, i, f"a{i}")
    d = k.digest()
    assert k.digest() == d == _digest_of_every_record(k)
    k.clear()
    assert k.digest() == _digest_of_every_record(k) != d     # empty: seq 0 again
    for i in range(3):
        k.log(0, i, f"b{i}")          # seq and idx as before, other records
    assert k.digest() == _digest_of_every_record(k) != d
    other = Ktr(entries=4)
    for i in range(3):
        other.log(1, i, f"c{i}")
    k.take_over(other)
    assert k.digest() == _digest_of_every_record(k)
    for _ in range(5):                 # wraps
        k.log(0, 9, "w")
        assert k.digest() == _digest_of_every_record(k)
        assert k.digest() == _digest_of_every_record(k)


def test_digest_of_records_with_odd_types_is_every_record_s_repr():
    # the digest puts a record's repr together itself for plain ints and formats; a cpu,
    # timestamp or format of another type (a bool, an int or str subclass with its own
    # repr) must still hash as repr(record)
    class Tick(int):
        def __repr__(self) -> str:
            return f"Tick({int(self)})"

    class Fmt(str):
        def __repr__(self) -> str:
            return "Fmt!"

    k = Ktr(entries=8)
    for i, (cpu, ts, fmt) in enumerate([(0, 5, "%s"), (True, 6, "%s"), (1, Tick(7), "%s"),
                                        (2, 8, Fmt("%s")), (0, 9, "%s"), (False, 10, "x%s")]):
        k.logf(cpu, ts, fmt, f"m{i}")
        assert k.digest() == _digest_of_every_record(k), i


def _ktrdump_entry_by_entry(k: Ktr, cpu_col: bool, time_col: bool, quiet: bool,
                            newest_first: bool, file_col: bool, thread_col: bool,
                            relative: bool) -> str:
    """ktrdump.c's loop written out over iter_entries(): the definition format_dump's
    row tuples must reproduce."""
    out = []
    if not quiet:
        head, dash = "index  ", "------ "
        for on, h, d in ((cpu_col, "cpu ", "--- "),
                         (time_col, "timestamp".ljust(17), "-" * 16 + " "),
                         (file_col, "file and line".ljust(41), "-" * 40 + " "),
                         (thread_col, "tid".ljust(19), "-" * 18 + " ")):
            if on:
                head, dash = head + h, dash + d
        out += [head + "trace\n", dash + "----- \n"]
    tlast = None
    for e in k.iter_entries(newest_first=newest_first):
        row = f"{e.index:6d} "
        if cpu_col:
            row += f"{e.cpu:3d} "
        if time_col:
            t = e.timestamp
            if relative:
                tlast = t if tlast is None else tlast
                t, tlast = (tlast - t) % (1 << 64), t
            row += f"{t:16d} "
        if file_col:
            row += f"{e.file + ':' + str(e.line):<40} "
        if thread_col:
            row += f"{e.thread:#x} "
        out.append(row + e.message + "\n")
    return "".join(out)


def test_ktrdump_of_every_column_set_matches_the_entries_one_by_one():
    # format_dump reads the ring's rows without an entry object each; for every option set
    # (including a wrapped ring and -r both ways) its text is the entry-by-entry loop's.
    import itertools
    k = Ktr(entries=8)
    for i in range(13):
        k.vcpu_log("vm2", i % 3, 1000 + 37 * i * i, "handled %s vmexit at %#lx/%d", "inout",
                   0xFFFFFFFF80200000 + i, i % 4)
    k.logf(2, 99999, "%d usecs", 800000, thread=0x1234)
    for flags in itertools.product((False, True), repeat=7):
        assert k.ktrdump(*flags) == _ktrdump_entry_by_entry(k, *flags), flags


def test_ktrdump_file_column_names_the_vmm_line_that_logged_not_its_log_helper():
    # VCPU_CTRn records __FILE__/__LINE__ where the trace call is written (sys/sys/ktr.h):
    # for the vmm that is the line calling Vcpu.log, not Vcpu.log itself.
    from nitdbg.machine import Machine
    m = Machine(vcpus=1)
    v = m.vm.vcpus[0]
    line = sys._getframe().f_lineno + 1
    v.log("probe %d", 7)
    assert m.vm.ktr.tail(1)[0].file == "test_vmm_ktr.py" and m.vm.ktr.tail(1)[0].line == line
    v.set_intr_shadow(1)
    e = m.vm.ktr.tail(1)[0]
    assert e.message == "vm vm2[0]: Setting intr_shadow to 1"
    import inspect

    from nitdbg.vmm.vcpu import Vcpu
    src, first = inspect.getsourcelines(Vcpu.set_intr_shadow)
    assert e.file == "nitdbg/vmm/vcpu.py"
    assert src[e.line - first].strip().startswith('self.log("Setting intr_shadow')


def test_rendered_messages_are_rendered_again_after_the_slot_is_reused():
    k = Ktr(entries=2)
    k.log(0, 1, "a")
    k.log(0, 2, "b")
    assert k.messages() == ["a", "b"]
    k.log(0, 3, "c")
    assert k.messages() == ["b", "c"]
    k.clear()
    k.log(0, 4, "d")
    assert k.messages() == ["d"]


def test_a_site_recorded_as_code_and_offset_reads_back_as_the_line_f_lineno_gives():
    from nitdbg.vmm.ktr import site

    def where() -> tuple:
        f = sys._getframe(1)
        return f.f_code, f.f_lasti, f.f_lineno

    got = [where(), (where(
    )), [where() for _ in range(1)][0]]
    for code, lasti, lineno in got:
        assert site(code, lasti) == ("test_vmm_ktr.py", lineno)


def test_c_format_compiled_per_format_gives_the_generic_interpretation_s_text():
    # c_format compiles each format once (the common conversions inline); for any format,
    # argument types and values its text and its refusals are the spec-by-spec reading's.
    import random

    from nitdbg.vmm.ktr_printf import _c_format_generic
    rnd = random.Random(3)
    convs = "diouxXcsp"
    values = [0, 1, -1, 7, 255, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1, -(1 << 40),
              True, "ab", "", None, 3.0]
    for _ in range(3000):
        n = rnd.randrange(4)
        fmt, args = rnd.choice(("", "x ", "%% ")), []
        for _ in range(n):
            flags = "".join(rnd.sample("-+ #0", rnd.randrange(3)))
            width = rnd.choice(("", "", "3", "12", "*"))
            prec = rnd.choice(("", "", ".0", ".2", ".", ".*"))
            length = rnd.choice(("", "", "l", "h", "hh", "ll", "j", "z"))
            fmt += f"%{flags}{width}{prec}{length}{rnd.choice(convs)} ["
            args += [rnd.randrange(-20, 20)] * (width == "*") + [rnd.randrange(-5, 5)] * (
                prec == ".*") + [rnd.choice(values)]
        args = tuple(args)
        try:
            want: object = _c_format_generic(fmt, args)
        except Exception as e:  # noqa: BLE001 - the refusal itself is compared
            want = (type(e), str(e))
        try:
            got: object = c_format(fmt, args)
        except Exception as e:  # noqa: BLE001
            got = (type(e), str(e))
        assert got == want, (fmt, args)
