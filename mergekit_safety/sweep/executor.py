"""What an executor does for the sweep's loop: evaluate each job, say how each one ended.

The loop (:func:`~.run.run_sweep`) hands an executor the jobs — every reference model, then every
point of the grid — and reads one :class:`Outcome` per job, in any order. The serial executor
(:mod:`.serial`) runs them one after the other here; the Ray executor (:mod:`.distributed`) runs
each as a task. Everything else (the rows, the failed points, the choice, ``out``) is the loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from mergekit_safety.sweep.grid import SweepPlan

Evaluator = Callable[[str], Mapping[str, Any]]
"""Evaluates the model at a path; returns ``EvalResult.summary()``'s dict."""


@dataclass(frozen=True)
class Job:
    """One model to evaluate: a reference (aligned, fine-tuned) or a point of the grid."""

    kind: Literal["reference", "point"]
    index: int
    """Place among the references (aligned first), or among ``plan.values``."""
    name: str
    """The summary's ``model``: the reference's name, or the point's label."""
    role: str
    """What the progress bar shows: ``aligned``, ``fine-tuned`` or the point's label."""
    recipe: dict[str, Any] | None = None
    """A point's recipe (None for a reference)."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its summary, or the error that stopped it (one line)."""

    job: Job
    summary: Mapping[str, Any] | None = None
    error: str | None = None
    merged: Path | None = None
    """A point's merge, still on disk (the serial executor): the loop keeps or discards it."""


class ExecutorRun(Protocol):
    """One sweep on an executor, open between the first job and the chosen merge's install."""

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Evaluate every job; yield each outcome as it finishes."""
        ...

    def discard(self, outcome: Outcome) -> None:
        """Remove a point's merge that the loop does not keep."""
        ...

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        """Merge ``recipe`` once more and install it in ``out`` (the chosen point, not kept)."""
        ...


class Executor(Protocol):
    """Where a sweep's merges and evaluations run."""

    def open(
        self, plan: SweepPlan, evaluator: Evaluator, name: str
    ) -> AbstractContextManager[ExecutorRun]:
        """Start a sweep of ``plan``; merges are written as directories called ``name``."""
        ...


def sweep_jobs(plan: SweepPlan) -> list[Job]:
    """The aligned model, each fine-tuned model, then each point of the grid, in plan order."""
    roles = ["aligned", *["fine-tuned"] * len(plan.finetuned)]
    names = [plan.aligned, *plan.finetuned]
    jobs = [
        Job("reference", index, name, role)
        for index, (name, role) in enumerate(zip(names, roles, strict=True))
    ]
    for index, value in enumerate(plan.values):
        label = plan.label(value)
        jobs.append(Job("point", index, label, label, plan.recipe_with(value)))
    return jobs


def describe_error(error: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
