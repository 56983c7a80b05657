"""Wilson intervals against values computed by hand (and published tables)."""

import math

import pytest

from mergekit_safety.core.stats import intervals_overlap, wilson_interval


def test_wilson_matches_hand_computed_values():
    # 10 of 40: p = 0.25, z = 1.96 -> centre 0.28327, half 0.13263 (computed by hand)
    low, high = wilson_interval(10, 40)
    assert math.isclose(low, 0.1419, abs_tol=5e-4)
    assert math.isclose(high, 0.4019, abs_tol=5e-4)
    # 4 of 40 -> [0.0396, 0.2305]
    low, high = wilson_interval(4, 40)
    assert math.isclose(low, 0.0396, abs_tol=5e-4)
    assert math.isclose(high, 0.2305, abs_tol=5e-4)


def test_wilson_edges_stay_inside_unit_interval():
    low, high = wilson_interval(0, 100)
    assert low == 0.0 and math.isclose(high, 0.0370, abs_tol=5e-4)
    low, high = wilson_interval(100, 100)
    assert high == 1.0 and math.isclose(low, 0.9630, abs_tol=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(-1, 4)


def test_overlap():
    assert intervals_overlap(wilson_interval(10, 40), wilson_interval(4, 40))
    assert not intervals_overlap(wilson_interval(38, 40), wilson_interval(4, 40))
