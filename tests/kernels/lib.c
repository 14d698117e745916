#include "lib.h"

void puts(const char *s)
{
	while (*s)
		outb(0xe9, (u8)*s++);
}

void putdec(u32 v)
{
	char buf[11];
	int i = 10;

	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

void puthex(u32 v)
{
	static const char hex[] = "0123456789abcdef";
	char buf[11];
	int i;

	buf[0] = '0';
	buf[1] = 'x';
	for (i = 0; i < 8; i++)
		buf[2 + i] = hex[(v >> (28 - 4 * i)) & 0xf];
	buf[10] = 0;
	puts(buf);
}

/* The IDT: 256 interrupt gates (type 0xe, DPL 0) to the stubs in start.S. */
struct gate {
	u16 off_lo, sel;
	u8 zero, type;
	u16 off_hi;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(8)));
static handler_t handlers[256];
extern char isr_stubs[];

static void unexpected(u32 vector)
{
	puts("unexpected vector ");
	putdec(vector);
	puts("\n");
	outb(0x501, 0x7e);
	outb(0xf4, 0x7e);
}

void set_handler(u32 vector, handler_t h)
{
	handlers[vector & 0xff] = h;
}

void isr_dispatch(u32 vector);
void isr_dispatch(u32 vector)
{
	handler_t h = handlers[vector & 0xff];

	(h ? h : unexpected)(vector);
}

void idt_init(void)
{
	struct { u16 limit; u32 base; } __attribute__((packed)) desc;
	int i;

	for (i = 0; i < 256; i++) {
		u32 a = (u32)isr_stubs + 8 * i;
		idt[i].off_lo = a & 0xffff;
		idt[i].sel = 0x08;
		idt[i].zero = 0;
		idt[i].type = 0x8e;
		idt[i].off_hi = a >> 16;
	}
	desc.limit = sizeof(idt) - 1;
	desc.base = (u32)idt;
	__asm__ volatile("lidt %0" :: "m"(desc));
}

void lapic_enable(void)
{
	lapic_write(LAPIC_SVR, 0x100 | 0xff);	/* software enable, spurious vector 0xff */
}

u32 ioapic_read(u32 reg)
{
	mmio_write(IOAPIC + IOREGSEL, reg);
	return mmio_read(IOAPIC + IOWIN);
}

void ioapic_write(u32 reg, u32 v)
{
	mmio_write(IOAPIC + IOREGSEL, reg);
	mmio_write(IOAPIC + IOWIN, v);
}

void ioapic_route(u32 pin, u32 low, u32 dest_apic_id)
{
	ioapic_write(0x10 + 2 * pin, RTE_MASKED);
	ioapic_write(0x11 + 2 * pin, dest_apic_id << 24);
	ioapic_write(0x10 + 2 * pin, low);
}

u8 cmos_read(u8 reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

void cmos_write(u8 reg, u8 v)
{
	outb(0x70, reg);
	outb(0x71, v);
}

/* 8259A initialisation: ICW1 (edge, cascade, ICW4 needed), ICW2 (vector base), ICW3
 * (master: slave on IR2; slave: its cascade identity 2), ICW4 (8086 mode). */
void pic_init(u8 master_base, u8 slave_base)
{
	outb(0x20, 0x11);
	outb(0xa0, 0x11);
	outb(0x21, master_base);
	outb(0xa1, slave_base);
	outb(0x21, 0x04);
	outb(0xa1, 0x02);
	outb(0x21, 0x01);
	outb(0xa1, 0x01);
}

void pic_mask(u8 master, u8 slave)
{
	outb(0x21, master);
	outb(0xa1, slave);
}

/* An AP started by a kernel that does not expect any just halts (start.S). */
void ap_main(u32 index) __attribute__((weak));
void ap_main(u32 index)
{
	(void)index;
}
