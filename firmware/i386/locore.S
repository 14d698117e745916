/*
 * nit i386 test kernel: multiboot entry, trap entry stubs, the idle loop and
 * the tsnmi module's NMI task body.
 */
#include "kernel.h"

	.section .multiboot, "a"
	.align	4
multiboot_header:
	.long	MULTIBOOT_MAGIC
	.long	MULTIBOOT_FLAGS
	.long	-(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

	.text
/*
 * Multiboot v1 entry: 32-bit protected mode, paging off, flat CS/DS,
 * EAX = 0x2BADB002, EBX = multiboot info, no usable stack, GDTR undefined.
 */
	.globl	_start
	.type	_start, @function
_start:
	cli
	cld
	movl	%eax, %ebp		/* keep magic and info across the bss clear */
	movl	%ebx, %esi
	movl	$__bss_start, %edi
	movl	$_end, %ecx
	subl	%edi, %ecx
	xorl	%eax, %eax
	rep stosb
	movl	$bootstack_top, %esp
	lgdt	gdt_desc
	ljmp	$GSEL_CODE, $1f
1:	movl	$GSEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%eax, %ss
	pushl	%esi
	pushl	%ebp
	call	kmain
2:	cli
	hlt
	jmp	2b

	.section .rodata
	.align	4
	.word	0
gdt_desc:
	.word	NGDT * 8 - 1
	.long	gdt

	.text
/*
 * cpu_idle: entered with interrupts disabled after the caller found no work.
 * STI's interrupt shadow covers HLT, so no interrupt slips in between
 * (SDM vol 2 STI); an NMI or timer interrupt wakes the HLT and its handler
 * returns to the RET after it.
 */
	.globl	cpu_idle
	.type	cpu_idle, @function
cpu_idle:
	sti
	hlt
	ret

/* kdb_enter(): the way FreeBSD's breakpoint() enters the debugger. */
	.globl	breakpoint
	.type	breakpoint, @function
breakpoint:
	int3
	ret

/*
 * Trap entry stubs (FreeBSD i386 exception.s shape): push an error code when
 * the CPU does not, then the trap number, and build a struct trapframe.
 */
#define	IDTVEC(name)	.globl X##name; .type X##name, @function; X##name:
#define	TRAP(name, no)	IDTVEC(name) pushl $0; pushl $(no); jmp alltraps
#define	TRAPERR(name, no) IDTVEC(name) pushl $(no); jmp alltraps

TRAP(div, T_DIVIDE)
TRAP(dbg, T_TRCTRAP)
TRAP(nmi, T_NMI)
TRAP(bpt, T_BPTFLT)
TRAP(ofl, T_OFLOW)
TRAP(bnd, T_BOUND)
TRAP(ill, T_PRIVINFLT)
TRAP(dna, T_DNA)
TRAPERR(dblfault, T_DOUBLEFLT)
TRAP(fpusegm, T_FPOPFLT)
TRAPERR(tss, T_TSSFLT)
TRAPERR(missing, T_SEGNPFLT)
TRAPERR(stk, T_STKFLT)
TRAPERR(prot, T_PROTFLT)
TRAPERR(page, T_PAGEFLT)
TRAP(rsvd, T_RESERVED)
TRAP(fpu, T_ARITHTRAP)
TRAPERR(align, T_ALIGNFLT)
TRAP(mchk, T_MCHK)
TRAP(xmm, T_XMMFLT)
TRAP(timerint, IDT_TIMER)
TRAP(com1int, IDT_COM1)

/* Spurious LAPIC interrupts need no EOI (SDM 10.9). */
IDTVEC(spuriousint)
	iret

	.globl	alltraps
	.type	alltraps, @function
alltraps:
	pushal
	pushl	%ds
	pushl	%es
	pushl	%fs
	movl	$GSEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	pushl	%esp			/* struct trapframe * */
	call	trap
	addl	$4, %esp
	.globl	doreti
doreti:
	popl	%fs
	popl	%es
	popl	%ds
	popal
	addl	$8, %esp		/* trapno, err */
	.globl	doreti_iret
doreti_iret:
	iret

/*
 * The tsnmi module's NMI task. IDT vector 2 is a task gate to GSEL_NMITSS whose
 * TSS starts here with its own stack. The task switch in (SDM 7.3) saves the
 * interrupted task in common_tss, links it in tss_link and sets EFLAGS.NT; the
 * IRET sees NT=1 and switches back through the link (SDM 7.4), saving this task
 * with EIP at the JMP. The next NMI resumes there and so starts over.
 */
	.globl	tsnmi_handler
	.type	tsnmi_handler, @function
tsnmi_handler:
	inb	$0x61, %al		/* NMI status, as isa_nmi() reads it */
	incl	debug_tsnmi
	.globl	tsnmi_iret
tsnmi_iret:
	iret
	jmp	tsnmi_handler

/* Exception vectors 0-19 in order, for setidt in machdep.c. */
	.section .rodata
	.align	4
	.globl	idtvec
idtvec:
	.long	Xdiv, Xdbg, Xnmi, Xbpt, Xofl, Xbnd, Xill, Xdna
	.long	Xdblfault, Xfpusegm, Xtss, Xmissing, Xstk, Xprot, Xpage, Xrsvd
	.long	Xfpu, Xalign, Xmchk, Xxmm
	.rept	12
	.long	Xrsvd
	.endr

	.bss
	.align	16
	.globl	bootstack
bootstack:
	.space	16384
	.globl	bootstack_top
bootstack_top:

	.section .note.GNU-stack, "", @progbits
