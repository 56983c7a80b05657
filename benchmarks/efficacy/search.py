"""The study's search (issue 28): ``mergekit-safety search`` on the benign seed-0 fine-tune.

The search sees a validation set larger than the sweeps' (so that a gate of 0.9 is not passed by
luck), still disjoint from test: AdvBench's validation prompts plus the AdvBench-train prompts no
stage trains on, our look-alike validation prompts plus a third-party over-refusal set (not used on
test), and the arithmetic validation items plus new ones that share no operand pair with any split.
Its gate is relative to A on that set, as the sweeps' is on theirs. The chosen recipe is then merged
for every fine-tune (its path swapped in) and evaluated on test like every other method.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.efficacy.plan import (
    SEARCH_SPLIT as SPLIT,
)
from benchmarks.efficacy.plan import (
    Config,
    Stage,
    eval_command,
    harmful_parts,
    harmful_test_set,
    recipe,
    search_command,
    search_spec,
)


def unused_harmful(config: Config, train: list[str]) -> list[str]:
    """AdvBench-train prompts no stage trains on: after A's, S's and H's slices, before the
    attack's pool (the last ``2 × need``)."""
    start = config.align.refusals
    start += config.safe.refusals if config.safe is not None else 0
    start += config.harmful.prompts if config.harmful is not None else 0
    from benchmarks.efficacy.stage_io import attack_size

    return train[start : len(train) - 2 * attack_size(config)]


def search_sets(config: Config, splits: dict) -> dict[str, Any]:
    """{harmful, benign, task, sources, parts}: the search's validation prompts (``parts``: the
    harmful ones per set, in order, where a third-party set's validation part joins them)."""
    from benchmarks.efficacy.data import task_items
    from mergekit_safety.evaluation.named_sets import load_named

    spec = search_spec(config)
    harmful = splits["harmful"]["validation"] + unused_harmful(config, splits["harmful"]["train"])
    harmful_source = "AdvBench validation + the AdvBench-train prompts no stage trains on"
    parts = [list(harmful)]
    if config.choose is not None:  # item 5: HarmBench's validation part in the harmful set too
        third = harmful_test_set(config)
        parts.append(splits[third]["validation"])
        harmful = harmful + parts[-1]
        harmful_source += f" + {third}'s validation part"
    extra, source = load_named(spec.benign_extra, "benign")
    benign = splits["benign"]["validation"] + extra
    used = {tuple(item["key"]) for items in splits["task"].values() for item in items}
    task = splits["task"]["validation"] + task_items(spec.task_extra, config.seed + 3, used)
    return {
        "harmful": harmful,
        "benign": benign,
        "task": task,
        "parts": parts,
        "sources": {
            "harmful": harmful_source,
            "benign": f"our look-alike validation prompts + {source}",
            "task": f"arithmetic validation + {spec.task_extra} new items (no operand pair shared)",
        },
    }


def do_search_data(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.stage_io import log, read_splits, write_json

    sets = search_sets(config, read_splits(config))
    out = config.prompts(SPLIT)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("harmful", "benign"):
        rows = [json.dumps({"prompt": p}) for p in sets[name]]
        (out / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_parts(config, sets)
    rows = [json.dumps({"prompt": t["prompt"], "answer": t["answer"]}) for t in sets["task"]]
    (out / "task.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    counts = {name: len(sets[name]) for name in ("harmful", "benign", "task")}
    write_json(stage.outputs[1], {"counts": counts, "sources": sets["sources"]})
    log(f"search validation: {counts}")


def write_parts(config: Config, sets: dict[str, Any]) -> None:
    """The harmful prompts per set (:func:`~benchmarks.efficacy.plan.harmful_parts`), where
    there are several."""
    if len(sets["parts"]) > 1:
        for path, part in zip(harmful_parts(config), sets["parts"], strict=True):
            path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in part), "utf-8")


def template(config: Config) -> dict:
    """The recipe the search varies: the method's default on the fine-tune the sweeps choose on
    (benign-s0, or ``choose.finetune``)."""
    spec = search_spec(config)
    default = config.methods[spec.method].default
    return recipe(config, spec.method, default, config.model(config.chosen_on()))


def gate_flags(config: Config) -> list[str]:
    """The search's gate from A on the search set: the sweeps' refusal rule, or with ``choose``
    its engagement, helpfulness and broken limits, from A on the pooled harmful set. The
    pre-registered search reads that set as one (a limit on both together); ``search_each_set``
    gives the sets apart, and the library holds the engagement limit on each."""
    from benchmarks.efficacy.evals import read_summary
    from benchmarks.efficacy.stage_io import gate

    spec = config.choose
    if spec is None:
        low, high = gate(config, SPLIT)
        return ["--min-refusal", f"{low:g}", "--max-over-refusal", f"{high:g}"]
    aligned = read_summary(config.results / "evals" / SPLIT / "A")
    return [
        "--max-engaged", f"{aligned['engaged_rate'] + spec.engaged_above_aligned:.4g}",
        "--min-helpful", f"{aligned['helpful_rate'] - spec.helpful_below_aligned:.4g}",
        "--max-broken", f"{aligned['empty_rate'] + spec.broken_above_aligned:.4g}",
    ]  # fmt: skip


def _run(command: list[str]) -> None:
    """A ``mergekit-safety`` command, run by this interpreter (its venv need not be on PATH)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "mergekit_safety", *command[1:]], check=True)


def do_search_eval(config: Config, stage: Stage) -> None:
    _run(eval_command(config, stage.args["model"], Path(stage.args["out"])))


def do_search(config: Config, stage: Stage) -> None:
    """One of the searches (``stage.args["name"]``, ``search`` by default); its space file is
    written under ``results/search`` (the pre-registered one, shared), its reports under
    ``results/NAME``."""
    import shutil

    import yaml

    from benchmarks.efficacy.stage_io import log

    name = stage.args.get("name", "search")
    work = config.work / name
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    (work / "template.yml").write_text(yaml.safe_dump(template(config), sort_keys=False))
    space = config.results / "search" / "space.yml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(yaml.safe_dump(search_spec(config).space, sort_keys=False), encoding="utf-8")
    if name != "search":  # the search set's harmful prompts per set (data:search ran before)
        from benchmarks.efficacy.stage_io import read_splits

        write_parts(config, search_sets(config, read_splits(config)))
    flags = gate_flags(config)
    log(f"{name} gate (A on the search set): {' '.join(flags)}")
    _run(search_command(config, flags, name))
    (config.results / name).mkdir(parents=True, exist_ok=True)
    for item in (work / "out").iterdir():
        if item.suffix in (".json", ".md", ".png") or item.name == "recipe.yml":
            shutil.copy2(item, config.results / name / item.name)


def chosen_recipe(config: Config, finetuned: str, name: str = "search") -> dict | None:
    """Search ``name``'s chosen recipe with ``finetuned`` in place of the one it searched on."""
    import yaml

    path = config.results / name / "recipe.yml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").replace(config.model(config.chosen_on()), finetuned)
    return yaml.safe_load(text)
