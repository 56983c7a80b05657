"""One merge, one run object: nothing a merge decided is read by the next one in the process."""

from __future__ import annotations

import threading

import pytest
import torch
import yaml
from helpers import recipe_for
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.merge_methods import merge_tensors
from mergekit.options import MergeOptions

from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.recipe.inspection import inspect_recipe


def merge(recipe: dict, out, capfd) -> tuple[str, runs.MergeRun]:
    """Run ``recipe`` in this process; return the done line it printed and the merge's run,
    which has ended: nothing is current after the merge."""
    capfd.readouterr()
    opened = []
    real = runs.opened

    def spy(run: runs.MergeRun):
        opened.append(run)
        return real(run)

    runs.opened = spy
    try:
        run_merge(MergeConfiguration.model_validate(recipe), str(out), MergeOptions(quiet=False))
    finally:
        runs.opened = real
    done = [
        line for line in capfd.readouterr().err.splitlines() if "mergekit-safety: wrote" in line
    ]
    assert len(done) == 1, done
    assert runs.current() is None  # the run ended with its merge
    (run,) = [run for run in opened if run.out_path == str(out)]
    return done[0], run


def test_gated_then_ungated_merge_report_their_own_decisions(family, tmp_path, capfd):
    """The bug this replaced: the second, ungated merge reported the first one's decisions."""
    gated, first = merge(recipe_for("safe_linear", family, ("unaligned",), threshold=0.35),
                         tmp_path / "gated", capfd)  # fmt: skip
    assert gated.endswith(" of 14 gated matrices merged)"), gated
    assert len(first.decisions) == 14

    plain, second = merge(recipe_for("safe_linear", family, ()), tmp_path / "plain", capfd)
    assert plain.startswith(f"mergekit-safety: wrote {tmp_path / 'plain'} (safe_linear, all ")
    assert plain.endswith(" tensors merged)"), plain
    assert second is not first and second.decisions == {}
    assert len(first.decisions) == 14  # the first run's record is its own, untouched


def test_two_recipes_in_one_process_each_record_what_inspect_predicts(family, tmp_path, capfd):
    lora = recipe_for("safe_lora", family, ("unaligned",), threshold=1.0)  # all merge
    merged_lora, run = merge(lora, tmp_path / "lora", capfd)
    lora_decisions = {name: d.merge for name, d in run.decisions.items()}

    safemerge = recipe_for("safemerge", family, ("unaligned", "safe"), threshold=0.2)  # few
    merged_safemerge, run = merge(safemerge, tmp_path / "safemerge", capfd)
    safemerge_decisions = {name: d.merge for name, d in run.decisions.items()}

    for recipe, decisions, line in (
        (lora, lora_decisions, merged_lora),
        (safemerge, safemerge_decisions, merged_safemerge),
    ):
        path = tmp_path / f"{recipe['merge_method']}.yml"
        path.write_text(yaml.safe_dump(recipe))
        expected = {r["tensor"]: r["merge"] for r in inspect_recipe(path, quiet=True) if r["gated"]}
        assert decisions == expected
        assert f"{sum(expected.values())} of {len(expected)} gated matrices merged" in line
    assert lora_decisions != safemerge_decisions  # else the test could not tell them apart


def test_a_failed_merge_undoes_its_output_in_process(family, tmp_path):
    """Without the excepthook (the Python API), a failing run leaves no directory behind."""
    recipe = recipe_for("safe_linear", family, ("unaligned",), threshold=0.35)
    recipe["base_model"] = str(family["unaligned"])  # the unaligned model is base_model itself
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="is base_model itself"):
        run_merge(MergeConfiguration.model_validate(recipe), str(out), MergeOptions(quiet=True))
    assert not out.exists()


def test_a_python_api_call_opens_and_closes_its_own_run():
    before = runs.current()
    a, f, u = torch.zeros(4, 3), torch.ones(4, 3), torch.full((4, 3), -1.0)
    merged = merge_tensors(
        [a, f, u],
        "safe_linear",
        ids=["a", "f", "u"],
        base_index=0,
        name="w",
        parameters={"weight": {"f": 0.5}, "role": {"u": "unaligned"}, "threshold": 0.35},
    )
    assert torch.equal(merged, f)  # Δ ∥ V: ρ = 1 keeps θ_ft
    assert runs.current() is before


def test_bound_carries_the_run_into_a_worker_thread():
    run = runs.MergeRun(out_path="x")
    seen = []

    def worker() -> None:
        seen.append(runs.current())

    threads = [threading.Thread(target=worker), threading.Thread(target=runs.bound(worker, run))]
    for thread in threads:
        thread.start()
        thread.join()
    assert seen == [None, run]


def test_a_run_undoes_once_and_warns_once():
    run = runs.MergeRun()
    calls = []
    run.on_failure(lambda: calls.append(1))
    run.fail()
    run.fail()
    assert calls == [1]
    with pytest.warns(UserWarning, match="once") as caught:
        run.warn_once("k", "once")
        run.warn_once("k", "once")
    assert len(caught) == 1
