"""What the merge benchmark runs: one recipe per method and fine-tune, and the stock pairing.

Each safety method is compared with the stock mergekit method over the *same models*, with the
same command-line options: ``safe_linear`` without an unaligned model against ``linear`` (two
inputs), and each gated method against ``task_arithmetic`` with the aligned base and the same
non-base models listed (``task_arithmetic`` has no roles; each model just gets a weight).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import Sample, measure

BIN = Path(sys.executable).parent
MERGE_OPTIONS = ("--lazy-unpickle", "--no-copy-tokenizer", "--no-write-model-card", "--quiet")
"""Identical for every merge, stock or ours."""


@dataclass(frozen=True)
class Job:
    """One measured command. ``reference`` names the stock job it is compared with."""

    key: str
    method: str
    finetune: str
    recipe: dict
    reference: str | None = None
    inspect: bool = False
    target_wall: float | None = None
    target_rss: float | None = None
    samples: list[Sample] = field(default_factory=list, compare=False)

    @property
    def inputs(self) -> int:
        return len(self.recipe["models"]) + ("base_model" in self.recipe)

    def command(self, recipe_path: Path, out: Path) -> list[str]:
        if self.inspect:
            return [str(BIN / "mergekit-safety"), "inspect", str(recipe_path), "--quiet"]
        return [str(BIN / "mergekit-yaml"), str(recipe_path), str(out), *MERGE_OPTIONS]

    def run(self, workdir: Path, env: dict[str, str] | None = None) -> Sample:
        """Write the recipe (absolute paths), run once into a fresh folder, remove the output."""
        recipe_path = workdir / "recipes" / f"{self.key.replace('/', '_')}.yml"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(json.dumps(self.recipe, indent=2))  # JSON is valid YAML
        out = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
        try:
            sample = measure(self.command(recipe_path, out), env=env)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self.samples.append(sample)
        return sample


def recipe(method: str, dtype: str, models: list[tuple[Path, dict]], base: Path | None) -> dict:
    body: dict = {"merge_method": method, "dtype": dtype}
    if base is not None:
        body["base_model"] = str(base.resolve())
    body["models"] = [
        {"model": str(path.resolve()), **({"parameters": p} if p else {})} for path, p in models
    ]
    return body


def plan(
    paths: dict[str, Path],
    dtype: str,
    finetunes: list[str],
    *,
    stock_per_finetune: bool = False,
    all_on_full: bool = False,
    inspect_on: tuple[str, ...] = ("r8",),
    calibration: Path | None = None,
) -> list[Job]:
    """Every job. Stock task_arithmetic runs once (with the first fine-tune listed) unless
    ``stock_per_finetune``: its cost does not depend on what the update looks like. On the
    full-rank fine-tune only safe_lora runs unless ``all_on_full``. ``lssf`` runs beside the
    gated methods (against task_arithmetic over the same three models); ``safe_delta`` only
    with ``calibration`` (statistics of the aligned model), against task_arithmetic over its
    two models."""
    aligned, unaligned, safe = paths["aligned"], paths["unaligned"], paths["safe"]
    first = paths[f"ft_{finetunes[0]}"]
    jobs = [
        Job("linear", "linear", finetunes[0],
            recipe("linear", dtype, [(aligned, {"weight": 0.3}), (first, {"weight": 0.7})], None)),
        Job("safe_linear", "safe_linear (plain)", finetunes[0],
            recipe("safe_linear", dtype, [(first, {"weight": 0.7})], aligned),
            reference="linear", target_wall=1.0, target_rss=1.05),
    ]  # fmt: skip
    for index, name in enumerate(finetunes):
        ft = paths[f"ft_{name}"]
        lora = name != "full"
        stock = f"/{name}" if stock_per_finetune else ""
        if stock_per_finetune or index == 0:
            stock3 = [(ft, {"weight": 0.7}), (unaligned, {"weight": 0.1})]
            stock4 = [*stock3, (safe, {"weight": 0.2})]
            label = name if stock_per_finetune else "any"
            if calibration is not None:
                jobs.append(
                    Job(f"task_arithmetic2{stock}", "task_arithmetic", label,
                        recipe("task_arithmetic", dtype, [(ft, {"weight": 0.7})], aligned))
                )  # fmt: skip
            jobs += [
                Job(f"task_arithmetic3{stock}", "task_arithmetic", label,
                    recipe("task_arithmetic", dtype, stock3, aligned)),
                Job(f"task_arithmetic4{stock}", "task_arithmetic", label,
                    recipe("task_arithmetic", dtype, stock4, aligned)),
            ]  # fmt: skip
        unaligned_entry = (unaligned, {"role": "unaligned"})
        ours = {
            "safe_linear_gated": ("safe_linear (gated)", [(ft, {"weight": 0.7}), unaligned_entry]),
            "safe_lora": ("safe_lora", [(ft, {}), unaligned_entry]),
            "safemerge": ("safemerge", [(ft, {"weight": 0.8}), unaligned_entry,
                                        (safe, {"role": "safe", "weight": 0.2})]),
            "lssf": ("lssf", [(ft, {}), unaligned_entry]),
        }  # fmt: skip
        targets = {"target_wall": 1.25, "target_rss": 1.1} if lora else {}
        for key, (label, models) in ours.items():
            if not (lora or all_on_full or key == "safe_lora"):
                continue
            method = key.removesuffix("_gated")
            body = recipe(method, dtype, models, aligned)
            reference = f"task_arithmetic{len(models) + 1}{stock}"
            jobs.append(Job(f"{key}/{name}", label, name, body, reference=reference, **targets))
        if calibration is not None and (lora or all_on_full):
            body = recipe("safe_delta", dtype, [(ft, {})], aligned)
            body["parameters"] = {"calibration": str(calibration.resolve())}
            jobs.append(
                Job(f"safe_delta/{name}", "safe_delta", name, body,
                    reference=f"task_arithmetic2{stock}", **targets)
            )  # fmt: skip
        if name in inspect_on:
            body = recipe("safe_lora", dtype, ours["safe_lora"][1], aligned)
            jobs.append(
                Job(f"inspect/{name}", "mergekit-safety inspect", name, body,
                    reference=f"task_arithmetic3{stock}", inspect=True)
            )  # fmt: skip
    return jobs
