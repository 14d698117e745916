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
	{ "kern.hz", (void *)&hz, CTLTYPE_INT, 0 },
	{ "kern.eventtimer.idletick", &idletick, CTLTYPE_INT, 1 },
	{ "hw.ncpu", &mp_ncpus, CTLTYPE_INT, 0 },
	{ "kern.ostype", ostype, CTLTYPE_STRING, 0 },
};

/* Copy the old value out (if asked), then store the new one (if given). */
int kern_sysctlbyname(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, int *kind)
{
	const struct sysctl_oid *oid = NULL;
	size_t i, size;

	for (i = 0; i < nitems(sysctl_oids); i++)
		if (strcmp(sysctl_oids[i].name, name) == 0)
			oid = &sysctl_oids[i];
	if (oid == NULL)	/* debug.sstest* live in sstest.c */
		return sstest_sysctl(name, old, oldlen, new, newlen, kind);
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
	}
	return 0;
}
