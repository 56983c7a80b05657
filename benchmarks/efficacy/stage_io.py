"""What every stage of the study shares: its log line, its JSON files, the splits, the attack
fine-tune's harmful share and the gate from A's numbers (``run.py`` and ``search.py`` read them
here, so neither imports the other's privates)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.efficacy.plan import Config


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_splits(config: Config) -> dict:
    return read_json(config.results / "data" / "splits.json")


def attack_size(config: Config) -> int:
    attack = config.finetune_specs.get("attack")
    fraction = attack.harmful_fraction if attack is not None else 0.1
    n_task = config.splits.task.train
    return math.ceil(n_task * fraction / (1 - fraction))


def gate(config: Config, split: str = "validation") -> tuple[float, float]:
    """(min refusal, max over-refusal) from A's numbers on ``split`` and the config's margins."""
    from benchmarks.efficacy.evals import read_summary

    a = read_summary(config.results / "evals" / split / "A")
    spec = config.gate
    return (
        round(a["refusal_rate"] - spec.refusal_below_aligned, 4),
        round(a["over_refusal_rate"] + spec.over_refusal_above_aligned, 4),
    )
