/* The guest's own sysctl variables (a flat table, looked up by name). */
#include "kern.h"

#define	CTLTYPE_INT	2
#define	CTLTYPE_STRING	3

char ostype[] = "FreeBSD";

static const struct sysctl_oid {
	const char *name;
	void *ptr;
	int kind;
	int writable;
} sysctl_oids[] = {
	{ "machdep.kdb_on_nmi", &kdb_on_nmi, CTLTYPE_INT, 1 },
	{ "kern.ticks", (void *)&ticks, CTLTYPE_INT, 0 },
	{ "hw.ncpu", &mp_ncpus, CTLTYPE_INT, 0 },
	{ "kern.ostype", ostype, CTLTYPE_STRING, 0 },
	{ "debug.sstest", &sstest_steps, CTLTYPE_INT, 1 },
	{ "debug.sstest_traps", &sstest_traps, CTLTYPE_INT, 0 },
};

int sstest_steps, sstest_traps;
volatile int sstest_active;

/*
 * Writing N to debug.sstest single-steps a loop of N iterations (decl; jnz) with
 * RFLAGS.TF and counts the trace traps trap() takes meanwhile (debug.sstest_traps).
 * POPF setting TF is not trapped, every later instruction is, the POPF clearing TF
 * included (TF was 1 at its start): 2N + 3 on hardware (SDM 17.3.1.4).
 */
__attribute__((noinline)) void sstest_run(void)
{
	int n = sstest_steps;

	if (n <= 0)
		return;
	sstest_traps = 0;
	sstest_active = 1;
	__asm__ volatile(
	    "pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n"
	    ".globl sstest_loop\nsstest_loop:\n\t"
	    "decl %0\n\tjnz sstest_loop\n\t"
	    "pushfq\n\tandq $~0x100, (%%rsp)\n\tpopfq\n"
	    ".globl sstest_done\nsstest_done:\n"
	    : "+r"(n) : : "memory", "cc");
	sstest_active = 0;
}

/* Copy the old value out (if asked), then store the new one (if given). */
int kern_sysctlbyname(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, int *kind)
{
	const struct sysctl_oid *oid = NULL;
	size_t i, size;

	for (i = 0; i < nitems(sysctl_oids); i++)
		if (strcmp(sysctl_oids[i].name, name) == 0)
			oid = &sysctl_oids[i];
	if (oid == NULL)
		return ENOENT;
	*kind = oid->kind;
	size = oid->kind == CTLTYPE_INT ? sizeof(int) : strlen(oid->ptr) + 1;
	if (old != NULL) {
		if (*oldlen < size)
			return EINVAL;
		memcpy(old, oid->ptr, size);
		*oldlen = size;
	}
	if (new != NULL) {
		if (!oid->writable)
			return EPERM;
		if (oid->kind != CTLTYPE_INT || newlen != sizeof(int))
			return EINVAL;
		*(volatile int *)oid->ptr = *(const int *)new;
		if (oid->ptr == &sstest_steps)
			sstest_run();
	}
	return 0;
}
