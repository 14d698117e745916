/*
 * nit i386 test kernel: descriptor tables, the local APIC, traps and kmain.
 */
#include "kernel.h"

#define SEG(base, limit, access, flags)						\
	((uint64_t)((limit) & 0xffff) | ((uint64_t)((base) & 0xffffff) << 16) |	\
	 ((uint64_t)(access) << 40) | ((uint64_t)(((limit) >> 16) & 0xf) << 48) | \
	 ((uint64_t)(flags) << 52) | ((uint64_t)(((base) >> 24) & 0xff) << 56))

/* Flat 4 GiB code (P, DPL0, S, type 0xB) and data (type 0x3), G=1, D=1. */
uint64_t gdt[NGDT] = {
	0,
	SEG(0, 0xfffff, 0x9b, 0xc),
	SEG(0, 0xfffff, 0x93, 0xc),
	0,			/* GSEL_TSS, filled by gdt_init */
	0,			/* GSEL_NMITSS, filled by the tsnmi module */
};

uint64_t idt[256];
struct i386tss common_tss;
volatile uint32_t ticks;
int idletick;			/* kern.eventtimer.idletick */
volatile uint32_t nmi_count;
int kdb_on_nmi;
uint32_t physmem;
const int hz = 100;

static volatile uint32_t *const lapic = (volatile uint32_t *)LAPIC_BASE;
#define LAPIC_ID	0x020
#define LAPIC_TPR	0x080
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_LVT_LINT0	0x350
#define LAPIC_LVT_LINT1	0x360
#define LAPIC_LVT_ERROR	0x370
#define LAPIC_ICR_TIMER	0x380
#define LAPIC_DCR_TIMER	0x3e0
#define APIC_LVT_MASKED		0x10000
#define APIC_LVT_PERIODIC	0x20000
#define APIC_DELMODE_NMI	0x400
#define APIC_SVR_ENABLE		0x100
#define APIC_BUS_HZ		100000000u	/* nitdbg's virtual bus clock */
#define APIC_TIMER_DIVISOR	16

static inline uint32_t lapic_read(uint32_t reg) { return lapic[reg / 4]; }
static inline void lapic_write(uint32_t reg, uint32_t v) { lapic[reg / 4] = v; }

uint32_t rcr3(void)
{
	uint32_t v;
	__asm__ volatile("movl %%cr3, %0" : "=r"(v));
	return v;
}

/* An available 32-bit TSS descriptor (type 9), byte granular, 104 bytes. */
void gdt_set_tss(int sel, struct i386tss *tss)
{
	gdt[sel >> 3] = SEG((uint32_t)tss, sizeof(*tss) - 1, 0x89, 0x0);
}

/* 32-bit interrupt gate, DPL 0: IF is cleared on entry. */
void setidt_intr(int vec, void (*fn)(void))
{
	uint32_t off = (uint32_t)fn;
	idt[vec] = (uint64_t)(off & 0xffff) | ((uint64_t)GSEL_CODE << 16) |
	    ((uint64_t)0x8e << 40) | ((uint64_t)(off >> 16) << 48);
}

/* Task gate (type 5), DPL 0: the offset is unused, the selector names a TSS. */
void setidt_task(int vec, int sel)
{
	/* Write the selector half first so the present half never points at junk. */
	volatile uint32_t *g = (volatile uint32_t *)&idt[vec];
	g[0] = (uint32_t)sel << 16;
	g[1] = 0x85u << 8;
}

static void gdt_init(void)
{
	struct { uint16_t limit; uint32_t base; } __attribute__((packed)) d;

	common_tss.tss_ss0 = GSEL_DATA;
	common_tss.tss_esp0 = (uint32_t)bootstack_top;
	common_tss.tss_ioopt = sizeof(struct i386tss);	/* no I/O bitmap */
	gdt_set_tss(GSEL_TSS, &common_tss);
	d.limit = sizeof(gdt) - 1;
	d.base = (uint32_t)gdt;
	__asm__ volatile("lgdt %0" : : "m"(d));
	/* The running task must have a TSS for a task switch to save it into. */
	__asm__ volatile("ltr %w0" : : "r"(GSEL_TSS));
}

static void idt_init(void)
{
	struct { uint16_t limit; uint32_t base; } __attribute__((packed)) d;
	int i;

	for (i = 0; i < 32; i++)
		setidt_intr(i, idtvec[i]);
	setidt_intr(IDT_TIMER, Xtimerint);
	setidt_intr(IDT_SPURIOUS, Xspuriousint);
	setidt_intr(IDT_COM1, Xcom1int);
	d.limit = sizeof(idt) - 1;
	d.base = (uint32_t)idt;
	__asm__ volatile("lidt %0" : : "m"(d));
}

static void lapic_init(void)
{
	/*
	 * Mask both 8259s, as FreeBSD does when it runs on the APICs: a PIC input the BIOS
	 * left asserted must not keep the CPU's INTR request up (QEMU TCG would then take
	 * a vector -1 at the first sti once LINT0 is masked).
	 */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	lapic_write(LAPIC_SVR, APIC_SVR_ENABLE | IDT_SPURIOUS);
	lapic_write(LAPIC_TPR, 0);
	/* No PIC here: mask ExtINT. LINT1 is the NMI pin bhyve's --assert-lapic-lvt=1 raises. */
	lapic_write(LAPIC_LVT_LINT0, APIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, APIC_DELMODE_NMI);
	lapic_write(LAPIC_LVT_ERROR, APIC_LVT_MASKED);
	lapic_write(LAPIC_DCR_TIMER, 0x3);		/* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_PERIODIC | IDT_TIMER);
	lapic_write(LAPIC_ICR_TIMER, APIC_BUS_HZ / APIC_TIMER_DIVISOR / hz);
}

/*
 * The event timer, tickless in idle as FreeBSD's (kern_clocksource.c): the tick
 * is periodic while the CPU runs; an idle CPU arms a one-shot for its next
 * event, at most hz/2 - 1 ticks on (getnextcpuevent), and accounts the ticks
 * it slept through on wakeup from the TSC, calibrated against the tick at
 * boot.  32-bit TSC arithmetic: every gap here is far below 2^32 counts.
 * Tick boundaries (nexthard) lie half a period before the tick interrupts.
 */
#define	LAPIC_TIMER_COUNT	(APIC_BUS_HZ / APIC_TIMER_DIVISOR / 100)
#define	CLK_PERIODIC	0
#define	CLK_IDLE	1	/* one-shot armed for the idle deadline */
#define	CLK_EXPIRED	2	/* it fired; still in the idle loop */
#define	CLK_REALIGN	3	/* one-shot to the next tick interrupt, then periodic */

static uint32_t tsc_tick, nexthard, calib_tsc;
static volatile int calib_state;
static int clk_mode;

static inline uint32_t rdtsc32(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo;
}

/* hardclock(cnt), with no branch on the time read (nexthard <= now + tsc_tick). */
static void hardclock_sync(uint32_t now)
{
	uint32_t n = (now + tsc_tick - nexthard) / tsc_tick;

	nexthard += n * tsc_tick;
	ticks += n;
}

/* After hardclock_sync(now): the first tick interrupt time after now, plus `skip` ticks. */
static uint32_t next_tick_intr(uint32_t now, uint32_t skip)
{
	uint32_t first = nexthard - tsc_tick - tsc_tick / 2;	/* an interrupt before now */

	return first + ((now - first) / tsc_tick + 1 + skip) * tsc_tick;
}

static void timer_oneshot_until(uint32_t now, uint32_t when)
{
	/* TSC counts per timer count, rounded up: never 0, and no branch on the time read */
	uint32_t per_count = (tsc_tick + LAPIC_TIMER_COUNT - 1) / LAPIC_TIMER_COUNT;

	lapic_write(LAPIC_LVT_TIMER, IDT_TIMER);
	lapic_write(LAPIC_ICR_TIMER, (when - now) / per_count + 1);
}

static void timer_periodic(void)
{
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_PERIODIC | IDT_TIMER);
	lapic_write(LAPIC_ICR_TIMER, LAPIC_TIMER_COUNT);
}

/* Halt through two ticks, reading the TSC in each: one period, on the same path. */
static void clock_calibrate(void)
{
	calib_state = 1;
	for (;;) {
		disable_intr();
		if (calib_state == 3)
			break;
		cpu_idle();
	}
	enable_intr();
}

static void lapic_timer_intr(void)
{
	uint32_t now = rdtsc32();

	if (tsc_tick == 0) {
		ticks++;
		if (calib_state == 1) {
			calib_tsc = now;
			calib_state = 2;
		} else if (calib_state == 2) {
			tsc_tick = now - calib_tsc;
			nexthard = now + tsc_tick / 2;
			calib_state = 3;
		}
	} else {
		hardclock_sync(now);
		if (clk_mode == CLK_IDLE) {
			clk_mode = CLK_EXPIRED;
		} else if (clk_mode == CLK_REALIGN) {
			timer_periodic();
			clk_mode = CLK_PERIODIC;
		}
	}
	lapic_write(LAPIC_EOI, 0);
}

/* One pass of the idle loop (interrupts disabled): arm the idle deadline, halt. */
void clock_idle(void)
{
	uint32_t now;

	if (tsc_tick != 0 && !idletick) {
		now = rdtsc32();
		hardclock_sync(now);
		timer_oneshot_until(now, next_tick_intr(now, (uint32_t)(hz / 2 - 1)));
		clk_mode = CLK_IDLE;
	} else if (clk_mode != CLK_PERIODIC) {
		clock_active();
	}
	cpu_idle();
}

/* Leaving the idle loop (interrupts disabled): account, resume the periodic tick. */
void clock_active(void)
{
	uint32_t now;

	if (clk_mode == CLK_PERIODIC || clk_mode == CLK_REALIGN)
		return;
	now = rdtsc32();
	hardclock_sync(now);
	timer_oneshot_until(now, next_tick_intr(now, 0));
	clk_mode = CLK_REALIGN;
}

static void kdb_trap(int type, struct trapframe *tf)
{
	hypercall(NIT_HC_KDB_ENTER, (uint32_t)tf, type, 0);
}

/* isa_nmi(): read the NMI status port, count, maybe enter the debugger. */
static void nmi_handler(struct trapframe *tf)
{
	(void)inb(0x61);
	nmi_count++;
	if (kdb_on_nmi)
		kdb_trap(T_NMI, tf);
}

static const char *const trap_msg[] = {
	[T_PRIVINFLT] = "privileged instruction fault",
	[T_BPTFLT] = "breakpoint instruction fault",
	[T_ARITHTRAP] = "arithmetic trap",
	[T_PROTFLT] = "general protection fault",
	[T_TRCTRAP] = "debug exception",
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

static void trap_fatal(struct trapframe *tf)
{
	uint32_t type = tf->tf_trapno;
	const char *msg = type < sizeof(trap_msg) / sizeof(trap_msg[0]) && trap_msg[type] ?
	    trap_msg[type] : "unknown trap";

	printf("\n\nFatal trap %u: %s while in kernel mode\n", type, msg);
	printf("error code\t\t= 0x%x\n", tf->tf_err);
	printf("instruction pointer\t= 0x%x:0x%x\n", tf->tf_cs & 0xffff, tf->tf_eip);
	printf("frame pointer\t\t= 0x%x:0x%x\n", GSEL_DATA, tf->tf_ebp);
	printf("processor eflags\t= 0x%x\n", tf->tf_eflags);
	printf("trap number\t\t= %u\n", type);
	kdb_trap(type, tf);
	panic("%s", msg);
}

void trap(struct trapframe *tf)
{
	switch (tf->tf_trapno) {
	case IDT_TIMER:
		lapic_timer_intr();
		break;
	case IDT_COM1:
		cons_poll();
		lapic_write(LAPIC_EOI, 0);
		break;
	case T_NMI:
		nmi_handler(tf);
		break;
	case T_BPTFLT:
	case T_TRCTRAP:
		kdb_trap(tf->tf_trapno, tf);
		break;
	default:
		trap_fatal(tf);
	}
}

void panic(const char *fmt, ...)
{
	static char buf[128];
	va_list ap;

	disable_intr();
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("panic: %s\n", buf);
	hypercall(NIT_HC_PANIC, (uint32_t)buf, 0, 0);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void kmain(uint32_t magic, const struct multiboot_info *mbi);

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	cons_init();
	printf("nit/i386 test kernel (tsnmi)\n");
	if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
		panic("not booted by a multiboot loader (eax 0x%x)", magic);
	/* Only what QEMU and nitdbg agree on goes to the console; sizes go to hw.physmem. */
	if (mbi->flags & 0x1)
		physmem = (mbi->mem_upper + 1024) * 1024;
	gdt_init();
	idt_init();
	lapic_init();
	clock_calibrate();
	printf("lapic0: id %u, timer %d Hz, LINT1 NMI\n", lapic_read(LAPIC_ID) >> 24, hz);
	shell_main();
}
