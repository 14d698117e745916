/*
 * rtc_uf: the MC146818's update cycle (Motorola MC146818A datasheet).  Once a second the
 * update cycle ends and sets UF in register C; with UIE in register B that raises IRQF and
 * IRQ 8, routed here through I/O APIC pin 8 to the BSP as a fixed, edge-triggered
 * interrupt.  Each update-ended interrupt finds the seconds register one more than at the
 * last one, and UIP in register A clear (the cycle has just ended).  Then, with only the
 * periodic interrupt (PIE, 1024 Hz) enabled, UF is still flagged in register C (whether or
 * not UIE is set).  When UIP rises before a cycle is not checked here: QEMU holds it for
 * the last 244 us of a second, the datasheet for tBUC + tUC = 2228 us (nitdbg), and in
 * trials on QEMU 7.2 a poll timed by the 8254 from an update-ended interrupt to 1.5 ms
 * before the next update missed QEMU's window every time; tests/test_vmm_pc_devices.py
 * checks nitdbg's UIP.
 * Register C's AF depends on the wall clock under QEMU: it is masked out.
 */
#include "lib.h"

#define VEC_RTC		0x48
#define RTC_PIN		8
#define REG_A_UIP	0x80
#define REG_B_PIE	0x40
#define REG_B_UIE	0x10
#define REG_B_DM	0x04		/* binary, not BCD */
#define REG_B_24H	0x02
#define REG_C_IRQF	0x80
#define REG_C_UF	0x10

static volatile u32 updates, uip_after_update, bad_step;
static volatile u32 last_sec = 0xff, c_update;

static void rtc_intr(u32 vector)
{
	u8 c = cmos_read(0x0c);
	u8 a = cmos_read(0x0a);

	(void)vector;
	if (c & REG_C_UF) {
		u8 sec = cmos_read(0x00);

		if (last_sec != 0xff && sec != (last_sec + 1) % 60)
			bad_step++;
		last_sec = sec;
		if (a & REG_A_UIP)
			uip_after_update++;
		c_update |= c & (REG_C_IRQF | 0x40 | REG_C_UF);
		updates++;
	}
	lapic_eoi();
}

static void wait_updates(u32 n)
{
	u32 start = updates;

	sti();
	while (updates - start < n)
		hlt();
	cli();
}

int kmain(void);
int kmain(void)
{
	u32 ok = 1;

	idt_init();
	pic_mask(0xff, 0xff);
	lapic_enable();
	set_handler(VEC_RTC, rtc_intr);
	ioapic_route(RTC_PIN, RTE_DM_FIXED | VEC_RTC, 0);

	/* 32.768 kHz time base, no periodic rate: only the update cycle interrupts. */
	cmos_write(0x0a, 0x20);
	cmos_write(0x0b, REG_B_UIE | REG_B_DM | REG_B_24H);
	(void)cmos_read(0x0c);
	wait_updates(4);
	puts("rtc_uf: UIE: ");
	putdec(updates);
	puts(" update-ended interrupts on vector 0x48, register C IRQF|PF|UF ");
	puthex(c_update);
	puts("\n");
	puts("rtc_uf: seconds advanced by 1 between them: ");
	puts(bad_step ? "no" : "yes");
	puts(", UIP set in the handler: ");
	putdec(uip_after_update);
	puts("\n");
	ok &= updates == 4 && !bad_step && !uip_after_update && c_update == 0x90;

	/* PIE only, 1024 Hz (RS = 6): UF is still flagged. */
	cmos_write(0x0b, REG_B_PIE | REG_B_DM | REG_B_24H);
	cmos_write(0x0a, 0x26);
	(void)cmos_read(0x0c);
	c_update = 0;
	wait_updates(1);
	puts("rtc_uf: without UIE: UF flagged with register C IRQF|PF|UF ");
	puthex(c_update);
	puts("\n");
	ok &= c_update == 0xd0;

	cmos_write(0x0b, REG_B_DM | REG_B_24H);
	(void)cmos_read(0x0c);
	return ok ? PASS : FAIL;
}
