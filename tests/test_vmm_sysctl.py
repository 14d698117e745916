"""sysctl tree and sysctl(8) output and errors (sbin/sysctl/sysctl.c texts)."""

import pytest

from nitdbg.vmm.sysctl import (
    USAGE,
    NitKnobs,
    SysctlError,
    SysctlTree,
    register_nit_knobs,
    register_vmm_tunables,
)

NIT = ["delay_usecs", "recursive_nmi", "invalidate_nested_mappings", "bounce_to_userspace",
       "iret_trigger_gpf"]


@pytest.fixture
def host():
    tree = SysctlTree()
    knobs = NitKnobs()
    register_nit_knobs(tree, knobs)
    register_vmm_tunables(tree, knobs)
    tree.add_int("kern.x", 7, access="ro", descr="a read-only int")
    tree.add_string("kern.ostype", "FreeBSD", access="ro")
    return tree, knobs


def test_nit_knobs_are_exactly_the_seeds_five_ints_defaulting_to_0(host):
    tree, _ = host
    assert tree.names("debug.nit") == [f"debug.nit.{n}" for n in NIT]
    assert tree.get("debug.nit") == "\n".join(f"debug.nit.{n}: 0" for n in NIT)


def test_set_prints_old_arrow_new_and_updates_the_knob(host):
    tree, knobs = host
    assert tree.set("debug.nit.delay_usecs", "800000") == "debug.nit.delay_usecs: 0 -> 800000"
    assert knobs.delay_usecs == 800000
    assert tree.get("debug.nit.delay_usecs") == "debug.nit.delay_usecs: 800000"
    assert tree.set("debug.nit.delay_usecs", "0", nflag=True) == "800000 -> 0"


def test_unknown_oid(host):
    tree, _ = host
    with pytest.raises(SysctlError) as ei:
        tree.set("debug.nit.foo", "1")
    assert str(ei.value) == "sysctl: unknown oid 'debug.nit.foo'"


def test_invalid_integer_leaves_the_value_unchanged(host):
    tree, knobs = host
    tree.set("debug.nit.recursive_nmi", "1")
    with pytest.raises(SysctlError) as ei:
        tree.set("debug.nit.recursive_nmi", "abc")
    assert str(ei.value) == "sysctl: invalid integer 'abc'"
    with pytest.raises(SysctlError, match="invalid integer '1x'"):
        tree.set("debug.nit.recursive_nmi", "1x")
    assert knobs.recursive_nmi == 1


def test_empty_numeric_value(host):
    tree, _ = host
    with pytest.raises(SysctlError, match="^sysctl: empty numeric value$"):
        tree.set("debug.nit.recursive_nmi", "")


def test_integers_parse_like_strtol_base_0(host):
    tree, knobs = host
    tree.set("debug.nit.delay_usecs", "0x10")
    assert knobs.delay_usecs == 16
    tree.set("debug.nit.delay_usecs", "010")
    assert knobs.delay_usecs == 8
    with pytest.raises(SysctlError, match="invalid integer '08'"):
        tree.set("debug.nit.delay_usecs", "08")
    with pytest.raises(SysctlError, match="invalid integer '4294967296'"):
        tree.set("debug.nit.recursive_nmi", "4294967296")
    assert knobs.delay_usecs == 8


def test_read_only_oid(host):
    tree, _ = host
    with pytest.raises(SysctlError) as ei:
        tree.set("kern.x", "1")
    assert str(ei.value) == "sysctl: oid 'kern.x' is read only"
    assert tree.value("kern.x") == 7


def test_tunable_is_settable_before_boot_only(host):
    tree, knobs = host
    assert tree.set("hw.vmm.trace_guest_exceptions", "1") == \
        "hw.vmm.trace_guest_exceptions: 0 -> 1"
    tree.boot()
    with pytest.raises(SysctlError) as ei:
        tree.set("hw.vmm.trace_guest_exceptions", "0")
    assert ei.value.lines == [
        "sysctl: oid 'hw.vmm.trace_guest_exceptions' is a read only tunable",
        "sysctl: Tunable values are set in /boot/loader.conf"]
    assert knobs.trace_guest_exceptions == 1


def test_setting_a_node_is_refused(host):
    tree, _ = host
    with pytest.raises(SysctlError, match="^sysctl: oid 'debug.nit' isn't a leaf node$"):
        tree.set("debug.nit", "1")


def test_validator_refusal_is_invalid_argument_and_changes_nothing(host):
    tree, knobs = host
    with pytest.raises(SysctlError) as ei:
        tree.set("debug.nit.delay_usecs", "-1")
    assert str(ei.value) == "sysctl: debug.nit.delay_usecs=-1: Invalid argument"
    assert knobs.delay_usecs == 0


def test_string_oid(host):
    tree, _ = host
    assert tree.get("kern.ostype") == "kern.ostype: FreeBSD"


def test_run_sets_and_reads_several_names(host):
    tree, _ = host
    r = tree.run(["debug.nit.delay_usecs=800000", "debug.nit.recursive_nmi"])
    assert r.stdout == ("debug.nit.delay_usecs: 0 -> 800000\n"
                        "debug.nit.recursive_nmi: 0\n")
    assert (r.stderr, r.status) == ("", 0)


def test_run_n_prints_values_only(host):
    tree, _ = host
    assert tree.run(["-n", "debug.nit.iret_trigger_gpf"]).stdout == "0\n"


def test_run_reports_each_error_and_carries_on(host):
    tree, knobs = host
    r = tree.run(["debug.nit.foo=1", "debug.nit.bounce_to_userspace=1"])
    assert r.stderr == "sysctl: unknown oid 'debug.nit.foo'\n"
    assert r.stdout == "debug.nit.bounce_to_userspace: 0 -> 1\n"
    assert r.status == 1 and knobs.bounce_to_userspace == 1


def test_run_quotes_and_colon_form(host):
    tree, knobs = host
    tree.run(["debug.nit.delay_usecs='5'"])
    assert knobs.delay_usecs == 5
    tree.run(["debug.nit.delay_usecs: 6"])
    assert knobs.delay_usecs == 6


def test_run_illegal_option_and_no_arguments_print_usage(host):
    tree, _ = host
    r = tree.run(["-z", "kern.x"])
    assert r.stderr == "sysctl: illegal option -- z\n" + USAGE + "\n" and r.status == 1
    assert tree.run([]).stderr == USAGE + "\n"


def test_run_descriptions_and_e_separator(host):
    tree, _ = host
    assert tree.run(["-d", "kern.x"]).stdout == "kern.x: a read-only int\n"
    assert tree.run(["-e", "kern.x"]).stdout == "kern.x=7\n"
    assert tree.run(["-t", "kern.x"]).stdout == "kern.x: integer\n"


def test_run_a_lists_every_leaf(host):
    tree, _ = host
    out = tree.run(["-a"]).stdout.splitlines()
    assert out[0] == "debug.nit.delay_usecs: 0"
    assert "kern.ostype: FreeBSD" in out and len(out) == 8


def test_getter_setter_oid():
    tree = SysctlTree()
    box = {"v": 3}
    tree.add_int("debug.box", getter=lambda: box["v"], setter=lambda v: box.update(v=v))
    assert tree.set("debug.box", "4") == "debug.box: 3 -> 4" and box["v"] == 4
    with pytest.raises(ValueError):
        tree.add_int("debug.box", 1)
    with pytest.raises(ValueError):
        tree.add_int("debug.box.child", 1)   # a leaf cannot hold children
