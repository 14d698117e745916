import sys
from nitdbg.machine import Machine
from nitdbg.x86.retire import EV_NAMES
pol = sys.argv[1]; knobs = sys.argv[2:]
m = Machine(vcpus=1, policy=pol)
m.boot_to_prompt()
m.host("bhyvectl --vm=vm2 --cpu=0 --capname=pause_exit --setcap=0")
m.type_line("sysctl machdep.kdb_on_nmi=0")
for k in knobs: print(m.host(f"sysctl debug.nit.{k}").strip())
m.host("sudo sysctl debug.ktr.clear=1")
seq = m.vcpus[0].cpu.icount
m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
m.host("sleep 0.01")
for e in m.vm.ktr.iter_entries():
    print("KTR", e.message)
v = m.vcpus[0]
for e in sorted(v.cpu.retire.events, key=lambda e: e.seq):
    if e.seq >= seq and EV_NAMES[e.kind] not in ("vmrun",):
        print(e.seq, EV_NAMES[e.kind], e.vector, m.symbols.format(e.rip), hex(e.rflags), hex(e.info))
print(v.nmi_describe())
