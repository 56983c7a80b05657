"""The Optuna study behind ``search``: the plan and budget, the study stored and resumed, the
seeded sampler of each batch, and how a trial's outcome is told.

Optuna's constrained TPE (``TPESampler(multivariate=True, constraints_func=...)``) maximises the
objective (task accuracy by default) under the gate's constraints (engaged ≤ the most allowed,
helpful ≥ the least, mostly-broken replies fail): ``Gate.constraints`` says exactly what
``Gate.passes`` says (:class:`~mergekit_safety.core.acceptance.Gate`). The loop is the engine's
(:func:`~.engine.tune`, with :class:`~.optuna_sampler.OptunaSampler`).

Determinism: trials are asked ``parallel`` at a time, and the sampler is made afresh before each
batch with a seed derived from (``seed``, trials finished), so a serial run and a Ray run with the
same ``parallel`` and seed ask the same trials. On resume (the same ``storage`` and study name),
trials a stopped run left RUNNING are marked FAIL (without an ``error``: they do not count) and
asked again, so the resumed study holds the same finished trials as an uninterrupted one. One
process drives a study at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergekit_safety.core.acceptance import Gate, metric
from mergekit_safety.core.errors import ConfigError, install_hint
from mergekit_safety.tuning.space import Space

OPTUNA_MISSING = f"search needs Optuna: {install_hint('search', 'optuna')}"
KEPT = (
    "refusal_rate",
    "engaged_rate",
    "broken_rate",
    "asr",
    "helpful_rate",
    "over_refusal_rate",
    "benign_broken_rate",
    "task_accuracy",
    "empty_rate",
)
"""The summary keys a trial keeps (with their ``_ci`` intervals and the set sizes)."""


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(OPTUNA_MISSING) from None
    return optuna


@dataclass(frozen=True)
class SearchPlan:
    """The checked space and the recipe it varies (a ``SweepPlan``: method, references)."""

    space: Space
    sweep: Any

    def recipe_for(self, params: Mapping[str, float]) -> dict[str, Any]:
        """The plain mergekit recipe of a trial's parameters (a fresh copy)."""
        from mergekit_safety.tuning.grid import set_parameter

        recipe = self.sweep.recipe
        for dimension in self.space.dimensions:
            recipe = set_parameter(recipe, dimension.name, dimension.value(params))
        return recipe

    def distributions(self, optuna: Any) -> dict[str, Any]:
        out = {}
        for dimension in self.space.dimensions:
            for key in dimension.keys():
                if dimension.integer:
                    out[key] = optuna.distributions.IntDistribution(
                        int(dimension.low), int(dimension.high), step=int(dimension.step or 1)
                    )
                else:
                    out[key] = optuna.distributions.FloatDistribution(
                        dimension.low, dimension.high, log=dimension.log, step=dimension.step
                    )
        return out

    def directions(self) -> list[int]:
        """Per sampler key: +1 where a larger value keeps more of the fine-tune (ties' side)."""
        from mergekit_safety.tuning.grid import SWEEPABLE

        return [
            SWEEPABLE[d.name].toward_finetuned for d in self.space.dimensions for _k in d.keys()
        ]


@dataclass(frozen=True)
class Budget:
    """How many trials, how many at a time, the seed, and where the study lives."""

    trials: int
    parallel: int = 1
    seed: int = 0
    startup_trials: int = 10
    storage: str | None = None
    study_name: str = "search"
    stop_failing: bool = True
    """A trial that can no longer pass the gate stops evaluating (:mod:`~.settle`: the same
    choice, by construction)."""


def kept_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial keeps: rates, intervals, set sizes, the judge, lm-eval's metrics, each
    pooled harmful set's rates (the gate reads them)."""
    keys = [*KEPT, *(f"{k}_ci" for k in KEPT), "n_harmful", "n_benign", "n_task", "judge",
            "lm_eval", "harmful_sets", "settled"]  # fmt: skip
    return {key: summary[key] for key in keys if key in summary}


def finished(study: Any) -> list[Any]:
    """The trials that count: complete, stopped once settled (pruned), or failed with an error
    (not a stopped run's)."""
    from optuna.trial import TrialState

    counted = []
    for trial in study.get_trials(deepcopy=False):
        failed = trial.state == TrialState.FAIL and "error" in trial.user_attrs
        settled = trial.state == TrialState.PRUNED and "settled" in trial.user_attrs
        if trial.state == TrialState.COMPLETE or failed or settled:
            counted.append(trial)
    return counted


def identity(
    plan: SearchPlan, budget: Budget, gate: Gate, evaluation: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What makes two runs the same search (the trial budget aside): checked on resume.

    ``evaluation``: how trials are measured (prompt sets, judge, generation settings).
    """
    recipe = json.dumps(plan.sweep.recipe, sort_keys=True, default=str)
    return {
        "evaluation": dict(evaluation or {}),
        "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest(),
        "space": [d.record() for d in plan.space.dimensions],
        "seed": budget.seed,
        "parallel": budget.parallel,
        "startup_trials": budget.startup_trials,
        "gate": {k: v for k, v in gate.record().items() if k != "description"},
        "objective": gate.objective,
    }


def prepare_storage(url: str) -> None:
    """``--storage URL`` is a database URL whose driver is installed; a sqlite file's folder is
    made (as ``--out`` is) and takes files. One line for each, before any model is evaluated."""
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from mergekit_safety.core.outputs import check_writable

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"--storage {url}: not a database URL; for a file write sqlite:///{url}"
        ) from None
    try:
        parsed.get_dialect()
    except (NoSuchModuleError, ImportError) as error:
        raise ConfigError(
            f"--storage {url}: no database driver for {parsed.drivername}:// ({_first_line(error)}"
            "); for a file write sqlite:///FILE"
        ) from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    folder = Path(parsed.database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--storage {url}: cannot make {folder} ({error.strerror})") from None
    check_writable(folder, f"--storage {url}: the folder")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def open_study(
    plan: SearchPlan, budget: Budget, gate: Gate, evaluation: Mapping[str, Any] | None = None
) -> Any:
    """Create the study, or load it (``storage``) after checking it is this search."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if budget.storage is not None:
        prepare_storage(budget.storage)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        study = optuna.create_study(
            storage=budget.storage, study_name=budget.study_name, direction="maximize",
            load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=budget.seed),
        )  # fmt: skip
    except (ValueError, ImportError, RuntimeError, SQLAlchemyError) as error:  # no driver, ...
        raise ConfigError(f"--storage {budget.storage}: {_first_line(error)}") from None
    wanted = json.loads(json.dumps(identity(plan, budget, gate, evaluation), default=str))
    found = study.user_attrs.get("search")
    if found is None:
        study.set_user_attr("search", wanted)
    elif found != wanted:
        changed = ", ".join(key for key in wanted if found.get(key) != wanted[key])
        raise ConfigError(
            f"study {budget.study_name!r} in {budget.storage} is another search (its {changed} "
            "differ); give another --study-name, or the same settings to continue it"
        )
    return study


def abandon_running(study: Any) -> int:
    """Mark the trials a stopped run left RUNNING as FAIL (they are asked again); how many."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(running)


def sampler(budget: Budget, done: int) -> Any:
    """The constrained, multivariate TPE sampler for the batch after ``done`` finished trials."""
    import numpy

    from mergekit_safety.tuning.settle import gamma

    optuna = import_optuna()
    seed = int(numpy.random.SeedSequence([budget.seed, done]).generate_state(1)[0])
    with quiet(optuna):  # constraints_func: deprecated in Optuna 5, the one way in 3.5
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True, constraints_func=_constraints,
            n_startup_trials=budget.startup_trials, gamma=gamma,
        )  # fmt: skip


def _constraints(trial: Any) -> Sequence[float]:
    return trial.user_attrs["constraints"]


def settle_for(study: Any, budget: Budget, gate: Gate) -> Any:
    """How the next batch's trials may stop (:mod:`~.settle`): active once enough trials pass."""
    from mergekit_safety.tuning.settle import GateSettle, may_stop

    return GateSettle(gate, active=budget.stop_failing and may_stop(study, budget.trials))


def tell(
    study: Any, trial: Any, outcome: Mapping[str, Any] | str, gate: Gate, seconds: float | None
) -> None:
    """Record a trial's metrics, intervals and constraints, then tell Optuna its value; a
    failed trial (``outcome`` its error) is told FAIL with its ``error``, a trial stopped once
    it could not pass PRUNED."""
    from optuna.trial import TrialState

    trial.set_user_attr("seconds", seconds)
    if isinstance(outcome, str):
        trial.set_user_attr("error", outcome)
        study.tell(trial, state=TrialState.FAIL)
        return
    value = metric(outcome, gate.objective)
    trial.set_user_attr("metrics", kept_metrics(outcome))
    trial.set_user_attr("constraints", gate.constraints(outcome))
    if outcome.get("settled"):
        if gate.passes(outcome):
            raise RuntimeError(f"trial {trial.number} stopped, but its metrics pass the gate")
        trial.set_user_attr("settled", outcome["settled"])
        study.tell(trial, state=TrialState.PRUNED)
        return
    if value is None:
        trial.set_user_attr("error", f"no {gate.objective} (is its prompt set empty?)")
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, value)


@contextlib.contextmanager
def quiet(optuna: Any) -> Iterator[None]:
    """Without Optuna's experimental and deprecation warnings (multivariate, constraints_func)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
