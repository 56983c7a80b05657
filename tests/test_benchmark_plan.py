"""`benchmarks.merge --only`: the jobs named, the stock jobs their ratios need, checked early."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.checkpoints import family_paths  # noqa: E402
from benchmarks.jobs import plan  # noqa: E402
from benchmarks.merge import select  # noqa: E402


def jobs():
    return plan(family_paths(Path("/nowhere")), "bfloat16", ["r8", "r64"], inspect_on=())


def test_only_keeps_the_named_jobs_and_their_references_in_plan_order():
    keys = [j.key for j in select(jobs(), {"safemerge/r64", "safe_linear"})]
    assert keys == ["linear", "safe_linear", "task_arithmetic4", "safemerge/r64"]


def test_only_names_an_unknown_job_and_the_known_ones():
    with pytest.raises(click.BadParameter, match=r"unknown \['safemerge/r9'\]; known: linear, "):
        select(jobs(), {"safemerge/r9"})
