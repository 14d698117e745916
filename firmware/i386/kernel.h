/*
 * nit i386 test kernel: shared constants and declarations.
 * Layouts follow FreeBSD/i386 (struct trapframe, struct i386tss, T_* trap numbers)
 * so nitdbg's debugger can read them as it reads a FreeBSD guest's.
 */
#ifndef NIT_KERNEL_H
#define NIT_KERNEL_H

#define MULTIBOOT_MAGIC		0x1BADB002
#define MULTIBOOT_FLAGS		0x00000003	/* page-align modules, want memory info */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002

/* GDT selectors. */
#define GSEL_CODE	0x08
#define GSEL_DATA	0x10
#define GSEL_TSS	0x18	/* the kernel's own task (TR after boot) */
#define GSEL_NMITSS	0x20	/* the tsnmi module's NMI task */
#define NGDT		5

/* IDT vectors beyond the exceptions. */
#define IDT_NMI		2
#define IDT_TIMER	0x20
#define IDT_COM1	0x34	/* ISA IRQ 4 through the I/O APIC (FreeBSD APIC_IO_INTS + 4) */
#define IDT_SPURIOUS	0xff

/* FreeBSD i386 trap numbers (sys/x86/include/trap.h), stored in tf_trapno. */
#define T_PRIVINFLT	1
#define T_BPTFLT	3
#define T_ARITHTRAP	6
#define T_PROTFLT	9
#define T_TRCTRAP	10
#define T_PAGEFLT	12
#define T_ALIGNFLT	14
#define T_DIVIDE	18
#define T_NMI		19
#define T_OFLOW		20
#define T_BOUND		21
#define T_DNA		22
#define T_DOUBLEFLT	23
#define T_FPOPFLT	24
#define T_TSSFLT	25
#define T_SEGNPFLT	26
#define T_STKFLT	27
#define T_MCHK		28
#define T_XMMFLT	29
#define T_RESERVED	30
/* Interrupts store their IDT vector in tf_trapno (>= 32, no clash with T_*). */

/* Hypercall ABI (guest -> nitdbg): outl %eax, $NIT_HC_PORT; args in EDI, ESI, EDX. */
#define NIT_HC_PORT		0xE0
#define NIT_HC_KDB_ENTER	1
#define NIT_HC_PANIC		2

#define LAPIC_BASE	0xFEE00000

#ifndef __ASSEMBLER__
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* FreeBSD i386 struct trapframe (sys/x86/include/frame.h), built by alltraps. */
struct trapframe {
	uint32_t tf_fs, tf_es, tf_ds;
	uint32_t tf_edi, tf_esi, tf_ebp, tf_isp, tf_ebx, tf_edx, tf_ecx, tf_eax;
	uint32_t tf_trapno;
	uint32_t tf_err, tf_eip, tf_cs, tf_eflags;
	uint32_t tf_esp, tf_ss;		/* only when crossing rings */
};

/* FreeBSD struct i386tss: the 104-byte hardware 32-bit TSS. */
struct i386tss {
	uint32_t tss_link, tss_esp0, tss_ss0, tss_esp1, tss_ss1, tss_esp2, tss_ss2;
	uint32_t tss_cr3, tss_eip, tss_eflags;
	uint32_t tss_eax, tss_ecx, tss_edx, tss_ebx, tss_esp, tss_ebp, tss_esi, tss_edi;
	uint32_t tss_es, tss_cs, tss_ss, tss_ds, tss_fs, tss_gs, tss_ldt;
	uint16_t tss_trap, tss_ioopt;
};

struct multiboot_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
	uint32_t mods_count, mods_addr, syms[4], mmap_length, mmap_addr;
};

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void disable_intr(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void enable_intr(void) { __asm__ volatile("sti" ::: "memory"); }

static inline void hypercall(uint32_t nr, uint32_t a0, uint32_t a1, uint32_t a2)
{
	/* Under QEMU nothing listens on port 0xE0, so this is a no-op there. */
	__asm__ volatile("outl %%eax, %0" : : "Nd"((uint16_t)NIT_HC_PORT), "a"(nr),
	    "D"(a0), "S"(a1), "d"(a2) : "memory");
}

/* locore.S */
void cpu_idle(void);
void breakpoint(void);
void tsnmi_handler(void);
extern char bootstack_top[];
extern void (*const idtvec[32])(void);
void Xnmi(void), Xtimerint(void), Xspuriousint(void), Xcom1int(void);

/* machdep.c */
extern struct i386tss common_tss;
void gdt_set_tss(int sel, struct i386tss *tss);
void setidt_intr(int vec, void (*fn)(void));
void setidt_task(int vec, int sel);
uint32_t rcr3(void);
void trap(struct trapframe *tf);
void panic(const char *fmt, ...) __attribute__((noreturn));
extern volatile uint32_t ticks;
extern volatile uint32_t nmi_count;
extern int kdb_on_nmi;
extern uint32_t physmem;
extern const int hz;

/* cons.c */
void cons_init(void);
void cons_putc(int c);
int cons_getc(void);
void cons_poll(void);
void clock_idle(void);
void clock_active(void);
extern int idletick;
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* shell.c */
void shell_main(void) __attribute__((noreturn));
extern char ostype[32];

/* tsnmi.c */
extern volatile uint32_t debug_tsnmi;
int tsnmi_load(void);
int tsnmi_unload(void);

/* libkern.c */
void *memset(void *, int, size_t);
void *memcpy(void *, const void *, size_t);
int memcmp(const void *, const void *, size_t);
size_t strlen(const char *);
int strcmp(const char *, const char *);
int strncmp(const char *, const char *, size_t);
#endif /* !__ASSEMBLER__ */
#endif /* NIT_KERNEL_H */
