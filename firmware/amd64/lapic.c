/*
 * Local APIC: x2APIC MSRs when CPUID reports x2APIC, else the xAPIC page at
 * 0xfee00000 (QEMU TCG may lack x2APIC).  Register offsets are the xAPIC
 * MMIO offsets; the x2APIC MSR is 0x800 + (offset >> 4) (SDM 10.12.1.2).
 */
#include "kern.h"

#define	MSR_APICBASE	0x1b
#define	APICBASE_X2APIC	(1UL << 10)
#define	APICBASE_ENABLED (1UL << 11)
#define	CPUID2_X2APIC	(1u << 21)

#define	LAPIC_ID	0x020
#define	LAPIC_EOI	0x0b0
#define	LAPIC_SVR	0x0f0
#define	LAPIC_ESR	0x280
#define	LAPIC_ICR_LO	0x300
#define	LAPIC_ICR_HI	0x310
#define	LAPIC_LVT_TIMER	0x320
#define	LAPIC_LVT_LINT0	0x350
#define	LAPIC_LVT_LINT1	0x360
#define	LAPIC_LVT_ERROR	0x370
#define	LAPIC_ICR_TIMER	0x380
#define	LAPIC_DCR_TIMER	0x3e0

#define	APIC_SVR_ENABLE	0x100
#define	APIC_LVT_MASKED	0x10000
#define	APIC_LVT_DM_NMI	0x400
#define	APIC_LVTT_PERIODIC 0x20000
#define	APIC_DCR_16	0x3
#define	APIC_ICR_DM_NMI	0x400
#define	APIC_ICR_LEVEL_ASSERT 0x4000
#define	APIC_ICR_DELIVERY_PENDING 0x1000
#define	APIC_DEST_ALLBUT 0xc0000

int x2apic_mode;
static int timer_oneshot[MAXCPU];	/* the LVT is in one-shot mode */
static volatile uint32_t *const lapic_xapic = (volatile uint32_t *)0xfee00000UL;

static uint32_t lapic_read(unsigned reg)
{
	if (x2apic_mode)
		return (uint32_t)rdmsr(0x800 + (reg >> 4));
	return lapic_xapic[reg / 4];
}

static void lapic_write(unsigned reg, uint32_t v)
{
	if (x2apic_mode)
		wrmsr(0x800 + (reg >> 4), v);
	else
		lapic_xapic[reg / 4] = v;
}

uint32_t lapic_id(void)
{
	uint32_t id = lapic_read(LAPIC_ID);

	return x2apic_mode ? id : id >> 24;
}

void lapic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

/* The "stop" IPI of kdb: NMI to all CPUs but this one. */
void lapic_ipi_nmi_allbutself(void)
{
	uint32_t icr = APIC_DEST_ALLBUT | APIC_ICR_LEVEL_ASSERT | APIC_ICR_DM_NMI;

	if (x2apic_mode) {
		wrmsr(0x800 + (LAPIC_ICR_LO >> 4), icr);
		return;
	}
	while (lapic_read(LAPIC_ICR_LO) & APIC_ICR_DELIVERY_PENDING)
		cpu_spinwait();
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, icr);
}

void lapic_init(int cpu)
{
	uint32_t r[4];
	uint64_t base;

	if (cpu == 0) {
		cpuid(1, r);
		x2apic_mode = (r[2] & CPUID2_X2APIC) != 0;
	}
	base = rdmsr(MSR_APICBASE) | APICBASE_ENABLED;
	if (x2apic_mode)
		base |= APICBASE_X2APIC;
	wrmsr(MSR_APICBASE, base);

	lapic_write(LAPIC_SVR, APIC_SVR_ENABLE | IDT_SPURIOUS);
	lapic_write(LAPIC_LVT_LINT0, APIC_LVT_MASKED);	/* no 8259 ExtINT */
	lapic_write(LAPIC_LVT_LINT1, APIC_LVT_DM_NMI);	/* LINT1 = NMI, unmasked */
	lapic_write(LAPIC_LVT_ERROR, IDT_ERROR);
	lapic_write(LAPIC_DCR_TIMER, APIC_DCR_16);
	lapic_timer_periodic(LAPIC_TIMER_COUNT);
}

/* The timer ticks every `count` bus clocks / 16 (writing the count restarts it). */
void lapic_timer_periodic(uint32_t count)
{
	lapic_write(LAPIC_LVT_TIMER, APIC_LVTT_PERIODIC | IDT_TIMER);
	timer_oneshot[curcpu()] = 0;
	lapic_write(LAPIC_ICR_TIMER, count);
}

/* One interrupt after `count` bus clocks / 16 (SDM 11.5.4: one-shot mode). */
void lapic_timer_oneshot(uint32_t count)
{
	int cpu = curcpu();

	if (!timer_oneshot[cpu]) {
		lapic_write(LAPIC_LVT_TIMER, IDT_TIMER);
		timer_oneshot[cpu] = 1;
	}
	lapic_write(LAPIC_ICR_TIMER, count);
}
