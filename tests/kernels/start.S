/*
 * Common entry for the test kernels: multiboot v1 header, a flat GDT, 256 interrupt
 * stubs that call isr_dispatch(vector), and the AP start-up trampoline (real mode ->
 * protected mode) that smp.c copies below 1 MiB.
 */
#define MB_MAGIC	0x1badb002
#define MB_FLAGS	0x00000000

	.section .multiboot, "a"
	.p2align 2
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)

	.text
	.code32
	.globl	_start
_start:
	cli
	movl	$boot_stack_top, %esp
	lgdt	gdt_desc
	ljmp	$0x08, $1f
1:	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %gs
	movw	%ax, %ss
	call	kmain
	/* kmain returns its verdict: exit with it through isa-debug-exit, at QEMU's
	 * default iobase 0x501 and at 0xf4 (iobase=0xf4, nitdbg's documented port). */
	movw	$0x501, %dx
	outb	%al, %dx
	outl	%eax, $0xf4
2:	cli
	hlt
	jmp	2b

/* Interrupt stubs: push the vector, save the GPRs, call isr_dispatch(vector). */
	.p2align 4
	.globl	isr_stubs
isr_stubs:
	vec = 0
	.rept	256
	.p2align 3
	pushl	$vec
	jmp	isr_common
	vec = vec + 1
	.endr

isr_common:
	pushal
	cld
	pushl	32(%esp)		/* the vector */
	call	isr_dispatch
	addl	$4, %esp
	popal
	addl	$4, %esp
	iret

/* AP start-up page: copied to AP_PAGE (smp.c); CS = AP_PAGE >> 4, IP = 0. */
	.code16
	.globl	ap_tramp, ap_tramp_end
ap_tramp:
	cli
	movw	%cs, %ax		/* real mode: DS base = CS base = AP_PAGE */
	movw	%ax, %ds
	lgdtl	ap_gdtdesc - ap_tramp
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	ljmpl	$0x08, $ap32
	.p2align 2
ap_gdtdesc:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_tramp_end:

	.code32
ap32:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movl	$1, %ebx
	lock xaddl %ebx, ap_next		/* this AP's index, 0.. */
	movl	%ebx, %eax
	incl	%eax
	shll	$12, %eax
	leal	ap_stacks(%eax), %esp
	pushl	%ebx
	call	ap_main
3:	cli
	hlt
	jmp	3b

	.data
	.p2align 3
gdt:
	.quad	0
	.quad	0x00cf9b000000ffff	/* 0x08: flat code32 */
	.quad	0x00cf93000000ffff	/* 0x10: flat data */
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_next:
	.long	0

	.bss
	.p2align 12
	.space	16384
boot_stack_top:
	.globl	ap_stacks
ap_stacks:
	.space	4096 * 16
