/*
 * Constants shared by the C and assembly parts of the amd64 firmware.
 * Mirrored in nitdbg/guest/abi.py; keep both in step.
 */
#ifndef _PARAM_H_
#define _PARAM_H_

#define	KERNBASE	0xffffffff80000000
#define	MAXCPU		8

/* Per-CPU stacks: one 32 KiB block per CPU (kstack, then the IST stacks). */
#define	PCPU_STACK_SHIFT 15
#define	KSTACK_SIZE	(16 * 1024)
#define	IST_SIZE	4096
#define	IST_DBLFAULT	1	/* FreeBSD amd64: #DF on IST1 */
#define	IST_NMI		2	/* NMI on IST2 */
#define	IST_MCHK	3	/* #MC on IST3 */
#define	IST_DBG		4	/* #DB on IST4 */

/* FreeBSD amd64 GDT selectors. */
#define	GCODE_SEL	0x20
#define	GDATA_SEL	0x28
#define	GUCODE32_SEL	0x33
#define	GUDATA_SEL	0x3b
#define	GUCODE_SEL	0x43
#define	GPROC0_SEL	0x48

/* struct trapframe offsets (FreeBSD amd64, 192 bytes). */
#define	TF_RDI		0
#define	TF_RSI		8
#define	TF_RDX		16
#define	TF_RCX		24
#define	TF_R8		32
#define	TF_R9		40
#define	TF_RAX		48
#define	TF_RBX		56
#define	TF_RBP		64
#define	TF_R10		72
#define	TF_R11		80
#define	TF_R12		88
#define	TF_R13		96
#define	TF_R14		104
#define	TF_R15		112
#define	TF_TRAPNO	120
#define	TF_FS		124
#define	TF_GS		126
#define	TF_ADDR		128
#define	TF_FLAGS	136
#define	TF_ES		140
#define	TF_DS		142
#define	TF_ERR		144
#define	TF_RIP		152
#define	TF_CS		160
#define	TF_RFLAGS	168
#define	TF_RSP		176
#define	TF_SS		184
#define	TF_SIZE		192

#define	TF_HASSEGS	0x1

/* FreeBSD T_* trap types (sys/x86/include/trap.h). */
#define	T_PRIVINFLT	1
#define	T_BPTFLT	3
#define	T_ARITHTRAP	6
#define	T_PROTFLT	9
#define	T_TRCTRAP	10
#define	T_PAGEFLT	12
#define	T_ALIGNFLT	14
#define	T_DIVIDE	18
#define	T_NMI		19
#define	T_OFLOW		20
#define	T_BOUND		21
#define	T_DNA		22
#define	T_DOUBLEFLT	23
#define	T_FPOPFLT	24
#define	T_TSSFLT	25
#define	T_SEGNPFLT	26
#define	T_STKFLT	27
#define	T_MCHK		28
#define	T_XMMFLT	29
#define	T_RESERVED	30

/* The clock: hz ticks a second; 100 MHz bus clock / 16 = 6.25 MHz, 62500 = 10 ms. */
#define	HZ		100
#define	LAPIC_TIMER_COUNT 62500

/*
 * Interrupt vectors.  Their trapframes carry the vector itself in
 * tf_trapno (no T_* exists for them); all are above T_RESERVED so they
 * never collide with a T_* number.
 */
#define	IDT_COM1	0x34	/* APIC_IO_INTS + ISA IRQ 4, as FreeBSD numbers it */
#define	IDT_SYSCALL	0x80	/* int $0x80 */
#define	IDT_TIMER	0xf0	/* APIC_TIMER_INT */
#define	IDT_ERROR	0xf1	/* APIC_ERROR_INT */
#define	IDT_SPURIOUS	0xff	/* APIC_SPURIOUS_INT */

/* Hypercalls: outl %eax, $NIT_HC_PORT with EAX = call number. */
#define	NIT_HC_PORT	0xe0
#define	NIT_HC_KDB_ENTER 1
#define	NIT_HC_PANIC	2

/* User address space of the one process (4 KiB pages, one page table). */
#define	USER_BASE	0x400000
#define	USER_STACK_TOP	0x600000
#define	USER_STACK_SIZE	(16 * 1024)

#endif
