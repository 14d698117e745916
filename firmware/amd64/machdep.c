/*
 * Machine set-up: page tables, per-CPU GDT and TSS, the IDT, then the BSP
 * starts the APs and the shell; APs go idle.
 */
#include "kern.h"

struct pcpu_stack pcpu_stacks[MAXCPU] __attribute__((aligned(4096)));

int mp_ncpus = 1;
volatile uint32_t started_cpus_mask;
extern volatile int ap_go;

/* ---- page tables ---------------------------------------------------- */

#define	PG_V	0x001
#define	PG_RW	0x002
#define	PG_U	0x004
#define	PG_NC_PWT 0x008
#define	PG_NC_PCD 0x010
#define	PG_PS	0x080

typedef uint64_t pt_entry_t;
static pt_entry_t kpml4[512] __attribute__((aligned(4096)));
static pt_entry_t kpdp_low[512] __attribute__((aligned(4096)));	/* VA 0..512 GiB */
static pt_entry_t kpd_low[4][512] __attribute__((aligned(4096)));	/* identity 4 GiB */
static pt_entry_t kpdp_high[512] __attribute__((aligned(4096)));	/* top 512 GiB */
static pt_entry_t kpd_kern[512] __attribute__((aligned(4096)));	/* KERNBASE + 1 GiB */
static pt_entry_t upt[512] __attribute__((aligned(4096)));		/* 0x400000-0x5fffff */
static uint8_t user_stack[USER_STACK_SIZE] __attribute__((aligned(4096)));
extern char user_image_start[], user_image_end[];

/*
 * Same kernel view as the loader's tables (identity 4 GiB, KERNBASE ->
 * phys 0), plus the user process: its text (the .user section, mapped
 * where it was linked to run, read-only) and its stack.
 */
static void pmap_bootstrap(void)
{
	uint64_t pa, va;
	int i, j;

	for (i = 0; i < 512; i++) {
		kpml4[i] = 0;
		kpdp_low[i] = 0;
		kpdp_high[i] = 0;
		kpd_kern[i] = ((uint64_t)i << 21) | PG_V | PG_RW | PG_PS;
		upt[i] = 0;
	}
	for (j = 0; j < 4; j++) {
		for (i = 0; i < 512; i++) {
			pa = ((uint64_t)(j * 512 + i)) << 21;
			kpd_low[j][i] = pa | PG_V | PG_RW | PG_PS;
		}
		kpdp_low[j] = KVTOP(kpd_low[j]) | PG_V | PG_RW | PG_U;
	}
	/* The LAPIC page is uncacheable. */
	kpd_low[3][0xfee00000UL >> 21 & 511] |= PG_NC_PCD | PG_NC_PWT;
	kpd_low[3][0xfec00000UL >> 21 & 511] |= PG_NC_PCD | PG_NC_PWT;	/* I/O APIC */
	kpml4[0] = KVTOP(kpdp_low) | PG_V | PG_RW | PG_U;
	kpml4[511] = KVTOP(kpdp_high) | PG_V | PG_RW;
	kpdp_high[510] = KVTOP(kpd_kern) | PG_V | PG_RW;

	/* User text (phys of .user) at USER_BASE, user stack below USER_STACK_TOP. */
	for (va = (uintptr_t)user_image_start; va < (uintptr_t)user_image_end; va += 4096)
		upt[(USER_BASE + va - (uintptr_t)user_image_start) >> 12 & 511] =
		    KVTOP(va) | PG_V | PG_U;
	for (i = 0; i < USER_STACK_SIZE / 4096; i++)
		upt[((USER_STACK_TOP - USER_STACK_SIZE) >> 12 & 511) + i] =
		    KVTOP(user_stack + i * 4096) | PG_V | PG_RW | PG_U;
	kpd_low[0][USER_BASE >> 21] = KVTOP(upt) | PG_V | PG_RW | PG_U;
}

/* ---- GDT, TSS, IDT --------------------------------------------------- */

struct amd64tss {
	uint32_t rsvd0;
	uint64_t rsp0, rsp1, rsp2;
	uint64_t rsvd1;
	uint64_t ist[7];
	uint64_t rsvd2;
	uint16_t rsvd3, iobase;
} __attribute__((packed));
_Static_assert(sizeof(struct amd64tss) == 104, "tss size");

#define	NGDT	11	/* 0x00..0x40, then the 16-byte TSS at 0x48 */
static uint64_t gdt[MAXCPU][NGDT] __attribute__((aligned(16)));
static struct amd64tss common_tss[MAXCPU] __attribute__((aligned(16)));

struct gate {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, rsvd;
};
static struct gate idt[256] __attribute__((aligned(16)));

struct region_descriptor {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

/* Code/data descriptor: access byte (P, DPL, S, type) and flags (G, D/B, L). */
static uint64_t segdesc(unsigned access, unsigned flags)
{
	return 0xffffULL | ((uint64_t)access << 40) | (0xfULL << 48) | ((uint64_t)flags << 52);
}

static void gdt_init(int cpu)
{
	uint64_t *g = gdt[cpu];
	uint64_t base = (uintptr_t)&common_tss[cpu];
	struct amd64tss *tss = &common_tss[cpu];
	struct pcpu_stack *st = &pcpu_stacks[cpu];
	int i;

	g[0] = g[1] = 0;
	g[GUCODE32_SEL >> 3] = segdesc(0xfb, 0xc);	/* 32-bit user code, DPL 3 */
	g[GUDATA_SEL >> 3] = segdesc(0xf3, 0xc);	/* user data, DPL 3 */
	g[GUCODE_SEL >> 3] = segdesc(0xfb, 0xa);	/* 64-bit user code: L=1 */
	g[GCODE_SEL >> 3] = segdesc(0x9b, 0xa);		/* 64-bit kernel code: L=1 */
	g[GDATA_SEL >> 3] = segdesc(0x93, 0xc);		/* kernel data */
	g[2] = segdesc(0xf3, 0xc);			/* GUFS32_SEL */
	g[3] = segdesc(0xf3, 0xc);			/* GUGS32_SEL */
	/* 64-bit available TSS (type 9), 16 bytes. */
	g[GPROC0_SEL >> 3] = (sizeof(*tss) - 1) | ((base & 0xffffff) << 16) |
	    (0x89ULL << 40) | ((base >> 24 & 0xff) << 56);
	g[(GPROC0_SEL >> 3) + 1] = base >> 32;

	tss->rsp0 = (uintptr_t)st->kstack + KSTACK_SIZE;
	for (i = 0; i < 4; i++)
		tss->ist[i] = (uintptr_t)st->ist[i] + IST_SIZE;
	tss->iobase = sizeof(*tss);	/* no I/O bitmap */
}

static void setidt(int vec, char *fn, int dpl, int ist)
{
	uintptr_t off = (uintptr_t)fn;

	idt[vec].off0 = off & 0xffff;
	idt[vec].sel = GCODE_SEL;
	idt[vec].ist = ist;
	idt[vec].type = 0x80 | dpl << 5 | 0xe;	/* present interrupt gate */
	idt[vec].off1 = off >> 16 & 0xffff;
	idt[vec].off2 = off >> 32;
	idt[vec].rsvd = 0;
}

static void idt_init(void)
{
	static char *const vec[32] = {
		Xdiv, Xdbg, Xnmi, Xbpt, Xofl, Xbnd, Xill, Xdna,
		Xdblfault, Xfpusegm, Xtss, Xmissing, Xstk, Xprot, Xpage, Xrsvd15,
		Xfpu, Xalign, Xmchk, Xxmm, Xrsvd20, Xcp, Xrsvd22, Xrsvd23,
		Xrsvd24, Xrsvd25, Xrsvd26, Xrsvd27, Xrsvd28, Xvc, Xsx, Xrsvd31,
	};
	int i;

	for (i = 0; i < 32; i++)
		setidt(i, vec[i], 0, 0);
	setidt(1, Xdbg, 0, IST_DBG);
	setidt(2, Xnmi, 0, IST_NMI);
	setidt(3, Xbpt, 3, 0);
	setidt(4, Xofl, 3, 0);
	setidt(8, Xdblfault, 0, IST_DBLFAULT);
	setidt(18, Xmchk, 0, IST_MCHK);
	setidt(IDT_SYSCALL, Xint0x80_syscall, 3, 0);
	setidt(IDT_TIMER, Xtimerint, 0, 0);
	setidt(IDT_ERROR, Xerrorint, 0, 0);
	setidt(IDT_SPURIOUS, Xspuriousint, 0, 0);
	setidt(IDT_COM1, Xcom1int, 0, 0);
}

/* Load this CPU's GDT, reload every segment register, TR and the IDT. */
static void cpu_load_tables(int cpu)
{
	struct region_descriptor gd = { sizeof(gdt[cpu]) - 1, (uintptr_t)gdt[cpu] };
	struct region_descriptor id = { sizeof(idt) - 1, (uintptr_t)idt };

	load_cr3(KVTOP(kpml4));
	__asm__ volatile(
	    "lgdt %0\n\t"
	    "pushq %1\n\t"
	    "leaq 1f(%%rip), %%rax\n\t"
	    "pushq %%rax\n\t"
	    "lretq\n"
	    "1:\tmovl %2, %%eax\n\t"
	    "movw %%ax, %%ds\n\t"
	    "movw %%ax, %%es\n\t"
	    "movw %%ax, %%ss\n\t"
	    "xorl %%eax, %%eax\n\t"
	    "movw %%ax, %%fs\n\t"
	    "movw %%ax, %%gs\n\t"
	    "movw %3, %%ax\n\t"
	    "ltr %%ax\n\t"
	    "lidt %4"
	    : : "m"(gd), "i"(GCODE_SEL), "i"(GDATA_SEL), "i"(GPROC0_SEL), "m"(id)
	    : "rax", "memory");
}

static __attribute__((noinline)) void smp_wait_started(uint32_t mask)
{
	while ((started_cpus_mask & mask) != mask)
		cpu_spinwait();
}

/* BSP entry from _start: (0, ncpus) on cpu 0's kernel stack. */
void hammer_time(int cpu, int ncpus) __attribute__((noreturn));
void hammer_time(int cpu, int ncpus)
{
	static struct trapframe proc0_tf;

	mp_ncpus = ncpus < 1 ? 1 : ncpus > MAXCPU ? MAXCPU : ncpus;
	pmap_bootstrap();
	idt_init();
	gdt_init(cpu);
	cpu_load_tables(cpu);
	lapic_init(cpu);
	printf("nitdbg amd64 firmware: %d CPUs\n", mp_ncpus);
	__atomic_fetch_or(&started_cpus_mask, 1u << cpu, __ATOMIC_SEQ_CST);

	/* Shared state is ready: release the APs and wait for them. */
	ap_go = 1;
	smp_wait_started((1u << mp_ncpus) - 1);
	clock_calibrate();	/* with the APs idle: nothing spins while the BSP halts */
	uart_intr_init();

	/* Start the shell by "returning" to it; its traps then use RSP0. */
	exec_shell(&proc0_tf);
	enter_user(&proc0_tf);
}

/* AP entry from _start: (cpu, ncpus) on the AP's own kernel stack. */
void init_secondary(int cpu) __attribute__((noreturn));
void init_secondary(int cpu)
{
	gdt_init(cpu);
	cpu_load_tables(cpu);
	lapic_init(cpu);
	__atomic_fetch_or(&started_cpus_mask, 1u << cpu, __ATOMIC_SEQ_CST);
	for (;;) {
		disable_intr();
		cpu_idle();
	}
}
