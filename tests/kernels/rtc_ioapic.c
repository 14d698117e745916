/*
 * rtc_ioapic: the MC146818's periodic interrupt (register A rate 6 = 1024 Hz, register
 * B PIE) on ISA IRQ 8, routed through I/O APIC pin 8 to the BSP as a fixed interrupt:
 * first edge-triggered, then level-triggered (remote IRR is set while the interrupt is
 * in service and cleared by the local APIC's EOI, 82093AA datasheet, SDM 11.8.5).
 * Each handler reads register C, which acknowledges the RTC (read-to-clear).
 */
#include "lib.h"

#define VEC_RTC		0x48
#define RTC_PIN		8

static volatile u32 ticks, irr_in_handler, c_flags;

static void rtc_intr(u32 vector)
{
	(void)vector;
	irr_in_handler = ioapic_read(0x10 + 2 * RTC_PIN) & RTE_REMOTE_IRR;
	c_flags = cmos_read(0x0c);
	ticks++;
	lapic_eoi();
}

static u32 run(u32 n)
{
	u32 start = ticks;

	sti();
	while (ticks - start < n)
		hlt();
	cli();
	return ticks - start;
}

int kmain(void);
int kmain(void)
{
	u32 got, rte;

	idt_init();
	pic_mask(0xff, 0xff);			/* the 8259s (the BIOS may have left IRQ 8 open) */
	lapic_enable();
	set_handler(VEC_RTC, rtc_intr);
	ioapic_route(RTC_PIN, RTE_DM_FIXED | VEC_RTC, 0);
	cmos_write(0x0a, 0x26);				/* 32.768 kHz base, 1024 Hz */
	cmos_write(0x0b, cmos_read(0x0b) | 0x40);	/* PIE */
	(void)cmos_read(0x0c);
	got = run(8);
	puts("rtc_ioapic: edge: ");
	putdec(got);
	puts(" periodic interrupts on vector 0x48, register C IRQF|PF ");
	puthex(c_flags & 0xc0);		/* UF/AF depend on the wall clock under QEMU */
	puts("\n");

	ioapic_route(RTC_PIN, RTE_DM_FIXED | RTE_LEVEL | VEC_RTC, 0);
	got = run(4);
	rte = ioapic_read(0x10 + 2 * RTC_PIN);
	puts("rtc_ioapic: level: ");
	putdec(got);
	puts(" interrupts, remote IRR in the handler ");
	putdec(irr_in_handler ? 1 : 0);
	puts(", after EOI ");
	putdec(rte & RTE_REMOTE_IRR ? 1 : 0);
	puts("\n");

	/* Masked: the RTC keeps interrupting, nothing arrives. */
	ioapic_route(RTC_PIN, RTE_MASKED | VEC_RTC, 0);
	got = ticks;
	sti();
	{
		volatile u32 i;
		for (i = 0; i < 200000; i++)
			;
	}
	cli();
	puts("rtc_ioapic: masked: ");
	putdec(ticks - got);
	puts(" interrupts\n");
	cmos_write(0x0b, cmos_read(0x0b) & ~0x40);
	return ticks == 12 ? PASS : FAIL;
}
