/*
 * The event timer and tickless idle (FreeBSD kern_clocksource.c, simplified).
 *
 * While a CPU runs, its LAPIC timer ticks periodically at hz.  Before an idle
 * CPU halts (cpu_idle), the timer is switched to one-shot and programmed for
 * the next event: there are no callouts here, so that is the hardclock skip
 * limit of getnextcpuevent(): an idle CPU skips at most hz/2 - 1 ticks, i.e.
 * it wakes at least twice a second.  The ticks skipped are accounted to
 * `ticks` when the CPU wakes (hardclock with a count), from the TSC as
 * timecounter; the TSC frequency is calibrated against the LAPIC tick at boot.
 * kern.eventtimer.idletick=1 keeps the tick in idle, as in FreeBSD.
 */
#include "kern.h"

#define	CLK_PERIODIC	0	/* the hz tick runs */
#define	CLK_IDLE	1	/* one-shot armed for the idle deadline */
#define	CLK_EXPIRED	2	/* that one-shot fired; the CPU is still in the idle loop */
#define	CLK_REALIGN	3	/* one-shot to the next tick's phase, then periodic */

const int hz = HZ;
int idletick;			/* sysctl kern.eventtimer.idletick */
volatile int ticks;		/* sysctl kern.ticks */

static uint64_t tsc_tick;	/* TSC counts per tick, 0 until calibrated */
static uint64_t tick_phase;	/* TSC of a tick interrupt on the BSP's grid */
static uint64_t nexthard;	/* TSC at which the next tick is due (BSP) */
static volatile int calib_state;
static uint64_t calib_tsc;

static struct {
	int mode;
} pcpu_clock[MAXCPU];

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * Measure the TSC over one LAPIC tick: halt through two tick interrupts and
 * read the TSC in each.  Both wake from the same HLT on the same path, so the
 * difference is exactly one period.
 */
void clock_calibrate(void)
{
	calib_state = 1;
	for (;;) {
		disable_intr();
		if (calib_state == 3)
			break;
		cpu_idle_acpi();
	}
}

/*
 * hardclock(cnt): account every tick boundary the TSC has passed (BSP).
 * nexthard is never more than a period after the last time accounted, so
 * now + tsc_tick - nexthard cannot underflow; no branch depends on the time
 * read, so time alone (exit costs, delays) never changes the instructions the
 * guest executes here, only the count.
 */
static void hardclock_sync(uint64_t now)
{
	uint64_t n = (now + tsc_tick - nexthard) / tsc_tick;

	nexthard += n * tsc_tick;
	ticks += (int)n;
}

/*
 * The next time after `now` at which a tick interrupt falls on the BSP's
 * grid, `skip` ticks further on.  Tick boundaries (nexthard) lie half a
 * period before the interrupts, so an interrupt a little early or late still
 * counts exactly its own tick.
 */
static uint64_t next_tick_intr(uint64_t now, uint64_t skip)
{
	return tick_phase + ((now - tick_phase) / tsc_tick + 1 + skip) * tsc_tick;
}

static void arm_oneshot_until(uint64_t now, uint64_t when)
{
	uint64_t counts = ((when - now) * LAPIC_TIMER_COUNT + tsc_tick - 1) / tsc_tick;

	lapic_timer_oneshot(counts > 0xffffffffUL ? 0xffffffffU : (uint32_t)counts);
}

/* The LAPIC timer interrupt, with interrupts disabled. */
void clock_intr(void)
{
	int cpu = curcpu();
	uint64_t now = rdtsc();

	if (tsc_tick == 0) {			/* before calibration: count interrupts */
		if (cpu != 0)
			return;
		ticks++;
		if (calib_state == 1) {
			calib_tsc = now;
			calib_state = 2;
		} else if (calib_state == 2) {
			tsc_tick = now - calib_tsc;
			tick_phase = now;
			nexthard = now + tsc_tick / 2;
			calib_state = 3;
		}
		return;
	}
	if (cpu == 0)
		hardclock_sync(now);
	if (pcpu_clock[cpu].mode == CLK_IDLE)
		pcpu_clock[cpu].mode = CLK_EXPIRED;
	else if (pcpu_clock[cpu].mode == CLK_REALIGN) {
		lapic_timer_periodic(LAPIC_TIMER_COUNT);
		pcpu_clock[cpu].mode = CLK_PERIODIC;
	}
}

/* cpu_idleclock: the timer to the idle deadline (interrupts disabled). */
static void cpu_idleclock(int cpu)
{
	uint64_t now = rdtsc();

	arm_oneshot_until(now, next_tick_intr(now, (uint64_t)(hz / 2 - 1)));
	pcpu_clock[cpu].mode = CLK_IDLE;
}

/*
 * cpu_activeclock: leaving the idle loop, account the ticks slept through and
 * resume the periodic tick at the grid's next interrupt (interrupts disabled).
 */
void cpu_activeclock(void)
{
	int cpu = curcpu();
	uint64_t now;

	if (pcpu_clock[cpu].mode == CLK_PERIODIC || pcpu_clock[cpu].mode == CLK_REALIGN)
		return;
	now = rdtsc();
	if (cpu == 0)
		hardclock_sync(now);
	arm_oneshot_until(now, next_tick_intr(now, 0));
	pcpu_clock[cpu].mode = CLK_REALIGN;
}

/*
 * One pass of the idle loop, entered with interrupts disabled after the
 * caller found nothing to do: program the idle deadline, then halt with the
 * STI shadow covering the HLT.  Returns with interrupts enabled, after the
 * interrupt that woke the CPU.  The caller calls cpu_activeclock() when it
 * leaves the idle loop.
 */
void cpu_idle(void)
{
	int cpu = curcpu();

	if (tsc_tick != 0 && !idletick)
		cpu_idleclock(cpu);
	else if (pcpu_clock[cpu].mode != CLK_PERIODIC)
		cpu_activeclock();
	cpu_idle_acpi();
}
