/*
 * The I/O APIC at 0xfec00000 (82093AA datasheet): an ISA IRQ is routed to a
 * vector on the BSP, edge triggered and active high as ISA lines are.  The
 * PC wiring puts ISA IRQ n on pin n (except IRQ 0, on pin 2).
 */
#include "kern.h"

#define	IOAPIC_BASE	0xfec00000UL
#define	IOAPIC_IOREGSEL	0x00
#define	IOAPIC_IOWIN	0x10
#define	IOAPIC_REDTBL	0x10	/* pin n: registers 0x10 + 2n (low), 0x11 + 2n (high) */

static volatile uint32_t *const ioapic = (volatile uint32_t *)IOAPIC_BASE;

static void ioapic_write(unsigned reg, uint32_t v)
{
	ioapic[IOAPIC_IOREGSEL / 4] = reg;
	ioapic[IOAPIC_IOWIN / 4] = v;
}

/* Fixed delivery, physical destination APIC ID 0, edge, active high, unmasked. */
void ioapic_route_isa(int irq, int vector)
{
	int pin = irq == 0 ? 2 : irq;

	ioapic_write(IOAPIC_REDTBL + 2 * pin + 1, 0);
	ioapic_write(IOAPIC_REDTBL + 2 * pin, (uint32_t)vector);
}
