/*
 * nit i386 test kernel: COM1 console (16550, receive interrupt on ISA IRQ 4
 * through the I/O APIC) and printf.
 * Output also goes to the debug console port 0xE9 (QEMU -debugcon, nitdbg).
 */
#include "kernel.h"

#define COM1		0x3f8
#define COM_DATA	0
#define COM_IER		1
#define COM_FCR		2
#define COM_LCR		3
#define COM_MCR		4
#define COM_LSR		5
#define LSR_RXRDY	0x01
#define LSR_TXRDY	0x20
#define DEBUGCON	0xe9

/* Receive ring, filled by the receive interrupt (cons_poll), drained by the shell. */
static volatile uint8_t rxbuf[256];
static volatile uint8_t rxhead, rxtail;

/* I/O APIC (paging is off: at its physical address): ISA IRQ -> vector on APIC 0. */
#define IOAPIC_BASE	0xfec00000u
static void ioapic_route_isa(int irq, int vector)
{
	volatile uint32_t *ioapic = (volatile uint32_t *)IOAPIC_BASE;
	int pin = irq == 0 ? 2 : irq;

	ioapic[0] = 0x11 + 2 * pin;		/* redirection entry, high: dest APIC ID 0 */
	ioapic[4] = 0;
	ioapic[0] = 0x10 + 2 * pin;		/* low: fixed, physical, edge, high, unmasked */
	ioapic[4] = (uint32_t)vector;
}

void cons_init(void)
{
	outb(COM1 + COM_IER, 0);		/* no UART interrupts while it is set up */
	outb(COM1 + COM_LCR, 0x80);		/* DLAB: divisor 1 = 115200 baud */
	outb(COM1 + COM_DATA, 1);
	outb(COM1 + COM_IER, 0);
	outb(COM1 + COM_LCR, 0x03);		/* 8N1 */
	outb(COM1 + COM_FCR, 0x07);		/* FIFOs on and cleared */
	outb(COM1 + COM_MCR, 0x0b);		/* DTR, RTS, OUT2 (the PC's IRQ enable) */
	ioapic_route_isa(4, IDT_COM1);
	outb(COM1 + COM_IER, 0x01);		/* received data available */
}

void cons_putc(int c)
{
	if (c == '\n')
		cons_putc('\r');
	while ((inb(COM1 + COM_LSR) & LSR_TXRDY) == 0)
		;
	outb(COM1 + COM_DATA, c);
	outb(DEBUGCON, c);
}

/* The receive interrupt: drain the receiver, so the line drops for the next edge. */
void cons_poll(void)
{
	while (inb(COM1 + COM_LSR) & LSR_RXRDY) {
		uint8_t c = inb(COM1 + COM_DATA);
		if ((uint8_t)(rxhead + 1) != rxtail) {
			rxbuf[rxhead] = c;
			rxhead++;
		}
	}
}

int cons_getc(void)
{
	int c;

	if (rxtail == rxhead)
		return -1;
	c = rxbuf[rxtail];
	rxtail++;
	return c;
}

/* A small vsnprintf: %s %c %d %u %x %p, '0' flag and a field width. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	size_t n = 0;
	char tmp[12];

#define PUT(ch) do { if (n + 1 < size) buf[n] = (ch); n++; } while (0)
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			PUT(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		const char *s = tmp;
		int len = 0;
		switch (*fmt) {
		case 's':
			s = va_arg(ap, const char *);
			len = strlen(s);
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			len = 1;
			break;
		case 'd':
		case 'u':
		case 'x':
		case 'p': {
			uint32_t v = va_arg(ap, uint32_t);
			uint32_t base = (*fmt == 'x' || *fmt == 'p') ? 16 : 10;
			int neg = *fmt == 'd' && (int32_t)v < 0;
			char *p = tmp + sizeof(tmp);
			if (neg)
				v = -v;
			do {
				*--p = "0123456789abcdef"[v % base];
				v /= base;
			} while (v);
			if (neg)
				*--p = '-';
			s = p;
			len = tmp + sizeof(tmp) - p;
			break;
		}
		case '%':
			tmp[0] = '%';
			len = 1;
			break;
		default:
			PUT('%');
			if (*fmt == '\0')
				fmt--;
			else
				PUT(*fmt);
			continue;
		}
		for (; width > len; width--)
			PUT(pad);
		while (len-- > 0)
			PUT(*s++);
	}
#undef PUT
	if (size)
		buf[n < size ? n : size - 1] = '\0';
	return n;
}

int printf(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	for (const char *p = buf; *p; p++)
		cons_putc(*p);
	return n;
}
