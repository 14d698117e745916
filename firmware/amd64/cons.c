/*
 * COM1 console (16550) and a canonical-mode tty: the receiver interrupt
 * (ISA IRQ 4 through the I/O APIC) drains the receiver, echoes, edits the
 * line and queues complete lines for read(2).  Ctrl-C flushes the line and
 * posts SIGINT.
 */
#include "kern.h"

#define	COM1		0x3f8
#define	COM_IER		1
#define	COM_LSR		5
#define	IER_ERXRDY	0x01
#define	COM1_IRQ	4
#define	LSR_RXRDY	0x01
#define	LSR_TXRDY	0x20

static void uart_putc(int c)
{
	while ((inb(COM1 + COM_LSR) & LSR_TXRDY) == 0)
		cpu_spinwait();
	outb(COM1, (uint8_t)c);
}

/* ONLCR, as a FreeBSD tty does for the console. */
void cons_putc(int c)
{
	if (c == '\n')
		uart_putc('\r');
	uart_putc(c);
}

void cons_write(const char *s, size_t len)
{
	while (len-- > 0)
		cons_putc(*s++);
}

/* ---- printf: %d %u %x %s %c %p with l, 0 and width ------------------ */

static void printnum(uint64_t v, int base, int width, int zero, int neg)
{
	char buf[24];
	int i = 0;

	do {
		buf[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v != 0);
	if (neg)
		buf[i++] = '-';
	while (width-- > i)
		cons_putc(zero ? '0' : ' ');
	while (i > 0)
		cons_putc(buf[--i]);
}

void printf(const char *fmt, ...)
{
	__builtin_va_list ap;
	int width, zero, lng;
	int64_t sv;
	uint64_t uv;
	const char *s;

	__builtin_va_start(ap, fmt);
	for (; *fmt != '\0'; fmt++) {
		if (*fmt != '%') {
			cons_putc(*fmt);
			continue;
		}
		fmt++;
		zero = *fmt == '0';
		for (width = 0; *fmt >= '0' && *fmt <= '9'; fmt++)
			width = width * 10 + (*fmt - '0');
		lng = 0;
		while (*fmt == 'l') {
			lng = 1;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
			sv = lng ? __builtin_va_arg(ap, int64_t) : __builtin_va_arg(ap, int);
			printnum(sv < 0 ? -(uint64_t)sv : (uint64_t)sv, 10, width, zero, sv < 0);
			break;
		case 'u':
		case 'x':
			uv = lng ? __builtin_va_arg(ap, uint64_t) : __builtin_va_arg(ap, u_int);
			printnum(uv, *fmt == 'u' ? 10 : 16, width, zero, 0);
			break;
		case 'p':
			cons_putc('0');
			cons_putc('x');
			printnum((uintptr_t)__builtin_va_arg(ap, void *), 16, width, zero, 0);
			break;
		case 's':
			s = __builtin_va_arg(ap, const char *);
			cons_write(s, strlen(s));
			break;
		case 'c':
			cons_putc(__builtin_va_arg(ap, int));
			break;
		default:
			cons_putc(*fmt);
			break;
		}
	}
	__builtin_va_end(ap);
}

/* ---- tty ------------------------------------------------------------ */

#define	TTY_LINE	128
#define	TTY_CANQ	512

static char tty_line[TTY_LINE];		/* the line being edited */
static int tty_linelen;
static char tty_canq[TTY_CANQ];		/* complete lines, ring */
static int tty_canq_head, tty_canq_len, tty_canq_lines;
static int tty_last_cr;
volatile int tty_sigint;

static void tty_input(int c)
{
	int i;

	if (c == '\n' && tty_last_cr) {		/* CR LF from a terminal: one line */
		tty_last_cr = 0;
		return;
	}
	tty_last_cr = c == '\r';
	if (c == 0x03) {			/* VINTR */
		cons_write("^C", 2);
		tty_linelen = 0;
		tty_sigint = 1;
		return;
	}
	if (c == 0x7f || c == 0x08) {		/* VERASE */
		if (tty_linelen > 0) {
			tty_linelen--;
			cons_write("\b \b", 3);
		}
		return;
	}
	if (c == '\r' || c == '\n') {		/* ICRNL, end of line */
		cons_putc('\n');
		if (tty_canq_len + tty_linelen + 1 > TTY_CANQ) {
			tty_linelen = 0;
			return;
		}
		tty_line[tty_linelen++] = '\n';
		for (i = 0; i < tty_linelen; i++)
			tty_canq[(tty_canq_head + tty_canq_len++) % TTY_CANQ] = tty_line[i];
		tty_canq_lines++;
		tty_linelen = 0;
		return;
	}
	if (c < 0x20 || c > 0x7e || tty_linelen >= TTY_LINE - 1)
		return;
	tty_line[tty_linelen++] = (char)c;
	cons_putc(c);
}

/*
 * The receiver interrupt: drain everything received, so the interrupt line
 * drops and the next byte raises a new edge (the pin is edge triggered).
 */
void tty_intr(void)
{
	while ((inb(COM1 + COM_LSR) & LSR_RXRDY) != 0)
		tty_input(inb(COM1));
}

/* Receive interrupts on: an idle CPU wakes for input, not at a clock tick. */
void uart_intr_init(void)
{
	ioapic_route_isa(COM1_IRQ, IDT_COM1);
	outb(COM1 + COM_IER, IER_ERXRDY);
}

/* Take one complete line (or as much of it as fits); 0 if none is queued. */
int tty_read(char *buf, size_t len)
{
	size_t n = 0;
	char c;

	if (tty_canq_lines == 0)
		return 0;
	while (tty_canq_len > 0 && n < len) {
		c = tty_canq[tty_canq_head];
		tty_canq_head = (tty_canq_head + 1) % TTY_CANQ;
		tty_canq_len--;
		buf[n++] = c;
		if (c == '\n') {
			tty_canq_lines--;
			break;
		}
	}
	return (int)n;
}
