"""``search``: the engine with Optuna's constrained TPE as its sampler, from the references to the
chosen merge, its ``recipe.yml`` and its test evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import Gate
from mergekit_safety.tuning.engine import Job, Outcome, Runner, evaluate_references, tune
from mergekit_safety.tuning.search_report import SearchResult, TrialRow, trial_row
from mergekit_safety.tuning.study import Budget, SearchPlan


class OptunaSampler:
    """Trials asked ``budget.parallel`` at a time from a study (:func:`~.study.open_study`), each
    batch once the last was told; its record is the study (resumed from ``storage``)."""

    def __init__(self, study: Any, plan: SearchPlan, budget: Budget, gate: Gate) -> None:
        from mergekit_safety.tuning import study as studies

        self.optuna = studies.import_optuna()
        self.study, self.plan, self.budget, self.gate = study, plan, budget, gate
        studies.abandon_running(study)
        self.distributions = plan.distributions(self.optuna)
        self.references = [plan.sweep.aligned, *plan.sweep.finetuned]
        self.template = plan.sweep.recipe
        self.toward_finetuned = plan.directions()
        self.total, self.done = budget.trials, len(studies.finished(study))
        self.label = "search"
        keys = plan.space.keys()
        counted = {trial.number for trial in studies.finished(study)}
        self.rows = [trial_row(t, gate, keys, counted) for t in study.get_trials(deepcopy=False)
                     if t.state != self.optuna.trial.TrialState.RUNNING]  # fmt: skip
        self.asked: dict[int, Any] = {}
        self.told: list[Outcome] = []

    def known_references(self) -> list[dict[str, Any]] | None:
        return self.study.user_attrs.get("references")  # a resumed study measured them

    def keep_references(self, summaries: list[dict[str, Any]]) -> None:
        self.study.set_user_attr("references", summaries)

    def ask(self) -> list[Job]:
        from mergekit_safety.tuning import study as studies

        done = len(studies.finished(self.study))
        if done >= self.budget.trials:
            return []
        self.study.sampler = studies.sampler(self.budget, done)
        size = min(self.budget.parallel, self.budget.trials - done)
        with studies.quiet(self.optuna):
            batch = [self.study.ask(self.distributions) for _ in range(size)]
        self.asked = {trial.number: trial for trial in batch}
        self.told = []
        settle = studies.settle_for(self.study, self.budget, self.gate)
        return [Job("point", t.number, f"trial {t.number}", f"trial {t.number}",
                    self.plan.recipe_for(t.params), settle) for t in batch]  # fmt: skip

    def tell(self, outcome: Outcome) -> None:
        """Keep the outcome; once the whole batch is back, tell the study in trial order (a
        stopped batch is asked again whole, so a resumed study asks what an unstopped one does).
        """
        from mergekit_safety.tuning import study as studies

        self.told.append(outcome)
        if len(self.told) < len(self.asked):
            return
        for told in sorted(self.told, key=lambda o: o.job.index):
            trial = self.asked[told.job.index]
            result = told.summary if told.error is None else told.error
            assert result is not None
            studies.tell(self.study, trial, result, self.gate, told.seconds)
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            self.rows.append(trial_row(frozen, self.gate, self.plan.space.keys(), {trial.number}))
        self.told, self.asked = [], {}

    def points(self) -> list[TrialRow]:
        return [row for row in self.rows if row.state == "complete"]

    def recipe(self, point: TrialRow) -> dict[str, Any]:
        return self.plan.recipe_for(point.params)


def run_search(
    study: Any,
    plan: SearchPlan,
    budget: Budget,
    gate: Gate,
    evaluator: Any,
    tester: Any,
    runner: Runner,
    out: Path,
    *,
    progress: bool,
) -> SearchResult:
    """Run the trials on ``runner``, choose under ``gate``, merge the choice into ``out`` with
    its ``recipe.yml``, and evaluate it on ``tester``'s prompts when given."""
    import yaml

    sampler = OptunaSampler(study, plan, budget, gate)
    tuned = tune(sampler, runner, evaluator, gate=gate, out=out, progress=progress)
    references = tuned.references
    result = SearchResult(plan, budget, gate, references[0], references[1:], sampler.rows,
                          tuned.chosen, tuned.close, tuned.seconds)  # fmt: skip
    if tuned.chosen is None:
        return result
    chosen_recipe = sampler.recipe(tuned.chosen)
    (out / "recipe.yml").write_text(yaml.safe_dump(chosen_recipe, sort_keys=False), "utf-8")
    if tester is not None:
        result.test = {"chosen": {**tester(str(out)), "model": "chosen"},
                       **_references_on(tester, plan, runner)}  # fmt: skip
    return result


def _references_on(tester: Any, plan: SearchPlan, runner: Any) -> dict[str, Any]:
    """The references evaluated by ``tester``, here, as the loop evaluates them."""
    from mergekit_safety.tuning.runners import SerialRunner

    names = [plan.sweep.aligned, *plan.sweep.finetuned]
    here = SerialRunner(runner.merge_options, runner.how, runner.work_dir)
    with here.open(plan.sweep.recipe, tester, "test") as run:
        found = evaluate_references(run, names)
    return {"aligned": found[0], "finetuned": found[1:]}
