"""Kernel files are not trusted: what is not a regular file or is larger than the limit is
refused before a byte is read, and a damaged ELF gets one line, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitdbg.guest.boot import load_kernel
from nitdbg.guest.elf import KERNEL_MAX, LoadError
from nitdbg.machine import DEFAULT_KERNEL, I386_KERNEL, Machine, MachineError

AMD64 = DEFAULT_KERNEL.read_bytes()
I386 = I386_KERNEL.read_bytes()


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/tmp"])
def test_a_device_or_directory_is_not_a_kernel(path):
    with pytest.raises(MachineError, match="not a regular file$"):
        Machine(kernel=path, vcpus=1)


def test_a_kernel_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "huge.elf"
    with p.open("wb") as f:
        f.truncate(KERNEL_MAX + 1)            # sparse: costs no disk, would cost RAM to read
    with pytest.raises(MachineError, match="larger than a kernel may be"):
        Machine(kernel=p, vcpus=1)


def test_cli_run_says_one_line_for_dev_zero(capsys):
    from nitdbg.cli import main
    with pytest.raises(SystemExit) as e:
        main(["run", "--kernel", "/dev/zero"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert err.strip() == "nitdbg: /dev/zero: not a regular file"


def _mutate(raw: bytes, data) -> bytes:  # noqa: ANN001 - hypothesis data
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        where = data.draw(st.integers(0, 255) | st.integers(0, len(b) - 1))
        b[where] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        b = b[:data.draw(st.integers(0, len(b)))]
    return bytes(b)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_damaged_kernel_loads_or_is_refused_in_one_line(data):
    raw = _mutate(data.draw(st.sampled_from([AMD64, I386])), data)
    try:
        load_kernel(raw, 1, 64 << 20, name="k.elf")
    except LoadError as e:
        assert "\n" not in str(e) and str(e).startswith("k.elf")
