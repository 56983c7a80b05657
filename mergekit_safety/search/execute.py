"""A search from start to finish: the references, the trials, the choice and the chosen merge."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_search(
    study: Any,
    plan: Any,
    budget: Any,
    gate: Any,
    evaluator: Any,
    tester: Any,
    options: Any,
    out: Path,
    *,
    work_dir: str | None,
    device: str,
    dtype: str | None,
    ray: Any = None,
    progress: bool,
) -> Any:
    """Evaluate the references, run the trials (serially, or on Ray actors when ``ray`` has an
    ``address`` and ``workers``), choose under ``gate``, merge the choice into ``out`` with its
    ``recipe.yml``, and evaluate it on ``tester``'s prompts when given."""
    import tempfile

    from mergekit_safety.recipe.lora_cache import lora_cache
    from mergekit_safety.search import runners
    from mergekit_safety.search.report import SearchResult, choose, trial_rows
    from mergekit_safety.search.study import run_study
    from mergekit_safety.sweep.merging import evaluable, install, merge_recipe, references

    recipe = plan.sweep.recipe
    with (
        tempfile.TemporaryDirectory(prefix="mergekit-safety-search-", dir=work_dir) as tmp,
        lora_cache(references(recipe), options.lora_merge_cache, tmp) as cache,
    ):
        options = options.model_copy(update={"lora_merge_cache": cache})
        names = [plan.sweep.aligned, *plan.sweep.finetuned]
        paths = [evaluable(name, options) for name in names]
        summaries = study.user_attrs.get("references")  # a resumed study measured them
        if summaries is None:
            summaries = [
                {**evaluator(path), "model": name} for name, path in zip(names, paths, strict=True)
            ]
            study.set_user_attr("references", summaries)
        started = time.perf_counter()
        settings = {"device": device, "dtype": dtype}
        if ray is not None:
            import dataclasses

            shipped = dataclasses.replace(evaluator)  # no loaded judge in the pickle
            gpus = 1 if device.startswith("cuda") else 0
            opened = runners.ray_runner(
                recipe,
                options,
                shipped,
                **settings,
                actors=budget.parallel,
                address=ray.address,
                workers=ray.workers,
                gpus=gpus,
            )
        else:
            opened = runners.serial_runner(recipe, options, evaluator, **settings)
        with opened as runner:
            run_study(study, plan, runner, budget, gate, progress=progress)
        rows = trial_rows(study, gate)
        chosen, close = choose(plan, rows, gate)
        result = SearchResult(
            plan,
            budget,
            gate,
            summaries[0],
            summaries[1:],
            rows,
            chosen,
            close,
            time.perf_counter() - started,
        )
        if chosen is None:
            return result
        import yaml

        chosen_recipe = plan.recipe_for(chosen.params)
        text = yaml.safe_dump(chosen_recipe, sort_keys=False)
        where = Path(tmp) / "chosen" / out.resolve().name
        merge_recipe(chosen_recipe, where, options, config_source=text)
        install(where, out)
        (out / "recipe.yml").write_text(text, encoding="utf-8")
        if tester is not None:
            result.test = {
                "chosen": {**tester(str(out)), "model": "chosen"},
                "aligned": {**tester(paths[0]), "model": names[0]},
                "finetuned": [
                    {**tester(p), "model": n} for n, p in zip(names[1:], paths[1:], strict=True)
                ],
            }
    return result
