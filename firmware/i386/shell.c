/*
 * nit i386 test kernel: a tiny shell on COM1 with sysctl(8)-like output and kldload.
 */
#include "kernel.h"

char ostype[32] = "FreeBSD";
static int kdb_enter_request;

enum { CTLTYPE_INT, CTLTYPE_UINT, CTLTYPE_STRING };
#define CTLFLAG_RD	0x1
#define CTLFLAG_RW	0x3

struct sysctl_oid {
	const char *name;
	int type;
	int flags;
	void *ptr;
	size_t len;		/* string buffer size */
	const char *descr;
	void (*handler)(void);	/* runs after a write */
};

static void kdb_enter_handler(void)
{
	if (kdb_enter_request) {
		kdb_enter_request = 0;
		breakpoint();
	}
}

static const struct sysctl_oid sysctls[] = {
	{ "debug.kdb.enter", CTLTYPE_INT, CTLFLAG_RW, &kdb_enter_request, 0,
	  "set to enter the debugger", kdb_enter_handler },
	{ "debug.nmi_count", CTLTYPE_UINT, CTLFLAG_RD, (void *)&nmi_count, 0,
	  "NMIs handled through the interrupt gate", NULL },
	{ "debug.tsnmi", CTLTYPE_UINT, CTLFLAG_RD, (void *)&debug_tsnmi, 0,
	  "NMIs handled by the tsnmi task", NULL },
	{ "hw.physmem", CTLTYPE_UINT, CTLFLAG_RD, &physmem, 0,
	  "physical memory (multiboot mem_upper + 1 MiB)", NULL },
	{ "kern.hz", CTLTYPE_INT, CTLFLAG_RD, (void *)&hz, 0, "clock tick rate", NULL },
	{ "kern.eventtimer.idletick", CTLTYPE_INT, CTLFLAG_RW, &idletick, 0,
	  "Run periodic events when idle", NULL },
	{ "kern.ostype", CTLTYPE_STRING, CTLFLAG_RW, ostype, sizeof(ostype),
	  "operating system type", NULL },
	{ "kern.ticks", CTLTYPE_UINT, CTLFLAG_RD, (void *)&ticks, 0,
	  "timer ticks since boot", NULL },
	{ "machdep.kdb_on_nmi", CTLTYPE_INT, CTLFLAG_RW, &kdb_on_nmi, 0,
	  "go to the debugger on NMI", NULL },
};
#define NSYSCTL	(sizeof(sysctls) / sizeof(sysctls[0]))

static void sysctl_print_value(const struct sysctl_oid *oid)
{
	switch (oid->type) {
	case CTLTYPE_INT:
		printf("%d", *(volatile int *)oid->ptr);
		break;
	case CTLTYPE_UINT:
		printf("%u", *(volatile uint32_t *)oid->ptr);
		break;
	default:
		printf("%s", (const char *)oid->ptr);
	}
}

static int parse_int(const char *s, int32_t *out)
{
	int neg = 0;
	uint32_t v = 0, base = 10;

	if (*s == '-') {
		neg = 1;
		s++;
	}
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		uint32_t d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return -1;
		v = v * base + d;
	}
	*out = neg ? -(int32_t)v : (int32_t)v;
	return 0;
}

static void sysctl_one(const char *arg)
{
	char name[64];
	const char *value = NULL;
	size_t n = 0;
	unsigned i;
	int found = 0;

	while (arg[n] && arg[n] != '=' && n < sizeof(name) - 1) {
		name[n] = arg[n];
		n++;
	}
	name[n] = '\0';
	if (arg[n] == '=')
		value = arg + n + 1;

	for (i = 0; i < NSYSCTL; i++) {
		const struct sysctl_oid *oid = &sysctls[i];
		size_t len = strlen(name);
		/* A node name lists everything below it, as sysctl(8) does. */
		int exact = strcmp(oid->name, name) == 0;
		int below = value == NULL && strncmp(oid->name, name, len) == 0 &&
		    oid->name[len] == '.';
		if (!exact && !below)
			continue;
		found = 1;
		if (value == NULL) {
			printf("%s: ", oid->name);
			sysctl_print_value(oid);
			printf("\n");
			continue;
		}
		if ((oid->flags & CTLFLAG_RW) != CTLFLAG_RW) {
			printf("sysctl: oid '%s' is read only\n", oid->name);
			return;
		}
		if (oid->type == CTLTYPE_STRING) {
			if (strlen(value) >= oid->len) {
				printf("sysctl: %s: value too long\n", oid->name);
				return;
			}
			printf("%s: %s -> %s\n", oid->name, (char *)oid->ptr, value);
			memcpy(oid->ptr, value, strlen(value) + 1);
		} else {
			int32_t v;
			if (parse_int(value, &v) != 0) {
				printf("sysctl: invalid integer '%s'\n", value);
				return;
			}
			printf("%s: ", oid->name);
			sysctl_print_value(oid);
			*(volatile int32_t *)oid->ptr = v;
			printf(" -> ");
			sysctl_print_value(oid);
			printf("\n");
		}
		if (oid->handler)
			oid->handler();
		return;
	}
	if (!found)
		printf("sysctl: unknown oid '%s'\n", name);
}

static void cmd_sysctl(int argc, char **argv)
{
	int i;

	if (argc < 2) {
		printf("usage: sysctl [-a] name[=value] ...\n");
		return;
	}
	if (strcmp(argv[1], "-a") == 0) {
		for (i = 0; i < (int)NSYSCTL; i++) {
			printf("%s: ", sysctls[i].name);
			sysctl_print_value(&sysctls[i]);
			printf("\n");
		}
		return;
	}
	for (i = 1; i < argc; i++)
		sysctl_one(argv[i]);
}

static int tsnmi_loaded;

static int is_tsnmi(const char *s)
{
	return strcmp(s, "tsnmi") == 0 || strcmp(s, "tsnmi.ko") == 0;
}

static void cmd_kldload(int argc, char **argv)
{
	if (argc != 2) {
		printf("usage: kldload file\n");
		return;
	}
	if (!is_tsnmi(argv[1])) {
		printf("kldload: can't load %s: No such file or directory\n", argv[1]);
		return;
	}
	if (tsnmi_loaded) {
		printf("kldload: can't load %s: module already loaded or in kernel\n", argv[1]);
		return;
	}
	tsnmi_load();
	tsnmi_loaded = 1;
}

static void cmd_kldunload(int argc, char **argv)
{
	if (argc != 2) {
		printf("usage: kldunload file\n");
		return;
	}
	if (!is_tsnmi(argv[1]) || !tsnmi_loaded) {
		printf("kldunload: can't find file %s\n", argv[1]);
		return;
	}
	tsnmi_unload();
	tsnmi_loaded = 0;
}

static void cmd_kldstat(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("Id Refs Name\n 1    1 kernel\n");
	if (tsnmi_loaded)
		printf(" 2    1 tsnmi.ko\n");
}

static void cmd_help(int argc, char **argv);

static const struct {
	const char *name;
	void (*fn)(int, char **);
	const char *usage;
} cmds[] = {
	{ "help", cmd_help, "help" },
	{ "kldload", cmd_kldload, "kldload tsnmi" },
	{ "kldstat", cmd_kldstat, "kldstat" },
	{ "kldunload", cmd_kldunload, "kldunload tsnmi" },
	{ "sysctl", cmd_sysctl, "sysctl [-a] name[=value] ..." },
};
#define NCMDS	(sizeof(cmds) / sizeof(cmds[0]))

static void cmd_help(int argc, char **argv)
{
	unsigned i;

	(void)argc;
	(void)argv;
	printf("commands:\n");
	for (i = 0; i < NCMDS; i++)
		printf("  %s\n", cmds[i].usage);
}

static void shell_exec(char *line)
{
	char *argv[8];
	int argc = 0;
	unsigned i;

	while (*line && argc < 8) {
		while (*line == ' ' || *line == '\t')
			*line++ = '\0';
		if (*line == '\0')
			break;
		argv[argc++] = line;
		while (*line && *line != ' ' && *line != '\t')
			line++;
	}
	if (argc == 0)
		return;
	for (i = 0; i < NCMDS; i++) {
		if (strcmp(argv[0], cmds[i].name) == 0) {
			cmds[i].fn(argc, argv);
			return;
		}
	}
	printf("%s: Command not found.\n", argv[0]);
}

void shell_main(void)
{
	static char line[128];
	size_t len = 0;
	int c, last = 0;

	printf("# ");
	for (;;) {
		disable_intr();
		c = cons_getc();
		if (c < 0) {
			clock_idle();		/* sti; hlt: returns with interrupts on */
			continue;
		}
		clock_active();
		enable_intr();
		if (c == '\n' && last == '\r') {	/* CR LF is one end of line */
			last = c;
			continue;
		}
		last = c;
		if (c == '\r' || c == '\n') {
			printf("\n");
			line[len] = '\0';
			shell_exec(line);
			len = 0;
			printf("# ");
		} else if (c == '\b' || c == 0x7f) {
			if (len > 0) {
				len--;
				printf("\b \b");
			}
		} else if (c >= ' ' && c < 0x7f && len < sizeof(line) - 1) {
			line[len++] = c;
			cons_putc(c);
		}
	}
}
