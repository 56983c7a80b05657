"""Clean splits: no test prompt with a near-twin in any training or validation set.

The rule (issue 38, item 2): two prompts are **near-twins** when the Jaccard overlap of their
word sets (lower-cased letter-and-digit runs) is at least :data:`THRESHOLD` (0.6). A harmful or
look-alike **test** prompt with a near-twin among the prompts of the same kind that any model
trains on or any choice is made on — that set's train and validation splits, A's alignment data
(its refusal prompts are harmful-train prompts, its helpful prompts are the look-alike train and
the generic helpful prompts), and a third-party set's validation part — is **dropped** from test
(moving it would change the training data of setups that already ran). The task set is not
subject to it: its prompts share one template by design, and its splits are disjoint by operand
pair (``data.task_items``).

HarmBench gets a validation part (:func:`harmbench_parts`): a seeded sample of the behaviours not
in the test sample and with no near-twin in it, so a choice can look at HarmBench without seeing
its test prompts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

THRESHOLD = 0.6
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> frozenset[str]:
    """The prompt's set of lower-cased words."""
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    """|words(a) ∩ words(b)| / |words(a) ∪ words(b)| (0 for two empty prompts)."""
    x, y = words(a), words(b)
    union = x | y
    return len(x & y) / len(union) if union else 0.0


@dataclass(frozen=True)
class Twin:
    """A test prompt's closest near-twin: where it is and how close."""

    test: str
    other: str
    source: str
    overlap: float


def near_twins(
    test: Sequence[str], others: dict[str, Sequence[str]], threshold: float = THRESHOLD
) -> list[Twin]:
    """Each test prompt's closest prompt among ``others`` (by source name) where the overlap is at
    least ``threshold``; test prompts without one are left out."""
    pool = [(source, text, words(text)) for source, texts in others.items() for text in texts]
    found = []
    for prompt in test:
        mine = words(prompt)
        best: tuple[float, str, str] | None = None
        for source, text, theirs in pool:
            union = mine | theirs
            overlap = len(mine & theirs) / len(union) if union else 0.0
            if overlap >= threshold and (best is None or overlap > best[0]):
                best = (overlap, source, text)
        if best is not None:
            found.append(Twin(prompt, best[2], best[1], best[0]))
    return found


@dataclass
class Cleaned:
    """The test prompts kept, and the twins of those dropped."""

    kept: list[str]
    dropped: list[Twin] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        by_source: dict[str, int] = {}
        for twin in self.dropped:
            by_source[twin.source] = by_source.get(twin.source, 0) + 1
        return {
            "kept": len(self.kept),
            "dropped": len(self.dropped),
            "by_source": by_source,
            "twins": [
                {"test": t.test, "twin": t.other, "source": t.source,
                 "overlap": round(t.overlap, 3)}
                for t in self.dropped
            ],
        }  # fmt: skip


def clean_test(
    test: Sequence[str], others: dict[str, Sequence[str]], threshold: float = THRESHOLD
) -> Cleaned:
    """``test`` without the prompts that have a near-twin in ``others``, order kept."""
    twins = near_twins(test, others, threshold)
    leaked = {t.test for t in twins}
    return Cleaned([p for p in test if p not in leaked], twins)


def training_sets(splits: dict, kind: str, align_refusals: int) -> dict[str, list[str]]:
    """Every set of ``kind`` ("harmful" or "benign") a model trains on or a choice is made on,
    by name: A's refusal prompts are named apart (the first ``align_refusals`` harmful-train)."""
    if kind == "harmful":
        train = splits["harmful"]["train"]
        return {
            "A's refusals": train[:align_refusals],
            "train (S, H, attack, calibration)": train[align_refusals:],
            "validation": splits["harmful"]["validation"],
        }
    return {
        "A's helpful (look-alike train)": splits["benign"]["train"],
        "A's helpful (generic)": splits.get("helpful", {}).get("train", []),
        "validation": splits["benign"]["validation"],
    }


def clean_splits(
    splits: dict, align_refusals: int, threshold: float = THRESHOLD, extra: dict | None = None
) -> tuple[dict, dict[str, dict]]:
    """``splits`` with each harmful and look-alike test split cleaned; the report per kind.
    ``extra``: more sets by kind ({"harmful": {"HarmBench validation": [...]}})."""
    out = {kind: dict(parts) for kind, parts in splits.items()}
    report = {}
    for kind in ("harmful", "benign"):
        others = {**training_sets(splits, kind, align_refusals), **(extra or {}).get(kind, {})}
        cleaned = clean_test(splits[kind]["test"], others, threshold)
        out[kind]["test"] = cleaned.kept
        report[kind] = cleaned.report()
    return out, report


def harmbench_parts(
    prompts: Sequence[str], test: Sequence[str], size: int, seed: int,
    threshold: float = THRESHOLD,
) -> list[str]:  # fmt: skip
    """A validation part of HarmBench: a seeded sample of ``size`` behaviours not in ``test`` and
    with no near-twin in it, in the file's order."""
    chosen = set(test)
    candidates = [
        i for i, p in enumerate(prompts)
        if p not in chosen and not near_twins([p], {"test": test}, threshold)
    ]  # fmt: skip
    if len(candidates) < size:
        raise ValueError(f"only {len(candidates)} HarmBench behaviours are clean of test")
    return [prompts[i] for i in sorted(random.Random(seed).sample(candidates, size))]
