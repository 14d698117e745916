"""A clone works under any folder name, including the `nitdbg` that `git clone .../nitdbg`
creates: the path-sensitive parts run here from a temporary folder named nitdbg."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = '''
import sys
import nitdbg
from nitdbg.machine import DEFAULT_KERNEL
from nitdbg.vmm.ktr import Ktr
k = Ktr()
line = sys._getframe().f_lineno + 1
k.log(0, 5, "here")
row = k.ktrdump(file_col=True, quiet=True)
assert row == f"     0 {'probe_ktr.py:' + str(line):<40} here\\n", row
assert nitdbg.__file__.startswith(sys.argv[1]), nitdbg.__file__
assert DEFAULT_KERNEL.is_file(), DEFAULT_KERNEL
from nitdbg.machine import Machine
m = Machine(vcpus=1)
m.host("sysctl debug.nit.delay_usecs=1")
m.boot_to_prompt()
m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
m.settle()
dump = m.host("ktrdump -qf")
assert " nitdbg/vmm/" in dump and "/nitdbg/nitdbg" not in dump, dump[:400]
print("ok")
'''


def test_a_clone_in_a_folder_named_nitdbg_names_its_ktr_sources_like_any_other(tmp_path):
    clone = tmp_path / "nitdbg"
    shutil.copytree(REPO / "nitdbg", clone / "nitdbg",
                    ignore=shutil.ignore_patterns("__pycache__", "screenshots"))
    shutil.copytree(REPO / "firmware", clone / "firmware",
                    ignore=shutil.ignore_patterns("*.o", "build"))
    (clone / "tests").mkdir()
    (clone / "tests" / "probe_ktr.py").write_text(PROBE)
    r = subprocess.run([sys.executable, "tests/probe_ktr.py", str(clone / "nitdbg")],
                       cwd=clone, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(clone), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout == "ok\n", r.stdout + r.stderr
