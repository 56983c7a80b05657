"""CPU time of one ``search`` trial against one ``sweep`` point, on the same model and prompts.

- **point** (what ``sweep`` does per value): ``run_merge`` to a directory, load it, evaluate it.
- **trial** (what ``search`` does per trial): merge in memory into the resident network (loaded
  once per search, not timed) and evaluate it as it is (``tuning/resident.py``).
- **trial, passing** / **trial, failing**: the trial as ``search`` runs it now (prompts encoded
  once per search, sets generated harmful first, gate-settled stopping on: ``tuning/settle.py``)
  under a gate it passes (``--pass-engaged``: evaluated in full) and one it fails
  (``--fail-engaged``: it stops once enough harmful replies engage).
- **generation**: only the greedy generation of the same prompts on the resident network (the
  floor of any evaluation of these prompts: what a passing trial cannot go below).

Both evaluate the same prompts with the same settings; the cases are interleaved and each time is
the minimum over ``--repeats`` (a shared machine slows every case alike). The recipe is a
``task_arithmetic`` merge of ``--model`` and a copy of it with a small random update on every 2-D
weight (the second input a real sweep would have; its numbers do not matter here, its shapes do).

    python -m benchmarks.trial --model benchmarks/efficacy/work/smollm2/models/U --json
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def perturbed_copy(model: str, out: Path, scale: float = 1e-3) -> Path:
    """``model`` plus ``scale`` × a random update on every 2-D weight, saved to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    network = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if param.ndim == 2 and "embed" not in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    network.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def cpu_timed(fn: Any) -> tuple[Any, float, float]:
    """(value, CPU seconds of this process, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--limit", type=click.IntRange(min=1), default=16, show_default=True,
              help="Prompts per set (harmful, benign, task) of the built-in sets.")  # fmt: skip
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--pass-engaged", type=float, default=1.0, show_default=True,
              help="--max-engaged of the gate the passing trial is run under.")  # fmt: skip
@click.option("--fail-engaged", type=float, default=0.1, show_default=True,
              help="--max-engaged of the gate the failing trial is run under.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Markdown.")
def main(
    model: str, limit: int, max_new_tokens: int, batch_size: int, repeats: int,
    pass_engaged: float, fail_engaged: float, as_json: bool,
) -> None:  # fmt: skip
    """Time one search trial against one sweep point (CPU seconds, minimum over repeats)."""
    from mergekit.options import MergeOptions

    from benchmarks.generation import machine
    from mergekit_safety.core.acceptance import Gate
    from mergekit_safety.evaluation import Evaluator, generation, load_prompt_sets
    from mergekit_safety.tuning.merging import merge_recipe
    from mergekit_safety.tuning.resident import ResidentMerge, evaluate_trial
    from mergekit_safety.tuning.settle import GateSettle

    prompts = load_prompt_sets(limit=limit)
    asked = [*prompts.harmful, *prompts.benign, *(item.prompt for item in prompts.task)]
    gates = {"passing": Gate(max_engaged=pass_engaged, min_helpful=0.0),
             "failing": Gate(max_engaged=fail_engaged)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="trial-bench-") as scratch:
        root = Path(scratch)
        other = perturbed_copy(model, root / "other")
        recipe = {
            "merge_method": "task_arithmetic",
            "base_model": str(Path(model).resolve()),
            "models": [{"model": str(other), "parameters": {"weight": 0.5}}],
            "dtype": "float32",
        }
        options = MergeOptions(quiet=True)

        def evaluator() -> Evaluator:
            return Evaluator(prompts, None, batch_size, max_new_tokens, "cpu", False)

        def point() -> dict[str, Any]:
            where = root / "point"
            merge_recipe(recipe, where, options)
            return evaluator()(str(where))

        resident, setup_cpu, setup_wall = cpu_timed(
            lambda: ResidentMerge(recipe, options, device="cpu", dtype="float32")
        )
        plain, searching = evaluator(), evaluator()

        def generate() -> dict[str, Any]:
            view = resident.view
            texts = generation.generate(
                view.network, view.tokenizer, asked, batch_size=batch_size,
                max_new_tokens=max_new_tokens, progress=False, encoded=view.encode(asked),
            )  # fmt: skip
            return {"replies": len(texts)}

        cases = {
            "point": point,
            "trial, plain": lambda: evaluate_trial(resident, plain, recipe, "trial"),
            **{
                f"trial, {name}": (
                    lambda gate=gate: evaluate_trial(
                        resident, searching, recipe, "trial", settle=GateSettle(gate)
                    )
                )
                for name, gate in gates.items()
            },
            "generation": generate,
        }
        cases["trial, plain"]()  # makes the resident view (encodes once), as a search's first trial
        cpu: dict[str, float] = {}
        wall: dict[str, float] = {}
        summaries: dict[str, Any] = {}
        load = [os.getloadavg()[0]]
        for index in range(repeats):
            names = list(cases) if index % 2 == 0 else list(cases)[::-1]
            for name in names:
                summaries[name], c, w = cpu_timed(cases[name])
                cpu[name] = min(cpu.get(name, c), c)
                wall[name] = min(wall.get(name, w), w)
        load.append(os.getloadavg()[0])

    rates = ("refusal_rate", "over_refusal_rate", "task_accuracy", "engaged_rate", "broken_rate")
    trials = [name for name in cases if name.startswith("trial")]
    report = {
        "model": model,
        "prompts": prompts.counts(),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "repeats": repeats,
        "gates": {name: gate.describe() for name, gate in gates.items()},
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "ratio_to_point": {name: cpu[name] / cpu["point"] for name in cases if name != "point"},
        "generation_share_of_point": cpu["generation"] / cpu["point"],
        "resident_setup": {"cpu_seconds": setup_cpu, "wall_seconds": setup_wall},
        "settled": {name: summaries[name].get("settled") for name in trials},
        "same_rates_as_point": {
            name: all(summaries[name].get(k) == summaries["point"].get(k) for k in rates)
            for name in trials
            if not summaries[name].get("settled")
        },
        "rates": {name: {k: summaries[name].get(k) for k in rates} for name in ["point", *trials]},
        "machine": machine(),
        "load_average": [round(x, 2) for x in load],
        "note": "2-core machine shared with other agents: each time is the minimum over "
        "interleaved repeats, and still spreads by 20-60 % between runs",
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("| case | CPU s | wall s | × point (CPU) |\n|---|---:|---:|---:|")
    for name in cases:
        click.echo(f"| {name} | {cpu[name]:.1f} | {wall[name]:.1f} | "
                   f"{cpu[name] / cpu['point']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
