/*
 * sh: the one user process (ring 3).  Built position-independent and run at
 * USER_BASE, from the kernel image's .user section; it may not use static
 * writable data (there is none to map) nor call into the kernel's code,
 * which the Makefile checks.
 */
#include "param.h"

typedef unsigned long size_t;
typedef long ssize_t;

#define	SYS_exit		1
#define	SYS_read		3
#define	SYS_write		4
#define	SYS_sigaction		416
#define	SYS___sysctlbyname	570
#define	CTLTYPE_INT		2
#define	CTLTYPE_STRING		3
#define	EPERM			1
#define	ENOENT			2

static long syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6,
    long *rdx_out)
{
	register long r10 __asm__("r10") = a4;
	register long r8 __asm__("r8") = a5;
	register long r9 __asm__("r9") = a6;
	long rdx = a3;

	__asm__ volatile("int $0x80"
	    : "+a"(n), "+d"(rdx)
	    : "D"(a1), "S"(a2), "r"(r10), "r"(r8), "r"(r9)
	    : "memory");
	if (rdx_out != 0)
		*rdx_out = rdx;
	return n;
}

static size_t slen(const char *s)
{
	size_t n = 0;

	while (s[n] != '\0')
		n++;
	return n;
}

static int seq(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static void puts_(const char *s)
{
	syscall6(SYS_write, 1, (long)s, (long)slen(s), 0, 0, 0, 0);
}

static void putint(long v)
{
	char buf[24];
	int i = sizeof(buf) - 1;
	unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;

	buf[i] = '\0';
	do {
		buf[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		buf[--i] = '-';
	puts_(&buf[i]);
}

static int parse_int(const char *s, int *out)
{
	long v = 0;
	int neg = 0;

	if (*s == '-') {
		neg = 1;
		s++;
	}
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9' || v > 0x7fffffff)
			return 0;
		v = v * 10 + (*s - '0');
	}
	*out = (int)(neg ? -v : v);
	return 1;
}

static long sysctlbyname(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, long *kind)
{
	return syscall6(SYS___sysctlbyname, (long)name, (long)slen(name), (long)old,
	    (long)oldlen, (long)new, (long)newlen, kind);
}

static void print_value(long kind, const char *buf)
{
	if (kind == CTLTYPE_INT)
		putint(*(const int *)buf);
	else
		puts_(buf);
}

static void oid_error(const char *name, long error)
{
	if (error == -ENOENT)
		puts_("sysctl: unknown oid '");
	else if (error == -EPERM)
		puts_("sysctl: oid '");
	else
		puts_("sysctl: error on oid '");
	puts_(name);
	puts_(error == -EPERM ? "' is read only\n" : "'\n");
}

/* sysctl NAME  |  sysctl NAME=VALUE, printed as FreeBSD's sysctl(8) does. */
static void cmd_sysctl(char *arg)
{
	char old[64];
	size_t oldlen = sizeof(old);
	char *value = 0;
	long kind, error;
	int newval;

	for (char *p = arg; *p != '\0'; p++)
		if (*p == '=') {
			*p = '\0';
			value = p + 1;
			break;
		}
	if (*arg == '\0') {
		puts_("usage: sysctl name[=value]\n");
		return;
	}
	error = sysctlbyname(arg, old, &oldlen, 0, 0, &kind);
	if (error != 0) {
		oid_error(arg, error);
		return;
	}
	if (value == 0) {
		puts_(arg);
		puts_(": ");
		print_value(kind, old);
		puts_("\n");
		return;
	}
	if (kind != CTLTYPE_INT) {
		oid_error(arg, -EPERM);
		return;
	}
	if (!parse_int(value, &newval)) {
		puts_("sysctl: invalid integer '");
		puts_(value);
		puts_("'\n");
		return;
	}
	error = sysctlbyname(arg, 0, 0, &newval, sizeof(newval), &kind);
	if (error != 0) {
		oid_error(arg, error);
		return;
	}
	puts_(arg);
	puts_(": ");
	print_value(kind, old);
	puts_(" -> ");
	putint(newval);
	puts_("\n");
}

/* `while [ 1 ]; do : done`: spins in user mode until a signal ends it. */
static void cmd_while(void)
{
	volatile long iterations = 0;

	for (;;)
		iterations++;
}

/* Collapse runs of blanks and drop the newline, in place. */
static void normalize(char *s)
{
	char *start = s, *d = s;
	int blank = 1;

	for (; *s != '\0' && *s != '\n'; s++) {
		if (*s == ' ' || *s == '\t') {
			if (!blank)
				*d++ = ' ';
			blank = 1;
			continue;
		}
		*d++ = *s;
		blank = 0;
	}
	if (d != start && d[-1] == ' ')
		d--;
	*d = '\0';
}

static int is_while_loop(const char *s)
{
	return seq(s, "while [ 1 ]; do : done") || seq(s, "while [ 1 ]; do :; done") ||
	    seq(s, "while true; do : done") || seq(s, "while true; do :; done") ||
	    seq(s, "while :; do :; done");
}

static void run(char *line)
{
	normalize(line);
	if (*line == '\0')
		return;
	if (seq(line, "help")) {
		puts_("commands:\n"
		    "  sysctl NAME          show a variable\n"
		    "  sysctl NAME=VALUE    set a variable\n"
		    "  while [ 1 ]; do : done\n"
		    "                       spin in user mode (Ctrl-C stops it)\n"
		    "  exit                 start a new shell\n"
		    "  help                 this list\n"
		    "variables: machdep.kdb_on_nmi kern.ticks kern.hz kern.eventtimer.idletick\n"
		    "           hw.ncpu kern.ostype\n");
		return;
	}
	if (seq(line, "exit")) {
		syscall6(SYS_exit, 0, 0, 0, 0, 0, 0, 0);
		return;
	}
	if (line[0] == 's' && line[1] == 'y' && line[2] == 's' && line[3] == 'c' &&
	    line[4] == 't' && line[5] == 'l' && (line[6] == ' ' || line[6] == '\0')) {
		cmd_sysctl(line + (line[6] == ' ' ? 7 : 6));
		return;
	}
	if (is_while_loop(line)) {
		cmd_while();
		return;
	}
	for (char *p = line; *p != '\0'; p++)
		if (*p == ' ') {
			*p = '\0';
			break;
		}
	puts_(line);
	puts_(": not found\n");
}

static void __attribute__((noreturn)) sh_loop(void)
{
	char line[160];
	long n;

	for (;;) {
		puts_("# ");
		n = syscall6(SYS_read, 0, (long)line, sizeof(line) - 1, 0, 0, 0, 0);
		if (n <= 0)
			continue;
		line[n] = '\0';
		run(line);
	}
}

/* SIGINT: the kernel starts us here on a fresh stack; back to the prompt. */
static void __attribute__((noreturn)) sigint_handler(void)
{
	puts_("\n");
	sh_loop();
}

void __attribute__((noreturn, section(".text.user_start"))) user_start(void)
{
	syscall6(SYS_sigaction, 2, (long)&sigint_handler, 0, 0, 0, 0, 0);
	sh_loop();
}
