/*
 * Trap and interrupt entry, the common return path (doreti), the NMI
 * handler and the idle instruction pair.
 *
 * Every entry builds a FreeBSD amd64 struct trapframe on the stack the CPU
 * switched to (RSP0 from user mode, the current stack from kernel mode, or
 * the IST stack for #DF/NMI/#MC/#DB) and calls trap(frame).  All IDT
 * entries are interrupt gates, so handlers run with IF=0.
 */
#include "param.h"

	.text

/* Entry without a CPU-pushed error code: push a zero tf_err. */
.macro	TRAP name, type
	.globl	\name
	.type	\name, @function
\name:
	pushq	$0
	subq	$TF_ERR, %rsp
	movl	$\type, TF_TRAPNO(%rsp)
	jmp	alltraps
	.size	\name, . - \name
.endm

/* Entry where the CPU pushed an error code (it becomes tf_err). */
.macro	TRAP_ERR name, type
	.globl	\name
	.type	\name, @function
\name:
	subq	$TF_ERR, %rsp
	movl	$\type, TF_TRAPNO(%rsp)
	jmp	alltraps
	.size	\name, . - \name
.endm

.macro	SAVE_REGS
	movq	%rdi, TF_RDI(%rsp)
	movq	%rsi, TF_RSI(%rsp)
	movq	%rdx, TF_RDX(%rsp)
	movq	%rcx, TF_RCX(%rsp)
	movq	%r8, TF_R8(%rsp)
	movq	%r9, TF_R9(%rsp)
	movq	%rax, TF_RAX(%rsp)
	movq	%rbx, TF_RBX(%rsp)
	movq	%rbp, TF_RBP(%rsp)
	movq	%r10, TF_R10(%rsp)
	movq	%r11, TF_R11(%rsp)
	movq	%r12, TF_R12(%rsp)
	movq	%r13, TF_R13(%rsp)
	movq	%r14, TF_R14(%rsp)
	movq	%r15, TF_R15(%rsp)
	movw	%fs, TF_FS(%rsp)
	movw	%gs, TF_GS(%rsp)
	movw	%es, TF_ES(%rsp)
	movw	%ds, TF_DS(%rsp)
	movq	$0, TF_ADDR(%rsp)
	movl	$TF_HASSEGS, TF_FLAGS(%rsp)
	cld
.endm

/* Restore from the frame at %rsp; leaves %rsp at tf_rip, ready for iretq. */
.macro	RESTORE_REGS
	testb	$3, TF_CS(%rsp)
	jz	1f
	movw	TF_DS(%rsp), %ds	/* back to user: user data selectors */
	movw	TF_ES(%rsp), %es
1:	movq	TF_RDI(%rsp), %rdi
	movq	TF_RSI(%rsp), %rsi
	movq	TF_RDX(%rsp), %rdx
	movq	TF_RCX(%rsp), %rcx
	movq	TF_R8(%rsp), %r8
	movq	TF_R9(%rsp), %r9
	movq	TF_RAX(%rsp), %rax
	movq	TF_RBX(%rsp), %rbx
	movq	TF_RBP(%rsp), %rbp
	movq	TF_R10(%rsp), %r10
	movq	TF_R11(%rsp), %r11
	movq	TF_R12(%rsp), %r12
	movq	TF_R13(%rsp), %r13
	movq	TF_R14(%rsp), %r14
	movq	TF_R15(%rsp), %r15
	addq	$TF_RIP, %rsp
.endm

	TRAP		Xdiv, T_DIVIDE
	TRAP		Xdbg, T_TRCTRAP		/* IST4 */
	TRAP		Xbpt, T_BPTFLT		/* DPL 3 */
	TRAP		Xofl, T_OFLOW
	TRAP		Xbnd, T_BOUND
	TRAP		Xill, T_PRIVINFLT
	TRAP		Xdna, T_DNA
	TRAP_ERR	Xdblfault, T_DOUBLEFLT	/* IST1 */
	TRAP		Xfpusegm, T_FPOPFLT
	TRAP_ERR	Xtss, T_TSSFLT
	TRAP_ERR	Xmissing, T_SEGNPFLT
	TRAP_ERR	Xstk, T_STKFLT
	TRAP_ERR	Xprot, T_PROTFLT
	TRAP_ERR	Xpage, T_PAGEFLT
	TRAP		Xrsvd15, T_RESERVED
	TRAP		Xfpu, T_ARITHTRAP
	TRAP_ERR	Xalign, T_ALIGNFLT
	TRAP		Xmchk, T_MCHK		/* IST3 */
	TRAP		Xxmm, T_XMMFLT
	TRAP		Xrsvd20, T_RESERVED
	TRAP_ERR	Xcp, T_RESERVED		/* 21: control protection */
	TRAP		Xrsvd22, T_RESERVED
	TRAP		Xrsvd23, T_RESERVED
	TRAP		Xrsvd24, T_RESERVED
	TRAP		Xrsvd25, T_RESERVED
	TRAP		Xrsvd26, T_RESERVED
	TRAP		Xrsvd27, T_RESERVED
	TRAP		Xrsvd28, T_RESERVED
	TRAP_ERR	Xvc, T_RESERVED		/* 29: AMD #VC */
	TRAP_ERR	Xsx, T_RESERVED		/* 30: AMD #SX */
	TRAP		Xrsvd31, T_RESERVED

	/* Interrupts and the system call gate: tf_trapno = the vector. */
	TRAP		Xint0x80_syscall, IDT_SYSCALL	/* DPL 3 */
	TRAP		Xtimerint, IDT_TIMER
	TRAP		Xerrorint, IDT_ERROR
	TRAP		Xspuriousint, IDT_SPURIOUS
	TRAP		Xcom1int, IDT_COM1

/*
 * The faulting-iretq fix-up, as FreeBSD's doreti_iret_fault: trap() points
 * a #GP taken at doreti_iret/nmi_iret (returning to user mode) here.  %rsp
 * is back at the iret frame that could not be loaded; wrap a trapframe
 * around it and report a user-mode #GP, so the process gets the signal.
 */
	.globl	doreti_iret_fault
	.type	doreti_iret_fault, @function
doreti_iret_fault:
	subq	$TF_RIP, %rsp
	movq	$0, TF_ERR(%rsp)
	movl	$T_PROTFLT, TF_TRAPNO(%rsp)
	jmp	alltraps
	.size	doreti_iret_fault, . - doreti_iret_fault

	.globl	alltraps
	.type	alltraps, @function
alltraps:
	SAVE_REGS
	.globl	calltrap
calltrap:
	movq	%rsp, %rdi
	call	trap
	/* FALLTHROUGH */
	.globl	doreti
doreti:
	RESTORE_REGS
	.globl	doreti_iret
doreti_iret:
	iretq
	.size	alltraps, . - alltraps

/* enter_user(frame): start a process by "returning" through a frame. */
	.globl	enter_user
	.type	enter_user, @function
enter_user:
	movq	%rdi, %rsp
	jmp	doreti
	.size	enter_user, . - enter_user

/*
 * NMI, on IST2.  NMIs stay blocked from delivery until the iretq at
 * nmi_iret; a fault raised by that iretq unblocks them as well
 * (SDM 6.7.1), which is what the hypervisor's iret tracing must track.
 */
	.globl	Xnmi
	.type	Xnmi, @function
Xnmi:
	pushq	$0
	subq	$TF_ERR, %rsp
	movl	$T_NMI, TF_TRAPNO(%rsp)
	SAVE_REGS
	movq	%rsp, %rdi
	call	trap
	RESTORE_REGS
	.globl	nmi_iret
nmi_iret:
	iretq
	.size	Xnmi, . - Xnmi

/*
 * The idle instruction pair (FreeBSD acpi_cpu_c1): STI's interrupt shadow
 * covers HLT, so an interrupt that became pending after the caller's
 * check still wakes the HLT.  An interrupt or NMI taken while halted
 * pushes the address of the ret below.
 */
	.globl	cpu_idle_acpi
	.type	cpu_idle_acpi, @function
cpu_idle_acpi:
	sti
	hlt
	ret
	.size	cpu_idle_acpi, . - cpu_idle_acpi
