/*
 * pit_pic: the 8254's channel 0 (mode 2, rate generator, count 1193: about 1 kHz) on
 * ISA IRQ 0, first through the 8259 master (ICW1..ICW4, vector base 0x20, only IRQ 0
 * unmasked in OCW1, non-specific EOI in OCW2, ISR read back with OCW3) and the local
 * APIC's LINT0 in ExtINT mode (virtual wire), then through I/O APIC pin 2 (where the PC
 * wires IRQ 0) as a fixed interrupt, with the 8259 masked.
 */
#include "lib.h"

#define VEC_PIC_BASE	0x20
#define VEC_IOAPIC	0x50

static volatile u32 ticks;
static volatile u8 isr_seen;

static void pic_tick(u32 vector)
{
	(void)vector;
	outb(0x20, 0x0b);		/* OCW3: read ISR */
	isr_seen = inb(0x20);
	ticks++;
	outb(0x20, 0x20);		/* OCW2: non-specific EOI */
}

static void ioapic_tick(u32 vector)
{
	(void)vector;
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
	u32 got;
	u16 c1, c2;

	idt_init();
	lapic_enable();
	set_handler(VEC_PIC_BASE + 0, pic_tick);
	set_handler(VEC_PIC_BASE + 7, pic_tick);	/* IR7: spurious */
	set_handler(VEC_IOAPIC, ioapic_tick);
	pic_init(VEC_PIC_BASE, VEC_PIC_BASE + 8);
	pic_mask(0xfe, 0xff);
	lapic_write(LAPIC_LINT0, 0x700);		/* ExtINT, unmasked */

	outb(0x43, 0x34);				/* channel 0, LSB then MSB, mode 2 */
	outb(0x40, 1193 & 0xff);
	outb(0x40, 1193 >> 8);
	/* Counter latch command: latched reads until the count has moved (a bounded
	 * number of times), so the result does not depend on how fast the CPU is. */
	outb(0x43, 0x00);
	c1 = inb(0x40);
	c1 |= (u16)inb(0x40) << 8;
	c2 = c1;
	for (got = 0; got < 100000 && c2 == c1; got++) {
		outb(0x43, 0x00);
		c2 = inb(0x40);
		c2 |= (u16)inb(0x40) << 8;
	}
	puts("pit_pic: counter ");
	puts(c1 <= 1193 && c2 <= 1193 && c2 != c1 ? "runs" : "stuck");
	puts(" below the initial count\n");

	got = run(5);
	puts("pit_pic: 8259: ");
	putdec(got);
	puts(" ticks on vector 0x20, ISR in the handler ");
	puthex(isr_seen);
	puts("\n");

	pic_mask(0xff, 0xff);
	lapic_write(LAPIC_LINT0, 0x10000);
	ioapic_route(2, RTE_DM_FIXED | VEC_IOAPIC, 0);
	got = run(5);
	puts("pit_pic: ioapic pin 2: ");
	putdec(got);
	puts(" ticks on vector 0x50\n");
	ioapic_route(2, RTE_MASKED, 0);
	return ticks == 10 && isr_seen == 1 ? PASS : FAIL;
}
