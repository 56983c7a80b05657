"""One pass per merge: a ``top_k`` recipe is planned once, read once, and its run ends with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import recipe_for, write_recipe
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner
from safetensors import safe_open

from mergekit_safety.cli import main
from mergekit_safety.core import runs


def tensors(family) -> int:
    """How many tensors the family's models hold (one merge task each)."""
    with safe_open(family["aligned"] / "model.safetensors", "pt") as weights:
        return len(list(weights.keys()))


@pytest.fixture
def counted(monkeypatch):
    """Counts of the planner's hook calls: recipes planned and tensor tasks built."""
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

    counts = {"plans": 0, "tensors": 0}
    plan, init = MergePlanner.normalize_config, ExecuteMergeMethodTask.__init__

    def planned(self, *args, **kwargs):
        counts["plans"] += 1
        return plan(self, *args, **kwargs)

    def built(self, *args, **kwargs):
        counts["tensors"] += 1
        return init(self, *args, **kwargs)

    monkeypatch.setattr(MergePlanner, "normalize_config", planned)
    monkeypatch.setattr(ExecuteMergeMethodTask, "__init__", built)
    return counts


def test_inspect_on_a_top_k_recipe_plans_once_and_reads_the_recipe_once(
    tmp_path, family, counted, monkeypatch
):
    recipe = write_recipe(
        tmp_path / "r.yml", recipe_for("safe_linear", family, ("unaligned",), top_k=3)
    )
    reads = []
    read_text = Path.read_text

    def counting(self, *args, **kwargs):
        if self == recipe:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    out = tmp_path / "resolved.yml"
    result = CliRunner().invoke(
        main, ["inspect", str(recipe), "--quiet", "--write-recipe", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "top_k=3: threshold" in result.output
    assert counted["plans"] == 1
    assert counted["tensors"] == tensors(family)  # one task per tensor, built once
    assert len(reads) == 1
    written = yaml.safe_load(out.read_text())["parameters"]
    assert set(written) == {"threshold"}


def test_a_top_k_merge_plans_once_and_its_run_ends_with_it(tmp_path, family, counted):
    recipe = recipe_for("safe_linear", family, ("unaligned",), top_k=3)
    run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "out"), MergeOptions())
    assert counted["plans"] == 1
    assert counted["tensors"] == tensors(family)
    assert runs.current() is None
    assert (tmp_path / "out" / "config.json").exists()
