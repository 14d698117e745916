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
#define	MB_AP_PAGE	0x9000		/* QEMU AP start-up page (real mode) */

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

	/*
	 * QEMU starts only the BSP: wake the APs (INIT, SIPI, SIPI through the
	 * xAPIC, paging still off) into mb_ap16, copied to phys MB_AP_PAGE.
	 * They count themselves in; ncpus = 1 + how many arrived.
	 */
	movl	$PHYS(mb_ap16), %esi
	movl	$MB_AP_PAGE, %edi
3:	movb	(%esi), %al
	movb	%al, (%edi)
	incl	%esi
	incl	%edi
	cmpl	$PHYS(mb_ap16_end), %esi
	jb	3b
	movl	$0x000c4500, 0xfee00300	/* INIT, all excluding self */
	call	mb_delay
	movl	$(0x000c4600 | (MB_AP_PAGE >> 12)), 0xfee00300	/* SIPI */
	call	mb_delay
	movl	$(0x000c4600 | (MB_AP_PAGE >> 12)), 0xfee00300
	call	mb_delay
	xorl	%ebx, %ebx		/* BSP: cpu 0 */

	/* Common to BSP and APs: EBX = cpu id. */
mb_to_long:
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

/* Bounded busy wait (QEMU only: no timer is set up yet). */
mb_delay:
	movl	$0x200000, %ecx
4:	decl	%ecx
	jnz	4b
	ret

/* An AP, in 32-bit protected mode: take the next cpu id, then as the BSP. */
mb_ap32:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movl	$1, %ebx
	lock xaddl %ebx, PHYS(mb_ncpus)
	jmp	mb_to_long

/* The AP start-up page (copied below 1 MiB): real mode -> protected mode. */
	.code16
mb_ap16:
	cli
	xorw	%ax, %ax
	movw	%ax, %ds
	lgdtl	MB_AP_PAGE + (mb_ap16_gdtdesc - mb_ap16)
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	ljmpl	$0x18, $PHYS(mb_ap32)
	.p2align 2
mb_ap16_gdtdesc:
	.word	mb_gdtdesc - mb_gdt - 1
	.long	PHYS(mb_gdt)
mb_ap16_end:

	.code64
mb_long:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	%ebx, %edi		/* cpu id */
	movl	PHYS(mb_ncpus), %esi	/* final once the BSP gets here */
	movq	%rdi, %rax		/* the loader's boot stacks: 16 KiB per CPU */
	shlq	$14, %rax
	movl	$0x80000, %esp
	subq	%rax, %rsp
	movabsq	$_start, %rax
	jmp	*%rax

	.p2align 3
mb_gdt:
	.quad	0
	.quad	0x00af9b000000ffff	/* 0x08: code64, attrib 0xa9b */
	.quad	0x00cf93000000ffff	/* 0x10: data, attrib 0xc93 */
	.quad	0x00cf9b000000ffff	/* 0x18: code32, for the APs' way up */
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
mb_ncpus: .long	1	/* QEMU boot: CPUs that came up (BSP + APs) */
