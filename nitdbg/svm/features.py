"""The SVM feature leaf the modelled processor reports: CPUID Fn8000_000A (AMD APM vol 3
appendix E.4.9). EAX = SVM revision, EBX = number of ASIDs, EDX = feature bits."""

from __future__ import annotations

SVM_REVISION = 1
SVM_NUM_ASIDS = 32768
# EDX bits (Linux arch/x86/include/asm/cpufeatures.h word 15)
SVM_FEATURE_NPT = 0
SVM_FEATURE_NRIPS = 3
SVM_FEATURE_VNMI = 25          # X86_FEATURE_VNMI, CPUID(0x8000000A, 0, EDX, 25)
SVM_FEATURES_EDX = (1 << SVM_FEATURE_NPT) | (1 << SVM_FEATURE_NRIPS) | (1 << SVM_FEATURE_VNMI)


def svm_cpuid_8000000a() -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) of CPUID 8000_000A as the host reads it."""
    return SVM_REVISION, SVM_NUM_ASIDS, 0, SVM_FEATURES_EDX
