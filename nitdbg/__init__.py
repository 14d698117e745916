"""nitdbg: see, step by step, how a hypervisor on AMD SVM tracks NMI blocking, and prove that
a guest debugger single-stepping across the NMI's IRET never loses an instruction."""

__version__ = "0.1.0"
