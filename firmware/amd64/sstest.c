/*
 * debug.sstest: a guest program that single-steps itself.  Writing N to
 * debug.sstest runs a loop of N iterations (decl; jnz) with RFLAGS.TF set and
 * counts the trace traps it takes (debug.sstest_traps), through its own #DB
 * handler installed in the IDT for the duration (the gate keeps its selector,
 * IST and type).  POPF setting TF is not trapped, every later instruction is,
 * the POPF clearing TF included (TF was 1 at its start): 2N + 3 on hardware
 * (SDM vol 3 17.3.1.4).  Linked last, so nothing else in the image moves.
 */
#include "kern.h"

int sstest_steps, sstest_traps;

/* The #DB handler: count and return (no error code for vector 1). */
__asm__(".text\n"
    ".globl sstest_db\n"
    "sstest_db:\n\t"
    "lock incl sstest_traps(%rip)\n\t"
    "iretq\n");
extern char sstest_db[];

struct sstest_idtr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

static __attribute__((noinline)) void sstest_run(int n)
{
	struct sstest_idtr r;
	uint8_t *gate, saved[16];
	uint64_t off = (uintptr_t)sstest_db;

	if (n <= 0)
		return;
	__asm__ volatile("sidt %0" : "=m"(r));
	gate = (uint8_t *)(uintptr_t)r.base + 16 * 1;
	memcpy(saved, gate, sizeof(saved));
	gate[0] = off & 0xff;
	gate[1] = off >> 8 & 0xff;
	gate[6] = off >> 16 & 0xff;
	gate[7] = off >> 24 & 0xff;
	gate[8] = off >> 32 & 0xff;
	gate[9] = off >> 40 & 0xff;
	gate[10] = off >> 48 & 0xff;
	gate[11] = off >> 56 & 0xff;
	sstest_traps = 0;
	__asm__ volatile(
	    "pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n"
	    ".globl sstest_loop\nsstest_loop:\n\t"
	    "decl %0\n\tjnz sstest_loop\n\t"
	    "pushfq\n\tandq $~0x100, (%%rsp)\n\tpopfq\n"
	    ".globl sstest_done\nsstest_done:\n"
	    : "+r"(n) : : "memory", "cc");
	memcpy(gate, saved, sizeof(saved));
}

/*
 * The two sysctls (kern_sysctlbyname asks here for names not in its table):
 * ENOENT if `name` is not one of them, else 0 or an errno, as the table does.
 */
int sstest_sysctl(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, int *kind)
{
	int writable, *ptr;

	if (strcmp(name, "debug.sstest") == 0) {
		ptr = &sstest_steps;
		writable = 1;
	} else if (strcmp(name, "debug.sstest_traps") == 0) {
		ptr = &sstest_traps;
		writable = 0;
	} else
		return ENOENT;
	*kind = 2;			/* CTLTYPE_INT */
	if (old != NULL) {
		if (*oldlen < sizeof(int))
			return EINVAL;
		memcpy(old, ptr, sizeof(int));
		*oldlen = sizeof(int);
	}
	if (new != NULL) {
		if (!writable)
			return EPERM;
		if (newlen != sizeof(int))
			return EINVAL;
		*ptr = *(const int *)new;
		sstest_run(*ptr);
	}
	return 0;
}
