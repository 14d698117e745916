/*
 * rtc_nmi: the RTC's periodic interrupt routed through I/O APIC pin 8 with delivery
 * mode NMI. The BSP halts with IF=0: an NMI is not masked by IF, so each one wakes the
 * HLT, the NMI handler runs and returns to the instruction after HLT (SDM 6.7, 6.8.1).
 * Under bhyve's vlapic (sysctl hw.vmm.vioapic.bhyve_delmodes=1) the NMI is dropped and
 * the HLT never wakes.
 */
#include "lib.h"

#define RTC_PIN		8

static volatile u32 nmis;

static void nmi(u32 vector)
{
	(void)vector;
	(void)cmos_read(0x0c);		/* acknowledge the RTC: IRQ 8 goes low */
	nmis++;
}

int kmain(void);
int kmain(void)
{
	u32 i, wakes = 0;

	idt_init();
	pic_mask(0xff, 0xff);			/* the 8259s (the BIOS may have left IRQ 8 open) */
	lapic_enable();
	set_handler(2, nmi);
	ioapic_route(RTC_PIN, RTE_DM_NMI, 0);
	cmos_write(0x0a, 0x26);
	cmos_write(0x0b, cmos_read(0x0b) | 0x40);
	(void)cmos_read(0x0c);
	puts("rtc_nmi: halting with IF=0\n");
	/* Each HLT waits for the next NMI (one may also arrive before the first HLT, so
	 * the number of NMIs is not printed; that each HLT ended with a new NMI is). */
	for (i = 0; i < 3; i++) {
		u32 before = nmis;

		hlt();			/* IF is 0 throughout */
		if (nmis != before)
			wakes++;
	}
	cmos_write(0x0b, cmos_read(0x0b) & ~0x40);
	(void)cmos_read(0x0c);
	puts("rtc_nmi: ");
	putdec(wakes);
	puts(" of 3 HLTs with IF=0 ended by an NMI\n");
	return wakes == 3 ? PASS : FAIL;
}
