/* Test-kernel library: port and MMIO access, debugcon output, the IDT, the LAPIC and
 * I/O APIC registers (SDM vol 3 ch. 11, 82093AA I/O APIC datasheet), the 8259A, the
 * 8254 and the MC146818 RTC. */
#ifndef LIB_H
#define LIB_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read(u32 a) { return *(volatile u32 *)a; }
static inline void mmio_write(u32 a, u32 v) { *(volatile u32 *)a = v; }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }

void puts(const char *s);
void putdec(u32 v);
void puthex(u32 v);

/* isa-debug-exit: QEMU exits with (v << 1) | 1; kmain's return value goes there. */
#define PASS 0
#define FAIL 1

typedef void (*handler_t)(u32 vector);
void set_handler(u32 vector, handler_t h);
void idt_init(void);

/* Local APIC (xAPIC MMIO). */
#define LAPIC		0xfee00000
#define LAPIC_ID	0x020
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LINT0	0x350
#define LAPIC_LINT1	0x360
static inline u32 lapic_read(u32 r) { return mmio_read(LAPIC + r); }
static inline void lapic_write(u32 r, u32 v) { mmio_write(LAPIC + r, v); }
static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }
void lapic_enable(void);

/* I/O APIC: IOREGSEL at +0, IOWIN at +0x10; IOAPICID 0, IOAPICVER 1, IOAPICARB 2,
 * IOREDTBL[n] at 0x10 + 2n (low) and 0x11 + 2n (high). */
#define IOAPIC		0xfec00000
#define IOREGSEL	0x00
#define IOWIN		0x10
#define RTE_MASKED	(1u << 16)
#define RTE_LEVEL	(1u << 15)
#define RTE_REMOTE_IRR	(1u << 14)
#define RTE_ACTIVE_LOW	(1u << 13)
#define RTE_DELIVS	(1u << 12)
#define RTE_LOGICAL	(1u << 11)
#define RTE_DM_FIXED	(0u << 8)
#define RTE_DM_LOWEST	(1u << 8)
#define RTE_DM_NMI	(4u << 8)
#define RTE_DM_EXTINT	(7u << 8)
u32 ioapic_read(u32 reg);
void ioapic_write(u32 reg, u32 v);
void ioapic_route(u32 pin, u32 low, u32 dest_apic_id);

/* MC146818 RTC: index port 0x70 (bit 7 = NMI disable on a PC), data 0x71. */
u8 cmos_read(u8 reg);
void cmos_write(u8 reg, u8 v);

/* 8259A pair: master 0x20/0x21, slave 0xa0/0xa1. */
void pic_init(u8 master_base, u8 slave_base);
void pic_mask(u8 master, u8 slave);

#endif
