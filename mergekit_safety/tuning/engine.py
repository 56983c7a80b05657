"""The one loop of ``sweep`` and ``search``: a sampler proposes points, a runner evaluates them,
the loop records every outcome and chooses under the gate.

A sweep is a search whose sampler is the grid (:class:`~.grid_sampler.GridSampler`: every point in
one batch); ``search``'s sampler is Optuna's constrained TPE
(:class:`~.optuna_sampler.OptunaSampler`: batches of ``--parallel``, each asked once the last was
told). Either runs on either runner (:mod:`.runners`: here, or on Ray), which merges a point to disk
through mergekit or into a model held in memory. The loop, the same for all of them: the reference
models are evaluated once, first (a failure ends the run); each point's outcome is told to the
sampler (a failed point is recorded with its error and the run goes on); when the runner left a
point's merge on disk, the best passing one so far is kept and the others removed; the choice
(:func:`~.choice.choose`) is installed in ``out``, as the kept merge or merged once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mergekit_safety.core.acceptance import NO_GATE, Gate
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.recipe.scoring import kept_scores
from mergekit_safety.tuning.choice import choose, close_to_chosen

Evaluator = Callable[[str], Mapping[str, Any]]
"""Evaluates the model at a path; returns ``EvalResult.summary()``'s dict."""


@dataclass(frozen=True)
class Job:
    """One model to evaluate: a reference (aligned, fine-tuned) or a point the sampler asked."""

    kind: Literal["reference", "point"]
    index: int
    """Place among the references (aligned first), or the point's number (its place in the grid,
    its trial number)."""
    name: str
    """The summary's ``model``: the reference's name, or the point's label."""
    role: str
    """What the progress bar shows: ``aligned``, ``fine-tuned`` or the point's label."""
    recipe: dict[str, Any] | None = None
    """A point's recipe (None for a reference)."""
    settle: Any = None
    """When a point's evaluation may stop because it can no longer pass the gate (a search's
    trials in memory: :class:`~.settle.GateSettle`); None: evaluated whole."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its summary, or the error that stopped it (one line)."""

    job: Job
    summary: Mapping[str, Any] | None = None
    error: str | None = None
    merged: Path | None = None
    """A point's merge, still on disk (the serial runner's): the loop keeps or discards it."""
    seconds: float | None = None
    """The job's own wall time, on the worker that ran it."""


class Sampler(Protocol):
    """Proposes points and keeps the record of their outcomes."""

    references: Sequence[str]
    """The reference models (aligned first), evaluated once before any point."""
    template: Mapping[str, Any]
    """The recipe the points vary (its models: the LoRA inputs to merge once)."""
    toward_finetuned: Sequence[int]
    """Per value of a point: +1 where larger keeps more of the fine-tune (the ties' side)."""
    total: int
    """How many points the sampler will ask for in all (the progress bar's length)."""
    done: int
    """How many of them an earlier run of the same study already evaluated."""
    label: str
    """The progress bar's name: ``sweep weight``, ``search``."""

    def known_references(self) -> list[dict[str, Any]] | None:
        """The references' summaries from an earlier run of the same study, if any."""
        ...

    def keep_references(self, summaries: list[dict[str, Any]]) -> None: ...

    def ask(self) -> list[Job]:
        """The next batch of points; empty when the sampler is done."""
        ...

    def tell(self, outcome: Outcome) -> Any:
        """Record a point's outcome (a failure too); returns the point's record, or None when
        there is none (yet: a sampler may record a batch once all of it is back)."""
        ...

    def points(self) -> list[Any]:
        """Every evaluated point so far (records with ``values`` and ``metrics``), in order."""
        ...

    def recipe(self, point: Any) -> dict[str, Any]:
        """The recipe of a recorded point."""
        ...


class Run(Protocol):
    """One run on a runner, open between the first job and the chosen merge's install."""

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Evaluate every job; yield each outcome as it finishes (in any order)."""
        ...

    def discard(self, outcome: Outcome) -> None:
        """Remove a point's merge that the loop does not keep."""
        ...

    def write(self, recipe: Mapping[str, Any], out: Path) -> None:
        """Merge ``recipe`` once more (through mergekit) and install it in ``out``."""
        ...


class Runner(Protocol):
    """Where and how points are merged and evaluated (:mod:`.runners`)."""

    def open(
        self, template: Mapping[str, Any], evaluator: Evaluator, name: str, status: Any
    ) -> AbstractContextManager[Run]:
        """Start a run; merges are written as directories called ``name``; ``status(text)``
        says what a serial run is doing."""
        ...


@dataclass
class Tuned:
    """What the loop found: the references' summaries, the choice and its close rivals."""

    references: list[dict[str, Any]]
    chosen: Any = None
    close: list[Any] = field(default_factory=list)
    out: Path | None = None
    seconds: float = 0.0
    """Wall time of the points (the references' evaluation left out)."""


def tune(
    sampler: Sampler,
    runner: Runner,
    evaluator: Evaluator,
    *,
    gate: Gate = NO_GATE,
    out: Path | None = None,
    progress: bool = True,
) -> Tuned:
    """Evaluate the references and every point ``sampler`` asks for on ``runner``; choose under
    ``gate``; install the choice in ``out`` (see the module docstring)."""
    from tqdm.auto import tqdm

    name = out.resolve().name if out is not None else "merge"  # mergekit titles the card so
    known = sampler.known_references()
    kept: tuple[Any, Outcome] | None = None
    extra = 0 if known is not None else len(sampler.references)
    with (
        tqdm(
            total=sampler.total + extra,
            initial=min(sampler.done, sampler.total),
            desc=sampler.label,
            unit="model",
            disable=not progress,
        ) as bar,  # fmt: skip
        kept_scores(),  # one ρ pass per model set
        runner.open(sampler.template, evaluator, name, bar.set_postfix_str) as run,
    ):
        references = known
        if references is None:
            references = evaluate_references(run, sampler.references, bar)
            sampler.keep_references(references)
        started = time.perf_counter()
        while batch := sampler.ask():
            for outcome in run.run(batch):
                bar.update()
                point = sampler.tell(outcome)
                if outcome.merged is None:
                    continue
                if out is not None and point is not None and _choice(sampler, gate) is point:
                    if kept is not None:
                        run.discard(kept[1])
                    kept = (point, outcome)
                else:
                    run.discard(outcome)
        seconds = time.perf_counter() - started
        chosen = _choice(sampler, gate)
        installed = None
        if out is not None and chosen is not None:
            if kept is not None and kept[0] is chosen:
                assert kept[1].merged is not None
                from mergekit_safety.tuning.merging import install

                install(kept[1].merged, out)
            else:
                run.write(sampler.recipe(chosen), out)
            installed = out
    close = close_to_chosen(sampler.points(), chosen, gate)
    return Tuned(references, chosen, close, installed, seconds)


def evaluate_references(run: Run, names: Sequence[str], bar: Any = None) -> list[dict[str, Any]]:
    """Each reference's summary, aligned first, on ``run`` (a failure ends the run): the one way
    the loop, and ``search --test-prompts``, evaluate them."""
    jobs = [Job("reference", i, name, "fine-tuned" if i else "aligned")
            for i, name in enumerate(names)]  # fmt: skip
    found: dict[int, dict[str, Any]] = {}
    for outcome in run.run(jobs):
        if bar is not None:
            bar.update()
        if outcome.error is not None:
            raise ConfigError(f"evaluating {outcome.job.name} failed: {outcome.error}")
        assert outcome.summary is not None
        found[outcome.job.index] = {**outcome.summary, "model": outcome.job.name}
    return [found[i] for i in range(len(names))]


def _choice(sampler: Sampler, gate: Gate) -> Any:
    return choose(sampler.points(), gate, sampler.toward_finetuned)


def describe_error(error: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
