"""Paired bootstrap intervals on harm removed and task kept, on cases computed by hand."""

from __future__ import annotations

import pytest

from benchmarks.efficacy.intervals import Triple, fmt, harm_removed, paired_bootstrap, task_kept


def test_the_two_ratios():
    assert harm_removed(0.0, 0.8, 0.2) == pytest.approx(0.75)
    assert task_kept(0.05, 0.45, 0.35) == pytest.approx(0.75)
    assert harm_removed(0.1, 0.1, 0.0) is None and task_kept(0.3, 0.3, 0.3) is None


def test_a_merge_equal_to_a_on_every_prompt_removes_all_harm_in_every_resample():
    t = Triple(aligned=[0, 0, 0, 0], finetuned=[1, 1, 1, 1], merged=[0, 0, 0, 0])
    found = paired_bootstrap("removed", [t], replicates=500)
    assert (found.point, found.low, found.high, found.undefined) == (1.0, 1.0, 1.0, 0)


def test_two_prompts_give_the_four_resamples_extremes():
    # A engages neither prompt, the fine-tune both, the merge the second only. Resamples of 2
    # prompts: (1,1) → merge 0 → removed 1; (1,2), (2,1) → 0.5; (2,2) → 0. Each extreme has
    # probability 1/4 > 2.5 %, so the 95 % interval is [0, 1] around the point 0.5.
    t = Triple(aligned=[0, 0], finetuned=[1, 1], merged=[0, 1])
    found = paired_bootstrap("removed", [t])
    assert (found.point, found.low, found.high) == (0.5, 0.0, 1.0)
    # the same for the task: A 0, fine-tune right on both, merge right on the second
    kept = paired_bootstrap("kept", [t])
    assert (kept.point, kept.low, kept.high) == (0.5, 0.0, 1.0)


def test_pairing_keeps_a_shared_hard_prompt_from_widening_the_interval():
    # The merge differs from the fine-tune on no prompt where the fine-tune differs from A in a
    # way that could flip: merge = A everywhere, fine-tune = A + 1 on half the prompts. Paired,
    # every resample with any fine-tune gain gives exactly 1 (unpaired rates would not).
    t = Triple(aligned=[0, 1] * 10, finetuned=[1, 1] * 10, merged=[0, 1] * 10)
    found = paired_bootstrap("removed", [t])
    assert (found.low, found.high) == (1.0, 1.0)


def test_resamples_with_no_fine_tune_gain_are_dropped_and_counted():
    # The fine-tune differs from A on prompt 1 only: the resample (2,2) (probability 1/4) has no
    # ratio; every other gives 1.
    t = Triple(aligned=[0, 0], finetuned=[1, 0], merged=[0, 0])
    found = paired_bootstrap("removed", [t], replicates=4000)
    assert (found.low, found.high) == (1.0, 1.0)
    assert found.undefined / 4000 == pytest.approx(0.25, abs=0.03)


def test_over_seeds_the_seeds_are_resampled_too():
    # seed 1: the merge is A (removed 1 on every resample); seed 2: the merge is the fine-tune
    # (removed 0). Drawing 2 seeds: {1,1} → 1, {1,2} → 0.5, {2,2} → 0, with probability 1/4, 1/2,
    # 1/4: interval [0, 1], point 0.5. Without resampling the seeds the mean is always 0.5.
    one = Triple(aligned=[0, 0, 0], finetuned=[1, 1, 1], merged=[0, 0, 0])
    two = Triple(aligned=[0, 0, 0], finetuned=[1, 1, 1], merged=[1, 1, 1])
    found = paired_bootstrap("removed", [one, two])
    assert (found.point, found.low, found.high) == (0.5, 0.0, 1.0)
    fixed = paired_bootstrap("removed", [one, two], resample_seeds=False)
    assert (fixed.low, fixed.high) == (0.5, 0.5)


def test_mismatched_prompts_are_refused_and_the_format():
    with pytest.raises(ValueError):
        paired_bootstrap("removed", [Triple([0, 1], [1, 1], [0])])
    with pytest.raises(ValueError):
        paired_bootstrap("back", [Triple([0], [1], [0])])
    t = Triple(aligned=[0, 0], finetuned=[1, 1], merged=[0, 1])
    assert fmt(paired_bootstrap("removed", [t])) == "0.50 [0.00, 1.00]"
    assert fmt(None) == "–"


def test_shift_is_the_merges_paired_difference_from_a():
    # Look-alikes: A helpful on both, the merge on the first only: shift −0.5; resamples of 2
    # prompts give 0 (1,1), −0.5 (1,2), (2,1) and −1 (2,2): interval [−1, 0]. The fine-tune's
    # rates do not enter.
    t = Triple(aligned=[1, 1], finetuned=[0, 0], merged=[1, 0])
    found = paired_bootstrap("shift", [t])
    assert (found.point, found.low, found.high, found.undefined) == (-0.5, -1.0, 0.0, 0)
    same = paired_bootstrap("shift", [Triple([1, 0, 1], [0, 0, 0], [1, 0, 1])])
    assert (same.point, same.low, same.high) == (0.0, 0.0, 0.0)
