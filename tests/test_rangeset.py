"""The range set of done job numbers at its edges: half-open ranges, merging, and what is kept.

An off-by-one here marks a job done that never ran (its data is lost on resume) or runs a
done job again (duplicates); the property test in ``test_properties.py`` checks the same
set against a plain ``set`` over random operations.
"""

from __future__ import annotations

import pytest

from asyncingest.state.rangeset import RangeSet


def test_a_range_holds_its_start_and_end_minus_one_but_not_its_end() -> None:
    s = RangeSet([(3, 7)])
    assert 3 in s and 6 in s
    assert 2 not in s and 7 not in s
    assert len(s) == 4 and list(s) == [3, 4, 5, 6]


def test_adjacent_ranges_merge_into_one() -> None:
    s = RangeSet()
    s.add_range(0, 5)
    s.add_range(5, 10)
    assert s.ranges() == [(0, 10)]
    t = RangeSet()
    t.add_range(5, 10)
    t.add_range(0, 5)  # before, touching
    assert t.ranges() == [(0, 10)]


def test_ranges_with_a_gap_of_one_stay_apart() -> None:
    s = RangeSet([(0, 5), (6, 9)])
    assert s.ranges() == [(0, 5), (6, 9)]
    assert 5 not in s and len(s) == 8
    s.add(5)  # fills the gap: one range
    assert s.ranges() == [(0, 9)]


def test_adding_one_number_after_the_last_extends_it() -> None:
    s = RangeSet()
    for n in range(4):
        s.add(n)
    assert s.ranges() == [(0, 4)]
    s.add(10)
    assert s.ranges() == [(0, 4), (10, 11)]
    s.add(4)
    assert s.ranges() == [(0, 5), (10, 11)]


def test_a_range_inside_another_changes_nothing() -> None:
    s = RangeSet([(0, 10)])
    s.add_range(2, 5)
    s.add(9)
    assert s.ranges() == [(0, 10)]


def test_a_range_over_several_merges_them_all() -> None:
    s = RangeSet([(0, 2), (4, 6), (8, 10), (20, 21)])
    s.add_range(1, 9)
    assert s.ranges() == [(0, 10), (20, 21)]
    s.add_range(10, 20)  # touches both neighbours
    assert s.ranges() == [(0, 21)]


def test_a_range_ending_where_the_next_starts_merges_and_keeps_the_later_end() -> None:
    s = RangeSet([(10, 30)])
    s.add_range(0, 10)
    assert s.ranges() == [(0, 30)]
    s.add_range(25, 40)
    assert s.ranges() == [(0, 40)]


def test_a_range_before_every_other_is_inserted_first() -> None:
    s = RangeSet([(10, 12), (20, 22)])
    s.add_range(0, 3)
    assert s.ranges() == [(0, 3), (10, 12), (20, 22)]
    s.add_range(14, 16)  # in the middle, touching nothing
    assert s.ranges() == [(0, 3), (10, 12), (14, 16), (20, 22)]


def test_empty_and_backwards_ranges_add_nothing() -> None:
    s = RangeSet([(5, 5), (7, 6)])
    assert not s and len(s) == 0 and s.ranges() == []
    s.add_range(3, 3)
    s.add_range(4, 2)
    assert not s and 3 not in s


def test_zero_is_a_job_number() -> None:
    s = RangeSet([(0, 1)])
    assert 0 in s and 1 not in s and bool(s)


def test_unsorted_overlapping_ranges_are_merged_when_built() -> None:
    s = RangeSet([(8, 12), (0, 3), (2, 9)])
    assert s.ranges() == [(0, 12)]


@pytest.mark.parametrize("bounds", [(-1, 3), (0, -1), (-5, -2)])
def test_a_negative_bound_is_refused(bounds: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="negative bound"):
        RangeSet([bounds])


def test_only_integers_are_members() -> None:
    s = RangeSet([(0, 10)])
    assert "3" not in s and 3.0 not in s and None not in s
    assert -1 not in RangeSet([(0, 2)])


def test_equality_compares_the_ranges() -> None:
    a, b = RangeSet([(0, 3)]), RangeSet()
    for n in (2, 0, 1):
        b.add(n)
    assert a == b
    assert a != RangeSet([(0, 4)])
    assert a != [(0, 3)]


def test_repr_shows_ranges_as_inclusive_and_counts_the_rest() -> None:
    assert repr(RangeSet([(0, 3), (5, 6)])) == "RangeSet(0-2, 5)"
    many = RangeSet([(i * 10, i * 10 + 2) for i in range(7)])
    assert repr(many) == "RangeSet(0-1, 10-11, 20-21, 30-31, 40-41, ... (7 ranges))"
