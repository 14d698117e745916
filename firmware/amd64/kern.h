/* Kernel-wide declarations for the amd64 firmware (C side). */
#ifndef _KERN_H_
#define _KERN_H_

#include "param.h"

typedef unsigned char		uint8_t;
typedef unsigned short		uint16_t;
typedef unsigned int		uint32_t;
typedef unsigned long		uint64_t;
typedef long			int64_t;
typedef unsigned long		uintptr_t;
typedef unsigned long		size_t;
typedef unsigned int		u_int;

#define	NULL	((void *)0)
#define	nitems(x) (sizeof(x) / sizeof((x)[0]))

struct trapframe {
	uint64_t tf_rdi, tf_rsi, tf_rdx, tf_rcx, tf_r8, tf_r9, tf_rax, tf_rbx;
	uint64_t tf_rbp, tf_r10, tf_r11, tf_r12, tf_r13, tf_r14, tf_r15;
	uint32_t tf_trapno;
	uint16_t tf_fs, tf_gs;
	uint64_t tf_addr;
	uint32_t tf_flags;
	uint16_t tf_es, tf_ds;
	uint64_t tf_err, tf_rip, tf_cs, tf_rflags, tf_rsp, tf_ss;
};
_Static_assert(sizeof(struct trapframe) == TF_SIZE, "trapframe layout");
_Static_assert(__builtin_offsetof(struct trapframe, tf_trapno) == TF_TRAPNO, "tf_trapno");
_Static_assert(__builtin_offsetof(struct trapframe, tf_ds) == TF_DS, "tf_ds");
_Static_assert(__builtin_offsetof(struct trapframe, tf_rip) == TF_RIP, "tf_rip");

#define	TRAPF_USERMODE(tf)	(((tf)->tf_cs & 3) == 3)

/* RFLAGS bits (FreeBSD PSL_*). */
#define	PSL_C		0x00000001
#define	PSL_T		0x00000100
#define	PSL_I		0x00000200
#define	PSL_D		0x00000400
#define	PSL_IOPL	0x00003000
#define	PSL_NT		0x00004000
#define	PSL_RF		0x00010000
#define	PSL_USER	0x00000202	/* what a fresh process starts with */

/* Signals. */
#define	SIGINT		2
#define	SIGILL		4
#define	SIGTRAP		5
#define	SIGFPE		8
#define	SIGBUS		10
#define	SIGSEGV		11

/* errno values (returned negated by the syscalls). */
#define	EPERM		1
#define	ENOENT		2
#define	EINTR		4
#define	EFAULT		14
#define	EINVAL		22
#define	ENOSYS		78

static inline void outb(uint16_t port, uint8_t v)
{ __asm__ volatile("outb %0, %w1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{ uint8_t v; __asm__ volatile("inb %w1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdmsr(uint32_t msr)
{ uint32_t lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo; }
static inline void wrmsr(uint32_t msr, uint64_t v)
{ __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))); }
static inline void cpuid(uint32_t leaf, uint32_t r[4])
{ __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0)); }
static inline void disable_intr(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void cpu_spinwait(void) { __asm__ volatile("pause" ::: "memory"); }
static inline uint64_t rcr2(void)
{ uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline void load_cr3(uint64_t v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }

/* Kernel virtual <-> physical for the KERNBASE map. */
#define	KVTOP(va)	((uint64_t)(uintptr_t)(va) - KERNBASE)

/* Per-CPU stacks; curcpu is derived from %rsp (every kernel stack is in here). */
struct pcpu_stack {
	uint8_t kstack[KSTACK_SIZE];
	uint8_t ist[4][IST_SIZE];	/* IST1..IST4 */
};
_Static_assert(sizeof(struct pcpu_stack) == (1 << PCPU_STACK_SHIFT), "pcpu stack size");
extern struct pcpu_stack pcpu_stacks[MAXCPU];

static inline int curcpu(void)
{
	uintptr_t sp;

	__asm__ volatile("mov %%rsp, %0" : "=r"(sp));
	return (int)((sp - (uintptr_t)pcpu_stacks) >> PCPU_STACK_SHIFT);
}

/* Assembly entry points and labels (exception.S). */
void cpu_idle_acpi(void);
void enter_user(struct trapframe *tf) __attribute__((noreturn));
extern char doreti_iret[], nmi_iret[], doreti_iret_fault[];
extern char Xdiv[], Xdbg[], Xnmi[], Xbpt[], Xofl[], Xbnd[], Xill[], Xdna[], Xdblfault[];
extern char Xfpusegm[], Xtss[], Xmissing[], Xstk[], Xprot[], Xpage[], Xrsvd15[], Xfpu[];
extern char Xalign[], Xmchk[], Xxmm[], Xrsvd20[], Xcp[], Xrsvd22[], Xrsvd23[], Xrsvd24[];
extern char Xrsvd25[], Xrsvd26[], Xrsvd27[], Xrsvd28[], Xvc[], Xsx[], Xrsvd31[];
extern char Xint0x80_syscall[], Xtimerint[], Xerrorint[], Xspuriousint[], Xcom1int[];

/* Globals. */
extern int mp_ncpus;
extern volatile int ticks;
extern const int hz;
extern int idletick;
extern int kdb_on_nmi;
extern char ostype[];
extern volatile uint32_t started_cpus_mask;

/* cons.c */
void cons_putc(int c);
void cons_write(const char *s, size_t len);
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tty_intr(void);
void uart_intr_init(void);
int tty_read(char *buf, size_t len);
extern volatile int tty_sigint;

/* lapic.c */
void lapic_init(int cpu);
void lapic_eoi(void);
uint32_t lapic_id(void);
void lapic_ipi_nmi_allbutself(void);
void lapic_timer_periodic(uint32_t count);
void lapic_timer_oneshot(uint32_t count);
extern int x2apic_mode;

/* clock.c */
void clock_calibrate(void);
void clock_intr(void);
void cpu_idle(void);
void cpu_activeclock(void);

/* ioapic.c */
void ioapic_route_isa(int irq, int vector);

/* trap.c / kdb */
void trap(struct trapframe *tf);
void kdb_trap(int type, int code, struct trapframe *tf);
void panic(const char *msg) __attribute__((noreturn));
extern int kdb_active;

/* proc.c */
void syscall(struct trapframe *tf);
void userret(struct trapframe *tf);
void exec_shell(struct trapframe *tf);
void sigexit(struct trapframe *tf, int sig);
const char *curproc_name(int cpu, int *pid);

/* sysctl.c */
int sstest_sysctl(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, int *kind);
int kern_sysctlbyname(const char *name, void *old, size_t *oldlen, const void *new,
    size_t newlen, int *kind);

/* libkern */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

#endif
