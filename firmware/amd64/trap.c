/*
 * trap(): the C side of every IDT entry, and the debugger entry (kdb_trap)
 * with FreeBSD's stop-CPUs-by-NMI protocol.
 */
#include "kern.h"

int kdb_on_nmi;			/* sysctl machdep.kdb_on_nmi */
int kdb_active;

static const char *const trap_msg[] = {
	[0] = "",
	[T_PRIVINFLT] = "privileged instruction fault",
	[2] = "reserved addressing fault",
	[T_BPTFLT] = "breakpoint instruction fault",
	[T_ARITHTRAP] = "arithmetic trap",
	[7] = "system forced exception",
	[T_PROTFLT] = "general protection fault",
	[T_TRCTRAP] = "trace trap",
	[T_PAGEFLT] = "page fault",
	[T_ALIGNFLT] = "alignment fault",
	[T_DIVIDE] = "integer divide fault",
	[T_NMI] = "non-maskable interrupt trap",
	[T_OFLOW] = "overflow trap",
	[T_BOUND] = "FPU bounds check fault",
	[T_DNA] = "FPU device not available",
	[T_DOUBLEFLT] = "double fault",
	[T_FPOPFLT] = "FPU operand fetch fault",
	[T_TSSFLT] = "invalid TSS fault",
	[T_SEGNPFLT] = "segment not present fault",
	[T_STKFLT] = "stack fault",
	[T_MCHK] = "machine check trap",
	[T_XMMFLT] = "SIMD floating-point exception",
	[T_RESERVED] = "reserved (unknown) fault",
};

static const char *trap_name(u_int type)
{
	if (type < nitems(trap_msg) && trap_msg[type] != NULL)
		return trap_msg[type];
	return "unknown/reserved trap";
}

/* ---- stopping the other CPUs (FreeBSD generic_stop_cpus, IPI_STOP_HARD) --- */

#define	NOCPU	(-1)
static volatile int stopping_cpu = NOCPU;
static volatile uint32_t stopped_cpus;
static volatile uint32_t started_cpus;		/* "you may go": set by restart_cpus */
static volatile uint32_t ipi_stop_nmi_pending;
static volatile uint32_t kdb_stepping;		/* CPUs the debugger is single-stepping */

/*
 * Become the stopping CPU, NMI every other CPU and spin until each has
 * parked itself in cpustop_handler.  A CPU that already sits in its own NMI
 * handler has NMIs blocked and never answers: with a broadcast NMI and
 * kdb_on_nmi=1 every CPU ends up spinning here.
 */
static __attribute__((noinline)) void stop_cpus_hard(uint32_t map)
{
	int cpu = curcpu();
	int expect;

	for (;;) {
		expect = NOCPU;
		if (__atomic_compare_exchange_n(&stopping_cpu, &expect, cpu, 0,
		    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			break;
		while (stopping_cpu != NOCPU)
			cpu_spinwait();
	}
	__atomic_fetch_or(&ipi_stop_nmi_pending, map, __ATOMIC_SEQ_CST);
	lapic_ipi_nmi_allbutself();
	while ((stopped_cpus & map) != map)
		cpu_spinwait();
}

/* Let the stopped CPUs go and wait until they have left cpustop_handler. */
static __attribute__((noinline)) void restart_cpus(uint32_t map)
{
	__atomic_fetch_or(&started_cpus, map, __ATOMIC_SEQ_CST);
	while ((stopped_cpus & map) != 0)
		cpu_spinwait();
	stopping_cpu = NOCPU;
}

/* A stopped CPU, inside its NMI handler: spin until restart_cpus. */
static __attribute__((noinline)) void cpustop_handler(void)
{
	uint32_t bit = 1u << curcpu();

	__atomic_fetch_or(&stopped_cpus, bit, __ATOMIC_SEQ_CST);
	while ((started_cpus & bit) == 0)
		cpu_spinwait();
	__atomic_fetch_and(&started_cpus, ~bit, __ATOMIC_SEQ_CST);
	__atomic_fetch_and(&stopped_cpus, ~bit, __ATOMIC_SEQ_CST);
}

/* Was this NMI the debugger's stop IPI?  Then park (ipi_nmi_handler). */
static int ipi_nmi_handler(void)
{
	uint32_t bit = 1u << curcpu();

	if ((ipi_stop_nmi_pending & bit) == 0)
		return 1;
	__atomic_fetch_and(&ipi_stop_nmi_pending, ~bit, __ATOMIC_SEQ_CST);
	cpustop_handler();
	return 0;
}

/* The NIT_HC_KDB_ENTER hypercall: the host's ddb runs on this frame. */
static __attribute__((noinline)) void kdb_enter_hypercall(struct trapframe *tf, int type,
    int cpu)
{
	__asm__ volatile("outl %%eax, %[port]"
	    : : "a"(NIT_HC_KDB_ENTER), [port] "i"(NIT_HC_PORT), "D"(tf),
	    "S"((uint64_t)type), "d"((uint64_t)cpu) : "memory");
}

/*
 * Enter the debugger with this trapframe (FreeBSD kdb_trap): stop the
 * others, trap to the host debugger, let the others go.  The debugger may
 * have edited the frame (PSL_T for a step, tf_rip); the caller returns
 * through the trap exit path, which loads it with iretq.
 */
void kdb_trap(int type, int code, struct trapframe *tf)
{
	int cpu = curcpu();
	uint32_t others = started_cpus_mask & ~(1u << cpu);

	(void)code;
	if (others != 0)
		stop_cpus_hard(others);
	kdb_active++;
	kdb_enter_hypercall(tf, type, cpu);
	kdb_active--;
	if (tf->tf_rflags & PSL_T)
		__atomic_fetch_or(&kdb_stepping, 1u << cpu, __ATOMIC_SEQ_CST);
	else
		__atomic_fetch_and(&kdb_stepping, ~(1u << cpu), __ATOMIC_SEQ_CST);
	if (others != 0)
		restart_cpus(others);
}

void panic(const char *msg)
{
	disable_intr();
	printf("panic: %s\ncpuid = %d\n", msg, curcpu());
	__asm__ volatile("outl %%eax, %[port]"
	    : : "a"(NIT_HC_PANIC), [port] "i"(NIT_HC_PORT), "D"(msg) : "memory");
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- NMI (FreeBSD isa_nmi + the kdb_on_nmi hook) ------------------------- */

static __attribute__((noinline)) void isa_nmi(void)
{
	(void)inb(0x61);	/* NMI status and control: the reason for the NMI */
}

static void nmi_handle(struct trapframe *tf)
{
	if (ipi_nmi_handler() == 0)
		return;
	isa_nmi();
	if (kdb_on_nmi) {
		printf("NMI ... going to debugger\n");
		kdb_trap(T_NMI, 0, tf);
	}
}

/* ---- fatal kernel traps ------------------------------------------------ */

static void trap_fatal(struct trapframe *tf, uint64_t eva)
{
	u_int type = tf->tf_trapno;
	int cpu = curcpu(), pid;
	const char *comm;
	uint64_t code = tf->tf_err;

	printf("\n\nFatal trap %u: %s while in %s mode\n", type, trap_name(type),
	    TRAPF_USERMODE(tf) ? "user" : "kernel");
	printf("cpuid = %d; apic id = %02x\n", cpu, lapic_id());
	if (type == T_PAGEFLT) {
		printf("fault virtual address\t= 0x%lx\n", eva);
		printf("fault code\t\t= %s %s, %s\n",
		    code & 4 ? "user" : "supervisor",
		    code & 16 ? "instruction fetch" : code & 2 ? "write data" : "read data",
		    code & 1 ? "protection violation" : "page not present");
	}
	printf("instruction pointer\t= 0x%lx:0x%lx\n", tf->tf_cs & 0xffff, tf->tf_rip);
	printf("stack pointer\t        = 0x%lx:0x%lx\n", tf->tf_ss & 0xffff, tf->tf_rsp);
	printf("frame pointer\t        = 0x%lx:0x%lx\n", tf->tf_ss & 0xffff, tf->tf_rbp);
	printf("code segment\t\t= base 0x0, limit 0xfffff, type 0x1b\n");
	printf("\t\t\t= DPL %lu, pres 1, long 1, def32 0, gran 1\n", tf->tf_cs & 3);
	printf("processor eflags\t= ");
	if (tf->tf_rflags & PSL_T)
		printf("trace trap, ");
	if (tf->tf_rflags & PSL_I)
		printf("interrupt enabled, ");
	if (tf->tf_rflags & PSL_NT)
		printf("nested task, ");
	if (tf->tf_rflags & PSL_RF)
		printf("resume, ");
	printf("IOPL = %lu\n", (tf->tf_rflags & PSL_IOPL) >> 12);
	comm = curproc_name(cpu, &pid);
	printf("current process\t\t= %d (%s)\n", pid, comm);
	printf("trap number\t\t= %u\n", type);
	kdb_trap((int)type, 0, tf);
	if (type == T_DOUBLEFLT || type == T_MCHK)
		panic(trap_name(type));
	/* ddb continued: retry, as FreeBSD does after kdb_trap() handled it. */
}

/* ---- the dispatcher ------------------------------------------------------ */

static void lapic_handle_intr(u_int vector)
{
	if (vector == IDT_SPURIOUS)
		return;			/* no EOI for the spurious vector */
	lapic_eoi();
	if (vector == IDT_TIMER)
		clock_intr();		/* hardclock */
	else if (vector == IDT_COM1)
		tty_intr();
}

static int user_signal(u_int type, struct trapframe *tf)
{
	switch (type) {
	case T_PROTFLT:
	case T_SEGNPFLT:
	case T_STKFLT:
	case T_TSSFLT:
		return SIGBUS;
	case T_PAGEFLT:
		return SIGSEGV;
	case T_PRIVINFLT:
		return SIGILL;
	case T_DIVIDE:
	case T_ARITHTRAP:
	case T_XMMFLT:
	case T_OFLOW:
	case T_BOUND:
		return SIGFPE;
	default:
		(void)tf;
		return SIGTRAP;
	}
}

void trap(struct trapframe *tf)
{
	u_int type = tf->tf_trapno;
	uint64_t eva = 0;
	uint64_t *iretf;
	int cpu;

	if (type == T_PAGEFLT)
		eva = tf->tf_addr = rcr2();
	if (type == T_NMI) {
		nmi_handle(tf);
		return;			/* straight back through nmi_iret */
	}
	if (type >= IDT_TIMER || type == IDT_COM1) {
		lapic_handle_intr(type);
		goto out;
	}
	if (type == IDT_SYSCALL) {
		syscall(tf);
		goto out;
	}

	cpu = curcpu();
	if (TRAPF_USERMODE(tf)) {
		/* A trace trap after the debugger stepped into user mode stays its own. */
		if ((type == T_TRCTRAP || type == T_BPTFLT) && (kdb_stepping & (1u << cpu))) {
			kdb_trap((int)type, 0, tf);
			goto out;
		}
		sigexit(tf, user_signal(type, tf));
		goto out;
	}

	switch (type) {
	case T_BPTFLT:
	case T_TRCTRAP:
		kdb_trap((int)type, 0, tf);
		return;
	case T_PROTFLT:
	case T_SEGNPFLT:
	case T_STKFLT:
		/*
		 * The iretq of a return to user mode faulted on a bad frame (as
		 * FreeBSD, checked for doreti_iret; here also the NMI handler's own
		 * iretq).  %rsp at the fault points at that iret frame: rip, cs, ...
		 * Resume at doreti_iret_fault, which turns it into a user-mode trap.
		 */
		if (tf->tf_rip == (uintptr_t)doreti_iret || tf->tf_rip == (uintptr_t)nmi_iret) {
			iretf = (uint64_t *)tf->tf_rsp;
			if ((iretf[1] & 3) == 3) {
				tf->tf_rip = (uintptr_t)doreti_iret_fault;
				return;
			}
		}
		break;
	default:
		break;
	}
	trap_fatal(tf, eva);
	return;
out:
	if (TRAPF_USERMODE(tf))
		userret(tf);
}
