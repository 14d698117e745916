/*
 * dbrules: debug-exception rules from SDM vol 3 ch. 17 and 6.12, one case each, written
 * from the manual.  Each case records what the #DB / #UD handler saw on its stack (EIP,
 * EFLAGS) and in DR6, and prints it; kmain fails if a case breaks the manual.
 *
 *   ud2     a fault pushes RF=1 in the EFLAGS image (SDM 17.3.1.1)
 *   step    POPF sets TF: one #DB after the next instruction, DR6.BS=1 (SDM 17.3.1.4)
 *   bp      DR0 instruction breakpoint: a fault, EIP = the address, RF pushed as it was
 *           (0), DR6.B0=1; the handler sets RF so the instruction runs (SDM 17.3.1.1)
 *   icebp   INT1: a trap, EIP after the F1 byte, TF and RF cleared in the handler
 *   movss   TF single-step after MOV SS is held for one instruction (SDM 6.8.3)
 *   wbp     DR1 data write breakpoint: a trap after the write, DR6.B1=1 (SDM 17.3.1.2)
 *   sti     a self-IPI pending under IF=0 waits for the instruction after STI (SDM 6.8.3)
 *   gd      DR7.GD: MOV DR faults with DR6.BD=1, RF=1 pushed (SDM 17.2.4, 17.3.1.1)
 *
 * Built four times, so that `nitdbg diff --qemu` meets a different rule first:
 * dbrules.elf runs the cases in this order without gd, dbicebp.elf (-DICEBP_FIRST) runs
 * icebp first, dbgd.elf (-DGD_FIRST) runs gd first, dbsti.elf (-DSTI_FIRST) runs sti
 * first.
 */
#include "lib.h"

struct hit { u32 eip, eflags, dr6; };
#define MAXHITS 8
struct hit hits[MAXHITS];
volatile u32 nhits;

/* The #DB handler: records the frame and DR6, clears DR6, clears TF in the frame, sets RF
 * in it when DR6.B0 says an instruction breakpoint (as software must, SDM 17.3.1.1).
 * The #UD handler records the frame and steps over the two-byte UD2. */
__asm__(
	".text\n"
	".globl db_entry, ud_entry, int_entry\n"
	"db_entry:\n"
	"	pushl %eax\n"
	"	pushl %ebx\n"
	"	movl nhits, %ebx\n"
	"	imull $12, %ebx\n"
	"	movl 8(%esp), %eax\n"
	"	movl %eax, hits(%ebx)\n"
	"	movl 16(%esp), %eax\n"
	"	movl %eax, hits+4(%ebx)\n"
	"	movl %dr6, %eax\n"
	"	movl %eax, hits+8(%ebx)\n"
	"	incl nhits\n"
	"	andl $~0x100, 16(%esp)\n"
	"	testl $1, %eax\n"
	"	jz 1f\n"
	"	orl $0x10000, 16(%esp)\n"
	"1:	xorl %eax, %eax\n"
	"	movl %eax, %dr6\n"
	"	popl %ebx\n"
	"	popl %eax\n"
	"	iret\n"
	"ud_entry:\n"
	"	pushl %eax\n"
	"	pushl %ebx\n"
	"	movl nhits, %ebx\n"
	"	imull $12, %ebx\n"
	"	movl 8(%esp), %eax\n"
	"	movl %eax, hits(%ebx)\n"
	"	movl 16(%esp), %eax\n"
	"	movl %eax, hits+4(%ebx)\n"
	"	movl $0, hits+8(%ebx)\n"
	"	incl nhits\n"
	"	addl $2, 8(%esp)\n"
	"	popl %ebx\n"
	"	popl %eax\n"
	"	iret\n"
	"int_entry:\n"
	"	pushl %eax\n"
	"	pushl %ebx\n"
	"	movl nhits, %ebx\n"
	"	imull $12, %ebx\n"
	"	movl 8(%esp), %eax\n"
	"	movl %eax, hits(%ebx)\n"
	"	movl 16(%esp), %eax\n"
	"	movl %eax, hits+4(%ebx)\n"
	"	movl $0, hits+8(%ebx)\n"
	"	incl nhits\n"
	"	movl $0, 0xfee000b0\n"
	"	popl %ebx\n"
	"	popl %eax\n"
	"	iret\n");
extern char db_entry[], ud_entry[], int_entry[];
extern char ud_at[], step_after[], bp_at[], icebp_after[], movss_after[], gd_at[],
	wbp_after[], sti_after[];
volatile u32 wvar;

struct gate { u16 off_lo, sel; u8 zero, type; u16 off_hi; } __attribute__((packed));
static struct gate idt[0x41] __attribute__((aligned(8)));

static void gate(int v, char *entry)
{
	u32 a = (u32)entry;

	idt[v].off_lo = a & 0xffff;
	idt[v].sel = 0x08;
	idt[v].zero = 0;
	idt[v].type = 0x8e;
	idt[v].off_hi = a >> 16;
}

static int bad;

static void show(const char *name, u32 n, u32 want_eip, u32 want_rf, u32 dr6_bits)
{
	struct hit *h = &hits[0];
	int ok = n == 1 && nhits == 1 && h->eip == want_eip &&
		 ((h->eflags >> 16) & 1) == want_rf && (h->dr6 & 0xf00f) == dr6_bits;

	puts("dbrules: ");
	puts(name);
	puts(": hits ");
	putdec(nhits);
	puts(" eip ");
	puthex(h->eip);
	puts(" eflags ");
	puthex(h->eflags);
	puts(" dr6 ");
	puthex(h->dr6);
	puts(ok ? " ok\n" : " WRONG\n");
	bad |= !ok;
	nhits = 0;
}

/* INT1: #DB as a trap (SDM vol 3 table 17-2), EIP after the F1 byte, no DR6 bit. */
static void icebp(void)
{
	__asm__ volatile(".byte 0xf1\n"
			 "icebp_after: nop" ::: "memory");
	show("icebp", 1, (u32)icebp_after, 0, 0);
}

#ifdef GD_FIRST
/* DR7.GD: a MOV DR raises a #DB fault before it executes, DR6.BD=1, GD cleared (SDM
 * 17.2.4); as a fault other than an instruction breakpoint it pushes RF=1 (17.3.1.1). */
static void gd(void)
{
	__asm__ volatile("movl $0x2000, %%eax; movl %%eax, %%dr7\n"
			 "gd_at: movl %%dr0, %%eax\n"
			 "xorl %%eax, %%eax; movl %%eax, %%dr7" ::: "eax", "memory");
	show("gd", 1, (u32)gd_at, 1, 0x2000);
}
#endif

/* A data write breakpoint (DR1, R/W=01, LEN=11): a #DB trap after the write, EIP the next
 * instruction, DR6.B1=1 (SDM 17.3.1.2). */
static void wbp(void)
{
	__asm__ volatile("movl $wvar, %%eax; movl %%eax, %%dr1\n"
			 "movl $0x00d00004, %%eax; movl %%eax, %%dr7\n"
			 "movl $7, wvar\n"
			 "wbp_after: xorl %%eax, %%eax; movl %%eax, %%dr7" ::: "eax", "memory");
	show("wbp", 1, (u32)wbp_after, 0, 0x0002);
}

#ifdef STI_FIRST
/* A self-IPI pending while IF=0 is taken after the instruction that follows STI (SDM
 * 6.8.3): the handler sees EIP past the NOP. */
static void sti_shadow(void)
{
	pic_mask(0xff, 0xff);		/* no 8259 timer tick (QEMU's BIOS left it running) */
	lapic_enable();
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, (1u << 18) | 0x40);	/* shorthand self, fixed, vector 0x40 */
	__asm__ volatile("sti\n"
			 "nop\n"
			 "sti_after: cli" ::: "memory");
	show("sti", 1, (u32)sti_after, 0, 0);
}
#endif

u32 kmain(void);
u32 kmain(void)
{
	struct { u16 limit; u32 base; } __attribute__((packed)) desc = { sizeof(idt) - 1,
									  (u32)idt };

	gate(1, db_entry);
	gate(6, ud_entry);
	gate(0x40, int_entry);
	__asm__ volatile("lidt %0" :: "m"(desc));
	__asm__ volatile("xorl %%eax, %%eax; movl %%eax, %%dr6" ::: "eax");

	nhits = 0;
#if defined(ICEBP_FIRST)
	icebp();
#elif defined(GD_FIRST)
	gd();
#elif defined(STI_FIRST)
	sti_shadow();
#endif
	__asm__ volatile("ud_at: ud2" ::: "memory");
	show("ud2", 1, (u32)ud_at, 1, 0);

	__asm__ volatile("pushfl; orl $0x100, (%%esp); popfl\n"
			 "nop\n"
			 "step_after: nop" ::: "memory", "cc");
	show("step", 1, (u32)step_after, 0, 0x4000);

	__asm__ volatile("movl $bp_at, %%eax; movl %%eax, %%dr0\n"
			 "movl $0x1, %%eax; movl %%eax, %%dr7\n"
			 "bp_at: nop\n"
			 "xorl %%eax, %%eax; movl %%eax, %%dr7" ::: "eax", "memory");
	show("bp", 1, (u32)bp_at, 0, 0x0001);


	__asm__ volatile("movw %%ss, %%ax\n"
			 "pushfl; orl $0x100, (%%esp); popfl\n"
			 "movw %%ax, %%ss\n"
			 "nop\n"
			 "movss_after: nop" ::: "eax", "memory", "cc");
	show("movss", 1, (u32)movss_after, 0, 0x4000);
#ifndef ICEBP_FIRST
	icebp();
#endif
	wbp();

	return bad ? FAIL : PASS;
}
