"""The event record behaves as the frozen dataclass it was: the same fields, keyword
construction, repr, equality only with another Event, the fields' hash, pickling, no
ordering, no assignment (x86/retire.py)."""

import copy
import dataclasses
import operator
import pickle

import pytest

from nitdbg.x86.retire import EV_IRET, EV_NMI, Event, new_event

FIELDS = ("seq", "kind", "vector", "error_code", "rip", "rflags", "dr6", "info")


def test_event_fields_by_position_and_keyword_with_info_defaulting_to_zero():
    e = Event(7, EV_NMI, 2, None, 0x1000, 0x202, 0xFFFF0FF0)
    assert [getattr(e, f) for f in FIELDS] == [7, EV_NMI, 2, None, 0x1000, 0x202,
                                              0xFFFF0FF0, 0]
    assert Event(seq=7, kind=EV_NMI, vector=2, error_code=None, rip=0x1000, rflags=0x202,
                 dr6=0xFFFF0FF0) == e
    assert e.kind_name == "nmi"
    assert Event._fields == Event.__match_args__ == FIELDS


def test_event_made_by_the_fast_constructor_is_the_same_event():
    assert new_event(Event, (1, EV_IRET, 0, None, 5, 6, 7, 0)) == Event(1, EV_IRET, 0, None,
                                                                         5, 6, 7)


def test_event_repr_is_the_dataclass_repr():
    e = Event(1, 0, 14, 2, 0x40, 0x10046, 0xFFFF0FF0, 0)
    assert repr(e) == ("Event(seq=1, kind=0, vector=14, error_code=2, rip=64, rflags=65606, "
                       "dr6=4294905840, info=0)")


def test_event_equals_only_an_event_with_the_same_fields():
    e = Event(1, 0, 3, None, 5, 6, 7)
    t = (1, 0, 3, None, 5, 6, 7, 0)
    # both operators, both operand orders (a reflected method answers a plain tuple)
    assert operator.eq(e, Event(*t)) is True and operator.ne(e, Event(*t)) is False
    assert e != Event(2, 0, 3, None, 5, 6, 7)
    for a, b in ((e, t), (t, e)):                               # a dataclass is no tuple
        assert operator.eq(a, b) is False and operator.ne(a, b) is True
    assert e != 1 and e not in [t]
    assert hash(e) == hash(Event(*t)) == hash(t)                # the fields' hash
    assert {e: "x"}[Event(*t)] == "x"


def test_event_is_unordered_and_frozen():
    e = Event(1, 0, 3, None, 5, 6, 7)
    for op in (operator.lt, operator.le, operator.gt, operator.ge):
        for a, b in ((e, e), (e, (1,)), ((1,), e), (e, 0)):
            with pytest.raises(TypeError):
                op(a, b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.seq = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del e.rip  # type: ignore[misc]
    assert e.seq == 1


def test_event_copies_and_pickles():
    e = Event(1, 0, 3, 0x18, 5, 6, 7, 9)
    for x in (copy.copy(e), copy.deepcopy(e), pickle.loads(pickle.dumps(e))):
        assert type(x) is Event and x == e
