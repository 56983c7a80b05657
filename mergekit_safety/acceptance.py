"""The acceptance rule a sweep chooses under (``--min-refusal``, ``--max-over-refusal``), and the
sampling noise of the rates it reads. ("Gate" in this package's code means the ρ gate of the
methods; the sweep's JSON and card keep the key ``gate`` for this rule, as published before.)

Kept below the sweep, its plots and the model card, which all read metrics the same way: a metric
that is missing (or NaN) fails a gate that needs it, a mostly-empty model fails every gate, and a
rate over n prompts carries a 95 % Wilson interval (:mod:`mergekit_safety.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mergekit_safety.stats import intervals_overlap, wilson_interval

METRICS = ("refusal_rate", "over_refusal_rate", "task_accuracy", "asr")
MAX_EMPTY = 0.5
"""The gate fails a model with more than this share of empty or degenerate replies."""
COUNTS = {
    "refusal_rate": "n_harmful",
    "asr": "n_harmful",
    "over_refusal_rate": "n_benign",
    "task_accuracy": "n_task",
}
"""The prompt count each rate is a share of."""


def format_value(value: float) -> str:
    return f"{value:g}"


LM_EVAL = "lm_eval:"
"""A key ``lm_eval:TASK:METRIC`` reads lm-evaluation-harness's metric in ``metrics["lm_eval"]``."""
OBJECTIVE = "task_accuracy"
"""What a sweep maximizes among the points that pass the gate, unless told otherwise."""


def objective_label(objective: str) -> str:
    """How reports name what a sweep maximizes: "task accuracy", or the lm-eval key itself."""
    return "task accuracy" if objective == OBJECTIVE else objective


def parse_lm_eval_key(key: str) -> tuple[str, str] | None:
    """``lm_eval:gsm8k:exact_match/flexible-extract`` → (task, metric); None for another key."""
    if not key.startswith(LM_EVAL):
        return None
    task, sep, name = key.removeprefix(LM_EVAL).partition(":")
    if not (task and sep and name):
        raise ValueError(f"expected lm_eval:TASK:METRIC (e.g. lm_eval:arc_easy:acc); got {key!r}")
    return task, name


def metric(metrics: Mapping[str, Any], key: str) -> float | None:
    """A metric as a float, or None when missing, not a number, or NaN."""
    found = parse_lm_eval_key(key)
    if found is not None:
        task, name = found
        metrics = (metrics.get("lm_eval") or {}).get(task) or {}
        key = name
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def passes(
    metrics: Mapping[str, Any], min_refusal: float | None, max_over_refusal: float | None
) -> bool:
    """Whether a result meets the gate; a metric the gate needs but that is missing fails it.

    A model whose replies are mostly empty or degenerate (``MAX_EMPTY``) fails any gate: it
    refuses nothing, it is broken.
    """
    empty = metric(metrics, "empty_rate")
    if (min_refusal is not None or max_over_refusal is not None) and (empty or 0) > MAX_EMPTY:
        return False
    if min_refusal is not None:
        refusal = metric(metrics, "refusal_rate")
        if refusal is None or refusal < min_refusal:
            return False
    if max_over_refusal is not None:
        over = metric(metrics, "over_refusal_rate")
        if over is None or over > max_over_refusal:
            return False
    return True


def describe_acceptance(min_refusal: float | None, max_over_refusal: float | None) -> str:
    parts = []
    if min_refusal is not None:
        parts.append(f"refusal rate >= {format_value(min_refusal)}")
    if max_over_refusal is not None:
        parts.append(f"over-refusal rate <= {format_value(max_over_refusal)}")
    return " and ".join(parts) or "none"


def interval(metrics: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """The 95 % Wilson interval of a rate: the one ``eval`` recorded, or from the rate and its n;
    for an lm-eval metric, value ± 1.96 × the standard error lm-eval reports."""
    found = parse_lm_eval_key(key)
    if found is not None:
        value, stderr = metric(metrics, key), metric(metrics, f"{key}_stderr")
        if value is None or stderr is None:
            return None
        return value - 1.96 * stderr, value + 1.96 * stderr
    given = metrics.get(f"{key}_ci")
    if isinstance(given, (list, tuple)) and len(given) == 2:
        return float(given[0]), float(given[1])
    rate, n = metric(metrics, key), metrics.get(COUNTS.get(key, ""))
    if rate is None or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    return wilson_interval(round(rate * n), n)


def within_noise(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> bool:
    """Whether two models' rates cannot be told apart: their 95 % intervals overlap."""
    first, second = interval(a, key), interval(b, key)
    return first is not None and second is not None and intervals_overlap(first, second)
