/*
 * nit i386 test kernel: the "tsnmi" module of the seed's test plan. Loading it
 * routes NMIs through a task gate (IDT vector 2 -> an NMI TSS), so the NMI
 * handler's IRET is a task-switching IRET (EFLAGS.NT=1) that a hypervisor cannot
 * single-step across: bhyve unblocks vNMIs "speculatively" for it.
 */
#include "kernel.h"

volatile uint32_t debug_tsnmi;
static struct i386tss nmi_tss;
static uint8_t nmi_stack[4096] __attribute__((aligned(16)));

int tsnmi_load(void)
{
	memset(&nmi_tss, 0, sizeof(nmi_tss));
	nmi_tss.tss_eip = (uint32_t)tsnmi_handler;
	nmi_tss.tss_eflags = 0x2;		/* IF=0; the task switch sets NT */
	nmi_tss.tss_esp = (uint32_t)(nmi_stack + sizeof(nmi_stack));
	nmi_tss.tss_esp0 = nmi_tss.tss_esp;
	nmi_tss.tss_ss0 = GSEL_DATA;
	nmi_tss.tss_cs = GSEL_CODE;
	nmi_tss.tss_ss = nmi_tss.tss_ds = nmi_tss.tss_es = GSEL_DATA;
	nmi_tss.tss_fs = nmi_tss.tss_gs = GSEL_DATA;
	nmi_tss.tss_cr3 = rcr3();
	nmi_tss.tss_ioopt = sizeof(nmi_tss);	/* no I/O bitmap */
	gdt_set_tss(GSEL_NMITSS, &nmi_tss);
	setidt_task(IDT_NMI, GSEL_NMITSS);
	printf("tsnmi: loaded, NMI task gate -> TSS selector 0x%x, handler 0x%x\n",
	    GSEL_NMITSS, (uint32_t)tsnmi_handler);
	return 0;
}

int tsnmi_unload(void)
{
	setidt_intr(IDT_NMI, Xnmi);
	printf("tsnmi: unloaded\n");
	return 0;
}
