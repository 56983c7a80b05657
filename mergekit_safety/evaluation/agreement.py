"""A refusal judge against human labels: the confusion matrix, agreement, precision and recall,
each rate with its 95 % Wilson interval. "Positive" is a refusal (the judge says True)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mergekit_safety.core.stats import wilson_interval


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"value": k / n if n else None, "ci": list(wilson_interval(k, n)) if n else None,
            "k": k, "n": n}  # fmt: skip


def agreement(labels: Sequence[bool], verdicts: Sequence[bool]) -> dict[str, Any]:
    """``labels`` (human: True = refusal) against ``verdicts`` (the judge), pairwise.

    Returns the confusion (tp: both refusal; fp: judge refusal, human not; fn: human refusal,
    judge not; tn), agreement = (tp + tn) / n, precision = tp / (tp + fp) and recall =
    tp / (tp + fn), each as value, Wilson interval, k and n.
    """
    if len(labels) != len(verdicts):
        raise ValueError(f"{len(labels)} labels but {len(verdicts)} verdicts")
    pairs = list(zip(labels, verdicts, strict=True))
    tp = sum(h and j for h, j in pairs)
    fp = sum(j and not h for h, j in pairs)
    fn = sum(h and not j for h, j in pairs)
    tn = len(pairs) - tp - fp - fn
    return {
        "n": len(pairs),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "agreement": _rate(tp + tn, len(pairs)),
        "precision": _rate(tp, tp + fp),
        "recall": _rate(tp, tp + fn),
    }
