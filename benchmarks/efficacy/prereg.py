"""Choices fixed before test: the hash of what each point was chosen from.

A setup's grids, search space and gate live in its config, committed before its first test
evaluation (``smollm2-chat.yml`` is the first written that way). :func:`grid_hash` is a short
hash of everything a method's points depend on — its default, its sweep grid, the gate and the
split it is chosen on (for the search: the search section) — so that

- each sweep records the hash of the grid it chose from (``sweeps/<method>.json``: ``grid_hash``),
- each test evaluation of a method's point records the hash it was chosen from (its
  ``summary.json``: ``grid_hash``; a chosen point takes its sweep's, a default the config's),
- the tables compare that hash with the config's now and mark a row whose grid changed after its
  test numbers were written (‡), and a row written before hashes were recorded (°).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from benchmarks.efficacy.plan import SEARCHES

if TYPE_CHECKING:
    from benchmarks.efficacy.plan import Config

CHANGED = " ‡"
"""After a row whose grid (or default, gate, space) changed after its test numbers were written."""
UNRECORDED = " °"
"""After a row written before grid hashes were recorded (old results, kept as they are)."""


def choice_space(config: Config, method: str, point: str = "chosen") -> dict[str, Any]:
    """What ``method``'s points depend on, as plain data. A setup's ``choose`` section (how the
    sweeps choose: item 5) is part of a chosen point's space only, so adding it leaves the
    defaults' hashes (and every hash of a setup without it) as they were."""
    gate = config.gate.model_dump()
    if method in SEARCHES:
        assert config.search is not None
        space = {"method": method, "search": config.search.model_dump(mode="json"), "gate": gate}
        if point == "chosen" and config.choose is not None:
            space["choose"] = config.choose.model_dump(exclude={"registered"})
        return space
    spec = config.methods[method]
    assert spec is not None
    space = {
        "method": method,
        "default": spec.default,
        "sweep": spec.sweep,
        "gate": gate,
        "chosen_on": {"split": "validation", "finetune": "benign-s0",
                      "sizes": config.splits.model_dump(mode="json")},
    }  # fmt: skip
    if point == "chosen" and config.choose is not None:
        space["choose"] = config.choose.model_dump(exclude={"registered"})
        space["chosen_on"]["finetune"] = config.choose.finetune
    return space


def grid_hash(config: Config, method: str, point: str = "chosen") -> str:
    """12 hex digits of the SHA-256 of :func:`choice_space` (keys sorted)."""
    text = json.dumps(choice_space(config, method, point), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def recorded_hash(config: Config, method: str, point: str) -> str:
    """The hash a test result of ``method`` at ``point`` ("default"/"chosen") records: a chosen
    point its sweep's (the grid it was chosen from), otherwise the config's now."""
    if point == "chosen" and method not in SEARCHES:
        path = config.results / "sweeps" / f"{method}.json"
        if path.is_file():
            found = json.loads(path.read_text(encoding="utf-8")).get("grid_hash")
            if found:
                return found
    return grid_hash(config, method, point)


def mark(config: Config, method: str, summaries: list[dict], point: str = "chosen") -> str:
    """‡ where a summary's hash differs from the config's now, ° where one has none, else ''."""
    hashes = [s.get("grid_hash") for s in summaries]
    if any(h is None for h in hashes):
        return UNRECORDED
    return CHANGED if any(h != grid_hash(config, method, point) for h in hashes) else ""
