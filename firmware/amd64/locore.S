/*
 * Entry points.
 *
 * _start: the 64-bit entry nitdbg's loader jumps to (long mode, paging on,
 * loader GDT, IF=0, RDI = cpu id, RSI = number of CPUs).  Every CPU comes
 * here at once; APs wait for the BSP to finish the shared set-up.
 *
 * _start32: used only when QEMU boots the image as a multiboot kernel (for
 * validation).  It builds the state nitdbg's loader would build (page
 * tables at phys 0x1000-0x7fff, a GDT with 0x08 = code64, 0x10 = data),
 * enters long mode and continues at _start with RDI = 0, RSI = 1.
 */
#include "param.h"

#define	PHYS(x)		((x) - KERNBASE)
#define	MB_MAGIC	0x1badb002
#define	MB_FLAGS	0x00010000	/* bit 16: load addresses in the header */

	.section .text.boot, "ax"
	.p2align 2
mb_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
	.long	PHYS(mb_header)		/* header_addr */
	.long	PHYS(kernel_start)	/* load_addr */
	.long	PHYS(_edata)		/* load_end_addr */
	.long	PHYS(_end)		/* bss_end_addr */
	.long	PHYS(_start32)		/* entry_addr */

	.code32
	.globl	_start32
_start32:
	cli
	/* The BIOS left the 8259s programmed; mask them (QEMU only). */
	movb	$0xff, %al
	outb	%al, $0x21
	outb	%al, $0xa1

	/* Clear phys 0x1000-0x7fff for the page tables. */
	movl	$0x1000, %edi
1:	movl	$0, (%edi)
	addl	$4, %edi
	cmpl	$0x8000, %edi
	jb	1b

	movl	$0x2003, 0x1000		/* PML4[0] -> PDPT (identity) */
	movl	$0x7003, 0x1000+511*8	/* PML4[511] -> PDPT (KERNBASE) */
	movl	$0x3003, 0x2000		/* PDPT[0..3] -> 4 PDs, 2 MiB pages */
	movl	$0x4003, 0x2008
	movl	$0x5003, 0x2010
	movl	$0x6003, 0x2018
	movl	$0x3003, 0x7000+510*8	/* KERNBASE -> phys 0 (first PD) */
	movl	$0x3000, %edi		/* 2048 PDEs: phys i*2MiB, P|W|PS */
	movl	$0x83, %eax
2:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	cmpl	$0x7000, %edi
	jb	2b

	lgdt	PHYS(mb_gdtdesc)
	movl	$0x80000, %esp
	movl	$0x20, %eax		/* CR4.PAE */
	movl	%eax, %cr4
	movl	$0x1000, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx	/* EFER = SCE|LME|NXE */
	rdmsr
	orl	$0xd01, %eax
	wrmsr
	movl	$0x80050033, %eax	/* PG|WP|NE|ET|MP|PE */
	movl	%eax, %cr0
	ljmp	$0x08, $PHYS(mb_long)

	.code64
mb_long:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	xorl	%edi, %edi
	movl	$1, %esi
	movabsq	$_start, %rax
	jmp	*%rax

	.p2align 3
mb_gdt:
	.quad	0
	.quad	0x00af9b000000ffff	/* 0x08: code64, attrib 0xa9b */
	.quad	0x00cf93000000ffff	/* 0x10: data, attrib 0xc93 */
mb_gdtdesc:
	.word	mb_gdtdesc - mb_gdt - 1
	.long	PHYS(mb_gdt)

/* The common 64-bit entry. */
	.text
	.globl	_start
	.type	_start, @function
_start:
	cli
	cld
	cmpq	$MAXCPU, %rdi
	jae	park
	testq	%rdi, %rdi
	jz	1f
	/* AP: wait (on the loader's stack) until the BSP releases us. */
0:	pause
	cmpl	$0, ap_go(%rip)
	je	0b
1:	movq	%rdi, %rax
	shlq	$PCPU_STACK_SHIFT, %rax
	leaq	pcpu_stacks(%rip), %rsp
	addq	%rax, %rsp
	addq	$KSTACK_SIZE, %rsp
	xorl	%ebp, %ebp
	testq	%rdi, %rdi
	jnz	2f
	call	hammer_time		/* BSP: (0, ncpus), does not return */
	jmp	park
2:	call	init_secondary		/* AP: (cpu, ncpus), does not return */
park:	cli
	hlt
	jmp	park
	.size	_start, . - _start

	.data
	.globl	ap_go
	.p2align 2
ap_go:	.long	0
