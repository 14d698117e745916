/*
 * smp: the BSP starts the APs as a PC BIOS/OS does (SDM vol 3 8.4.4.1): INIT to all
 * excluding self, then STARTUP twice with the start-up page's vector.  Each AP comes up
 * in real mode at AP_PAGE, enters protected mode (start.S ap_tramp) and records its
 * local APIC ID.  Run with NCPUS vCPUs (nitdbg --vcpus N / qemu -smp N).
 */
#include "lib.h"

#define AP_PAGE		0x8000		/* SIPI vector 0x08 */
#define ICR_INIT	0x000c4500	/* all excluding self, level assert, INIT */
#define ICR_STARTUP	(0x000c4600 | (AP_PAGE >> 12))

extern char ap_tramp[], ap_tramp_end[];
static volatile u32 arrived;
static volatile u32 ap_ids[16];

void ap_main(u32 index);
void ap_main(u32 index)
{
	ap_ids[index & 15] = lapic_read(LAPIC_ID) >> 24;
	__atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
}

#define VEC_TIMER	0x30

static void timer(u32 vector)
{
	(void)vector;
	lapic_eoi();
}

static void icr_send(u32 low)
{
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, low);
	while (lapic_read(LAPIC_ICR_LO) & (1u << 12))	/* delivery status: send pending */
		pause();
}

static void delay(u32 n)
{
	while (n--)
		__asm__ volatile("" ::: "memory");
}

int kmain(void);
int kmain(void)
{
	u32 i, j, spins = 0;
	u8 *dst = (u8 *)AP_PAGE;

	for (i = 0; i < (u32)(ap_tramp_end - ap_tramp); i++)
		dst[i] = (u8)ap_tramp[i];
	idt_init();
	pic_mask(0xff, 0xff);
	lapic_enable();
	set_handler(VEC_TIMER, timer);
	ioapic_route(2, RTE_DM_FIXED | VEC_TIMER, 0);
	puts("smp: BSP apic id ");
	putdec(lapic_read(LAPIC_ID) >> 24);
	puts(", starting APs\n");
	icr_send(ICR_INIT);
	delay(1000);
	icr_send(ICR_STARTUP);
	delay(1000);
	icr_send(ICR_STARTUP);
	/* Wait for the APs: at most two 8254 mode-0 runs of 65535 ticks (110 ms), each
	 * ending in IRQ 0 through I/O APIC pin 2, halted in between. */
	for (spins = 0; spins < 2 && arrived < NCPUS - 1; spins++) {
		outb(0x43, 0x30);			/* channel 0, LSB then MSB, mode 0 */
		outb(0x40, 0xff);
		outb(0x40, 0xff);
		sti_hlt();
		cli();
	}
	ioapic_route(2, RTE_MASKED, 0);
	/* Report in APIC-ID order: which AP won which index depends on timing. */
	for (i = 0; i < arrived; i++)
		for (j = i + 1; j < arrived; j++)
			if (ap_ids[j] < ap_ids[i]) {
				u32 t = ap_ids[i];
				ap_ids[i] = ap_ids[j];
				ap_ids[j] = t;
			}
	puts("smp: ");
	putdec(arrived);
	puts(" APs started, apic ids");
	for (i = 0; i < arrived; i++) {
		puts(" ");
		putdec(ap_ids[i]);
	}
	puts("\n");
	return arrived == NCPUS - 1 ? PASS : FAIL;
}
