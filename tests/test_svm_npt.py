"""Nested paging: real 4-level tables in host memory, #NPF EXITINFO1 bits (APM vol 2 15.25)."""

import pytest

from nitdbg.svm.exitcodes import NPF_GPA, NPF_GPT, NPF_ID, NPF_P, NPF_RSV, NPF_RW, NPF_US
from nitdbg.svm.npt import (
    ACC_FETCH,
    ACC_USER,
    ACC_WRITE,
    PTE_A,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    NestedPageFault,
    NestedPageTable,
    NptError,
)

RAM_HPA = 0x1_0000_0000   # where the test puts guest RAM in host-physical space


def npt_with_ram(size=0x10000, **kw):
    npt = NestedPageTable()
    npt.map(0, RAM_HPA, size, **kw)
    return npt


def fault_of(fn):
    with pytest.raises(NestedPageFault) as ei:
        fn()
    return ei.value


def test_mapped_page_translates_with_the_offset_kept():
    npt = npt_with_ram()
    assert npt.translate(0x1234) == RAM_HPA + 0x1234
    assert npt.translate(0xFFFF, ACC_WRITE) == RAM_HPA + 0xFFFF


def test_translation_walks_real_tables_in_host_memory():
    npt = npt_with_ram()
    steps = npt.walk_steps(0x3000)
    assert [s.level for s in steps] == [4, 3, 2, 1]
    assert steps[0].entry_hpa == npt.n_cr3               # PML4 index 0
    leaf = steps[-1].entry
    assert leaf & 0x000F_FFFF_FFFF_F000 == RAM_HPA + 0x3000
    assert leaf & (PTE_P | PTE_RW | PTE_US) == PTE_P | PTE_RW | PTE_US
    assert npt.hostmem.read_u64(steps[-1].entry_hpa) == leaf


def test_not_present_gpa_faults_with_p_clear_and_final_translation_bit():
    npt = npt_with_ram()
    f = fault_of(lambda: npt.translate(0x20000))
    assert f.gpa == f.exitinfo2 == 0x20000
    assert f.exitinfo1 & NPF_P == 0
    assert f.exitinfo1 == NPF_US | NPF_GPA


def test_write_to_read_only_page_faults_p_rw():
    npt = NestedPageTable()
    npt.map(0x5000, RAM_HPA, 0x1000, writable=False)
    assert npt.translate(0x5008) == RAM_HPA + 8
    f = fault_of(lambda: npt.translate(0x5008, ACC_WRITE))
    assert f.exitinfo1 == NPF_P | NPF_RW | NPF_US | NPF_GPA


def test_fetch_from_nx_page_faults_p_id():
    npt = NestedPageTable()
    npt.map(0, RAM_HPA, 0x1000, executable=False)
    npt.translate(0x10)                              # data read is fine
    f = fault_of(lambda: npt.translate(0x10, ACC_FETCH))
    assert f.exitinfo1 == NPF_P | NPF_ID | NPF_US | NPF_GPA


def test_fetch_from_not_present_page_reports_id_without_p():
    f = fault_of(lambda: NestedPageTable().translate(0x7000, ACC_FETCH))
    assert f.exitinfo1 == NPF_ID | NPF_US | NPF_GPA


def test_npf_us_bit_is_always_set_because_nested_walks_are_user_accesses():
    # APM vol 2 15.25.5; KVM translate_nested_gpa(): "NPT walks are always user-walks".
    npt = NestedPageTable()
    for access in (0, ACC_USER, ACC_WRITE, ACC_WRITE | ACC_USER):
        assert fault_of(lambda a=access: npt.translate(0x1000, a)).exitinfo1 & NPF_US


def test_supervisor_only_nested_entry_is_a_protection_fault():
    npt = npt_with_ram()
    step = npt.walk_steps(0x2000)[-1]
    npt.hostmem.write_u64(step.entry_hpa, step.entry & ~PTE_US)
    npt.flush()
    f = fault_of(lambda: npt.translate(0x2000))
    assert f.exitinfo1 == NPF_P | NPF_US | NPF_GPA


def test_guest_page_table_access_sets_bit_33_instead_of_32():
    f = fault_of(lambda: NestedPageTable().translate(0x9000, walk=True))
    assert f.exitinfo1 & NPF_GPT and not f.exitinfo1 & NPF_GPA


def test_ps_bit_in_a_pml4_entry_is_a_reserved_bit_fault():
    npt = npt_with_ram()
    pml4e = npt.hostmem.read_u64(npt.n_cr3)
    npt.hostmem.write_u64(npt.n_cr3, pml4e | PTE_PS)
    npt.flush()
    f = fault_of(lambda: npt.translate(0x1000))
    assert f.exitinfo1 == NPF_P | NPF_RSV | NPF_US | NPF_GPA


def test_two_megabyte_leaf_in_a_pd_entry_translates():
    npt = npt_with_ram(0x1000)
    pde_hpa = npt.walk_steps(0)[2].entry_hpa
    npt.hostmem.write_u64(pde_hpa + 8, 0x4000_0000 | PTE_P | PTE_RW | PTE_US | PTE_PS)
    assert npt.translate(0x20_1234) == 0x4000_1234
    assert npt.translate(0x3F_FFFF) == 0x401F_FFFF


def test_unmap_all_removes_every_leaf_but_keeps_the_backing():
    npt = npt_with_ram(0x4000)
    assert npt.leaf_count() == 4
    npt.translate(0x1000)                 # warm the cache: unmap_all must flush it
    assert npt.unmap_all() == 4
    assert npt.leaf_count() == 0
    f = fault_of(lambda: npt.translate(0x1000))
    assert f.exitinfo1 == NPF_US | NPF_GPA
    assert npt.backing(0x1000) is not None


def test_fault_in_restores_one_page_like_vm_handle_paging():
    npt = npt_with_ram(0x4000)
    npt.unmap_all()
    assert npt.fault_in(0x2345)
    assert npt.translate(0x2345) == RAM_HPA + 0x2345
    assert npt.leaf_count() == 1
    fault_of(lambda: npt.translate(0x1000))


def test_fault_in_outside_ram_returns_false():
    npt = npt_with_ram()
    assert not npt.fault_in(0xFEE00000)       # the xAPIC page is MMIO, not RAM


def test_lazy_map_faults_until_faulted_in():
    npt = NestedPageTable()
    npt.map(0, RAM_HPA, 0x2000, populate=False)
    fault_of(lambda: npt.translate(0x1000))
    npt.fault_in(0x1000)
    assert npt.translate(0x1000) == RAM_HPA + 0x1000


def test_cached_read_translation_does_not_let_a_write_through_a_read_only_page():
    npt = NestedPageTable()
    npt.map(0, RAM_HPA, 0x1000, writable=False)
    npt.translate(0x100)
    npt.translate(0x100)
    fault_of(lambda: npt.translate(0x100, ACC_WRITE))


def test_walk_sets_accessed_everywhere_and_dirty_on_write():
    npt = npt_with_ram()
    npt.translate(0x3000)
    steps = npt.walk_steps(0x3000)
    assert all(s.entry & PTE_A for s in steps)
    assert not steps[-1].entry & PTE_D
    npt.translate(0x3000, ACC_WRITE)         # cached as read: the write walks again
    assert npt.walk_steps(0x3000)[-1].entry & PTE_D


def test_nx_leaf_bit_is_bit_63():
    npt = NestedPageTable()
    npt.map(0, RAM_HPA, 0x1000, executable=False)
    assert npt.walk_steps(0)[-1].entry & PTE_NX


def test_bad_maps_are_refused_and_change_nothing():
    npt = npt_with_ram(0x2000)
    digest = npt.digest()
    with pytest.raises(NptError, match="not page aligned"):
        npt.map(0x2001, RAM_HPA, 0x1000)
    with pytest.raises(NptError, match="overlaps"):
        npt.map(0x1000, RAM_HPA, 0x1000)
    with pytest.raises(NptError):
        npt.map(1 << 48, RAM_HPA, 0x1000)
    assert npt.digest() == digest


def test_gpa_beyond_48_bits_faults():
    f = fault_of(lambda: npt_with_ram().translate(1 << 48))
    assert f.exitinfo1 & NPF_P == 0


def test_digest_changes_when_tables_change():
    npt = npt_with_ram(0x2000)
    d = npt.digest()
    npt.unmap_all()
    assert npt.digest() != d


def _page_by_page(ranges):
    """The reference: every leaf installed one page at a time, in map order."""
    npt = NestedPageTable()
    for gpa, hpa, size, w, x in ranges:
        npt.map(gpa, hpa, size, writable=w, executable=x, populate=False)
        for off in range(0, size, 0x1000):
            npt.fault_in(gpa + off)
    return npt


@pytest.mark.parametrize("ranges", [
    [(0, 0, 64 << 20, True, True), (0xFEE0_0000, 0xFEE0_0000, 0x1000, True, True)],
    [(0x1F_F000, RAM_HPA, 0x40_3000, False, True), (0x4000_0000 - 0x2000, 0x5000, 0x5000, True,
                                                    False)],
])
def test_bulk_population_writes_the_same_tables_as_installing_page_by_page(ranges):
    bulk = NestedPageTable()
    for gpa, hpa, size, w, x in ranges:
        bulk.map(gpa, hpa, size, writable=w, executable=x)
    ref = _page_by_page(ranges)
    assert bulk.hostmem.digest() == ref.hostmem.digest()
    assert sorted(bulk.hostmem.pages) == sorted(ref.hostmem.pages)
    pages = sum(r[2] for r in ranges) >> 12
    assert bulk.leaf_count() == ref.leaf_count() == pages
    assert bulk.unmap_all() == ref.unmap_all() == pages
    assert bulk.hostmem.digest() == ref.hostmem.digest()
    assert bulk.leaf_count() == 0


def test_unmap_all_keeps_the_other_bits_of_non_present_entries():
    npt = npt_with_ram(0x3000)
    pt = npt.walk_steps(0)[-1].entry_hpa & ~0xFFF
    npt.hostmem.write_u64(pt + 8 * 100, 0xABC0)          # not present: not a leaf
    assert npt.unmap_all() == 3
    assert npt.hostmem.read_u64(pt + 8 * 100) == 0xABC0
    assert npt.hostmem.read_u64(pt) == 0


def test_unmap_all_zeroes_exactly_the_present_leaves_of_a_page_table_and_keeps_the_rest():
    # A PT's entries with P=1 become 0; a not-present entry keeps its bits (software may
    # keep information there), as clearing them one by one would.
    import random
    from array import array
    npt = npt_with_ram(0x200000)            # 512 pages: one full PT
    npt.translate(0)
    pt = npt.walk_steps(0)[-1].entry_hpa & ~0xFFF
    rnd = random.Random(7)
    ents = [rnd.choice((0, rnd.randrange(1 << 64) | PTE_P, rnd.randrange(1 << 64) & ~PTE_P))
            for _ in range(512)]
    npt.hostmem.pages[pt >> 12][:] = array("Q", ents).tobytes()
    assert npt.unmap_all() == sum(e & PTE_P for e in ents)
    assert array("Q", bytes(npt.hostmem.pages[pt >> 12])).tolist() == [
        0 if e & PTE_P else e for e in ents]
    assert npt.leaf_count() == 0
