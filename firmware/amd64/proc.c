/*
 * The one user process (the shell), its system calls and its signals.
 * System calls use int $0x80: number in %rax, arguments in %rdi, %rsi,
 * %rdx, %r10, %r8, %r9 (FreeBSD's order); the result, or -errno, in %rax.
 */
#include "kern.h"

#define	SYS_exit		1
#define	SYS_read		3
#define	SYS_write		4
#define	SYS_getpid		20
#define	SYS_sigaction		416	/* simplified: (sig, handler) */
#define	SYS___sysctlbyname	570	/* (name, namelen, oldp, oldlenp, newp, newlen); kind in %rdx */

struct proc {
	int p_pid;
	char p_comm[8];
	uint64_t p_sigint_handler;	/* user address, 0 = default action */
	int p_idle;			/* blocked in read: the CPU runs the idle loop */
};
#define	PID_FIRST_SH	10
static struct proc proc0 = { 0, "sh", 0, 0 };
extern char user_image_start[], user_start[];

const char *curproc_name(int cpu, int *pid)
{
	static char idle_name[] = "idle: cpu0";

	if (cpu == 0 && proc0.p_pid != 0 && !proc0.p_idle) {
		*pid = proc0.p_pid;
		return proc0.p_comm;
	}
	idle_name[9] = (char)('0' + cpu);
	*pid = 11;
	return idle_name;
}

/* A new shell process in the frame: fresh registers, stack, pid. */
void exec_shell(struct trapframe *tf)
{
	memset(tf, 0, sizeof(*tf));
	tf->tf_rip = USER_BASE + ((uintptr_t)user_start - (uintptr_t)user_image_start);
	tf->tf_rsp = USER_STACK_TOP - 8;	/* as after a call: keeps the ABI alignment */
	tf->tf_cs = GUCODE_SEL;
	tf->tf_ss = GUDATA_SEL;
	tf->tf_ds = tf->tf_es = GUDATA_SEL;
	tf->tf_rflags = PSL_USER;
	tf->tf_flags = TF_HASSEGS;
	tf->tf_trapno = IDT_SYSCALL;
	proc0.p_pid = proc0.p_pid == 0 ? PID_FIRST_SH : proc0.p_pid + 1;
	proc0.p_sigint_handler = 0;
	proc0.p_idle = 0;
	tty_sigint = 0;
}

/* Default action of a fatal signal: report (kern.logsigexit) and restart sh. */
void sigexit(struct trapframe *tf, int sig)
{
	printf("pid %d (%s), jid 0, uid 0: exited on signal %d\n", proc0.p_pid,
	    proc0.p_comm, sig);
	exec_shell(tf);
}

/* On the way back to user mode: deliver a posted SIGINT. */
void userret(struct trapframe *tf)
{
	if (!tty_sigint)
		return;
	tty_sigint = 0;
	if (proc0.p_sigint_handler == 0) {
		sigexit(tf, SIGINT);
		return;
	}
	/* The shell's handler never returns: start it on a fresh stack. */
	tf->tf_rip = proc0.p_sigint_handler;
	tf->tf_rsp = USER_STACK_TOP - 8;
	tf->tf_rdi = SIGINT;
}

static int useracc(uint64_t addr, uint64_t len)
{
	return addr >= USER_BASE && addr <= USER_STACK_TOP && len <= USER_STACK_TOP - addr;
}

/* read(2) on the console: block (idle) until the tty has a complete line. */
static int64_t sys_read(uint64_t buf, uint64_t len)
{
	int n;

	if (!useracc(buf, len))
		return -EFAULT;
	for (;;) {
		disable_intr();
		if (tty_sigint) {
			proc0.p_idle = 0;
			cpu_activeclock();
			return -EINTR;
		}
		n = tty_read((char *)buf, len);
		if (n > 0) {
			proc0.p_idle = 0;
			cpu_activeclock();
			return n;
		}
		proc0.p_idle = 1;
		cpu_idle();
	}
}

static int64_t sys_sysctlbyname(struct trapframe *tf)
{
	char name[64];
	uint64_t uname = tf->tf_rdi, namelen = tf->tf_rsi;
	uint64_t oldp = tf->tf_rdx, oldlenp = tf->tf_r10, newp = tf->tf_r8, newlen = tf->tf_r9;
	size_t oldlen = 0;
	int error, kind = 0;

	if (namelen >= sizeof(name) || !useracc(uname, namelen))
		return -EINVAL;
	memcpy(name, (void *)uname, namelen);
	name[namelen] = '\0';
	if (oldp != 0) {
		if (!useracc(oldlenp, 8))
			return -EFAULT;
		oldlen = *(uint64_t *)oldlenp;
		if (!useracc(oldp, oldlen))
			return -EFAULT;
	}
	if (newp != 0 && !useracc(newp, newlen))
		return -EFAULT;
	error = kern_sysctlbyname(name, (void *)oldp, oldp ? &oldlen : NULL, (void *)newp,
	    newlen, &kind);
	if (error != 0)
		return -error;
	if (oldp != 0)
		*(uint64_t *)oldlenp = oldlen;
	tf->tf_rdx = (uint64_t)kind;
	return 0;
}

void syscall(struct trapframe *tf)
{
	int64_t ret;

	switch (tf->tf_rax) {
	case SYS_exit:
		exec_shell(tf);		/* init starts a new shell */
		return;
	case SYS_read:
		ret = sys_read(tf->tf_rsi, tf->tf_rdx);
		break;
	case SYS_write:
		if (!useracc(tf->tf_rsi, tf->tf_rdx)) {
			ret = -EFAULT;
			break;
		}
		cons_write((const char *)tf->tf_rsi, tf->tf_rdx);
		ret = (int64_t)tf->tf_rdx;
		break;
	case SYS_getpid:
		ret = proc0.p_pid;
		break;
	case SYS_sigaction:
		if (tf->tf_rdi != SIGINT) {
			ret = -EINVAL;
			break;
		}
		proc0.p_sigint_handler = tf->tf_rsi;
		ret = 0;
		break;
	case SYS___sysctlbyname:
		ret = sys_sysctlbyname(tf);
		break;
	default:
		ret = -ENOSYS;
		break;
	}
	tf->tf_rax = (uint64_t)ret;
}
