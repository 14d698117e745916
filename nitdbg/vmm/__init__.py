"""The bhyve-like hypervisor: vCPU loop, NMI blocking policies, devices, KTR, stats, sysctl."""
