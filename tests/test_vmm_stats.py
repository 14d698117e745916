"""vmm stats and `bhyvectl --get-stats` ("vcpu%d stats:" then "%-40s\\t%ld")."""

import pytest

from nitdbg.vmm.stats import STAT_TYPES, StatsError, VmmStats, stat_desc, stat_descriptions


def grep(text, pattern):
    return [ln for ln in text.splitlines() if pattern in ln]


def test_format_starts_with_vcpu_banner_and_uses_percent_minus_40s_tab_ld():
    s = VmmStats(2)
    s.incr(1, "VMEXIT_HLT", 3)
    out = s.format_stats(1)
    lines = out.splitlines()
    assert lines[0] == "vcpu1 stats:"
    assert "number of times hlt was intercepted     \t3" in lines
    assert "total number of vm exits                \t0" in lines
    assert out.endswith("\n")


def test_seed_grep_for_precise_unblocking_shows_the_difference_of_two():
    s = VmmStats(1)
    before = grep(s.format_stats(0), "vNMI unblocked precisely")
    s.incr(0, "VNMI_UNBLOCKED_PRECISELY")
    s.incr(0, "VNMI_UNBLOCKED_PRECISELY")
    after = grep(s.format_stats(0), "vNMI unblocked precisely")
    assert before == ["vNMI unblocked precisely                \t0"]
    assert after == ["vNMI unblocked precisely                \t2"]


def test_description_longer_than_40_is_not_truncated():
    s = VmmStats(1)
    s.incr(0, "VNMI_UNBLOCKED_SPECULATIVELY")
    assert "Number of times vNMI unblocked speculatively\t1" in s.format_stats(0).splitlines()


@pytest.mark.parametrize(("key", "desc"), [
    ("VMEXIT_COUNT", "total number of vm exits"),
    ("VMEXIT_INTR_WINDOW", "vm exits due to interrupt window opening"),
    ("VMEXIT_HLT", "number of times hlt was intercepted"),
    ("VCPU_NMI_COUNT", "number of NMIs delivered to vcpu"),
    ("VMEXIT_NESTED_FAULT", "vm exits due to nested page fault"),
    ("VMEXIT_UNKNOWN", "number of vm exits for unknown reason"),
    ("VMEXIT_INOUT", "number of times in/out was intercepted"),
    ("VMEXIT_EXCEPTION", "number of vm exits due to exceptions"),
    ("VMEXIT_VINTR", "VM exits due to interrupt window"),
    ("VNMI_UNBLOCKED_PRECISELY", "vNMI unblocked precisely"),
    ("VNMI_UNBLOCKED_SPECULATIVELY", "Number of times vNMI unblocked speculatively"),
])
def test_descriptions_are_bhyves(key, desc):
    assert {t.key: t.desc for t in STAT_TYPES}[key] == desc


def test_array_stat_prints_one_line_per_element():
    s = VmmStats(1)
    s.incr(0, "LVTS_TRIGGERRED", index=1)
    lines = s.format_stats(0).splitlines()
    assert "lvts triggered[1]                       \t1" in lines
    assert "lvts triggered[0]                       \t0" in lines
    assert s.get(0, "LVTS_TRIGGERRED", index=1) == 1
    assert len(lines) == 1 + len(stat_descriptions())


def test_counters_are_per_vcpu():
    s = VmmStats(2)
    s.incr(0, "VMEXIT_COUNT", 5)
    assert s.get(0, "VMEXIT_COUNT") == 5 and s.get(1, "VMEXIT_COUNT") == 0


def test_bad_key_element_or_vcpu_is_refused_and_changes_nothing():
    s = VmmStats(1)
    snap = s.snapshot()
    with pytest.raises(StatsError, match="unknown stat"):
        s.incr(0, "VMEXIT_HTL")
    with pytest.raises(StatsError):
        s.incr(0, "LVTS_TRIGGERRED", index=7)
    with pytest.raises(StatsError):
        s.incr(1, "VMEXIT_HLT")
    with pytest.raises(StatsError):
        stat_desc(10_000)
    assert s.snapshot() == snap


def test_snapshot_and_restore():
    s = VmmStats(1)
    s.incr(0, "VMEXIT_PAUSE", 4)
    snap = s.snapshot()
    s.incr(0, "VMEXIT_PAUSE")
    s.restore(snap)
    assert s.get(0, "VMEXIT_PAUSE") == 4
    with pytest.raises(StatsError):
        s.restore([[0]])


def test_ld_prints_a_uint64_above_2_63_as_negative():
    s = VmmStats(1)
    s.set(0, "VCPU_TOTAL_RUNTIME", 1 << 63)
    assert f"vcpu total runtime{' ' * 22}\t{-(1 << 63)}" in s.format_stats(0).splitlines()
