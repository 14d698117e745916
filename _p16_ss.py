import sys
from nitdbg.machine import Machine
pol = sys.argv[1]
m = Machine(vcpus=1, policy=pol)
m.boot_to_prompt()
m.host("bhyvectl --vm=vm2 --cpu=0 --capname=pause_exit --setcap=0")
m.type_line("sysctl machdep.kdb_on_nmi=0")
print(m.type_line("sysctl debug.sstest=20"))
print(m.type_line("sysctl debug.sstest_traps"))
m.host("sysctl debug.nit.recursive_nmi=1")
m.console_input(b"sysctl debug.sstest=20\r")
lo, hi = m.symbols.address("sstest_loop"), m.symbols.address("sstest_done")
v = m.vcpus[0]
for i in range(200000):
    m.step_vcpu(0)
    if lo <= v.cpu.rip < hi and not v.cpu.pending_db and v.cpu.icount > 0:
        break
print("at", m.symbols.format(v.cpu.rip), i)
m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
m.run_until_output(b"# ", max_insns=3_000_000)
print(m.type_line("sysctl debug.sstest_traps"))
print(v.nmi_describe())
