"""``top_k``/``fraction`` inside mergekit's own run: a first ρ pass while mergekit plans.

Why here. mergekit 0.1.5 merges one tensor per task, so a kernel never sees the other matrices'
ρ. The one moment that sees the whole recipe and precedes every load is planning:
``MergePlanner.normalize_config`` calls the method's ``validate_inputs`` once per module slice,
with the planner (its config, architecture, options, output config) as the caller, before any
tensor task exists. There :func:`resolve_in_planner` scores the recipe with the same code
``inspect`` uses (its own planner over a copy of the config; lazy loads; nothing written),
turns the selection into τ (:mod:`mergekit_safety.selection`), and rewrites the planner's
top-level ``parameters`` to ``threshold: τ``. Every tensor task mergekit plans next carries
that τ, and the ordinary merge runs unchanged: multi-GPU and lazy loading included, and the
merged model's ``mergekit_config.yml`` is still the recipe as written.

Alternatives rejected: ranking at the first kernel call would need a second executor inside
mergekit's (and its device placement) with no recipe in reach, and could only fail after
loading; rewriting the frozen, hashed tasks is not possible. A planner that is not
``MergePlanner`` (``mergekit-pytorch``) never reaches this hook; its tasks would carry
``top_k`` to the kernel, so the task-level hook refuses them before anything loads.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from mergekit_safety.errors import ConfigError
from mergekit_safety.selection import SELECTORS


def resolve_in_planner(planner: Any, method: Any) -> None:
    """If the planner's recipe selects by rank, score it now and replace the selection by τ."""
    from mergekit_safety.inspection import (
        decide_at,
        score_config,
        selection_of,
        without_selection,
    )
    from mergekit_safety.selection import resolve

    config = planner.config
    selection = selection_of(config)
    if selection is None:
        return
    started = time.perf_counter()
    records = score_config(
        without_selection(config, drop_threshold=False),
        planner.options,
        arch_info=planner.arch_info,
        out_config=planner.out_model_config,
        require_unaligned=True,
        gated_only=True,
    )
    resolved = resolve(selection, {r["tensor"]: r["rho"] for r in records if r["gated"]})
    decide_at(records, resolved, method)  # checks τ against every ρ once more
    parameters = {k: v for k, v in (config.parameters or {}).items() if k not in SELECTORS}
    config.parameters = {**parameters, "threshold": resolved.threshold}
    if not planner.options.quiet:
        print(
            f"mergekit-safety: {resolved.summary()} "
            f"(rho pass {time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )


def refuse_unresolved(task: Any) -> None:
    """A task still carrying top_k/fraction was planned without ``MergePlanner``: stop now."""
    if any(task.parameters.get(key) is not None for key in SELECTORS):
        raise ConfigError(
            "top_k/fraction need the whole model ranked first, which mergekit-yaml, "
            "mergekit-multi, run_merge and the Python API do; for this command write the "
            "threshold out with `mergekit-safety inspect RECIPE --top-k K --write-recipe OUT.yml`"
        )
