"""Sweep one or two recipe parameters under a safety gate.

A safety merge trades task skill for refusals, and the best ``weight`` (λ) and ``threshold`` (τ,
or ``top_k``/``fraction``) are model-specific — and interact: the best gated point needs both.
The sweep merges the recipe once per point of the grid (one parameter: a line) with mergekit's own
``run_merge``, evaluates each merge, and keeps the point with the best task accuracy among those
that pass the gate (:mod:`mergekit_safety.core.acceptance`).

- :mod:`.grid`: the ``--set`` value ranges and the checked plan;
- :mod:`.run`: the loop: every reference and point evaluated on an executor, the choice kept;
- :mod:`.executor`: what the loop asks of an executor (jobs in, outcomes out);
- :mod:`.serial`: the executor that runs here, one point after another;
- :mod:`.distributed`: the executor with every point a Ray task (``sweep --ray``);
- :mod:`.choice`: the choice rule; :mod:`.result`: the rows; :mod:`.merging`: merging a point;
- :mod:`.report`: ``sweep.json``/``.csv``/``.md`` and the plots.
"""

from mergekit_safety.core.acceptance import Gate, format_value, metric, passes
from mergekit_safety.sweep.choice import SweepPoint, close_to_chosen, select
from mergekit_safety.sweep.executor import Executor, describe_error
from mergekit_safety.sweep.grid import (
    GATE_CHOICES,
    SWEEPABLE,
    TIE_BREAK,
    SweepPlan,
    parse_assignment,
    parse_assignments,
    parse_values,
    plan_grid,
    plan_sweep,
    recipe_roles,
    reference_name,
    set_parameter,
)
from mergekit_safety.sweep.merging import merge_recipe
from mergekit_safety.sweep.report import sweep_record, write_reports
from mergekit_safety.sweep.result import SweepResult
from mergekit_safety.sweep.run import run_sweep
from mergekit_safety.sweep.serial import SerialExecutor

__all__ = [
    "GATE_CHOICES",
    "SWEEPABLE",
    "TIE_BREAK",
    "Executor",
    "SerialExecutor",
    "SweepPlan",
    "SweepPoint",
    "SweepResult",
    "close_to_chosen",
    "describe_error",
    "Gate",
    "format_value",
    "merge_recipe",
    "metric",
    "parse_assignment",
    "parse_assignments",
    "parse_values",
    "passes",
    "plan_grid",
    "plan_sweep",
    "recipe_roles",
    "reference_name",
    "run_sweep",
    "select",
    "set_parameter",
    "sweep_record",
    "write_reports",
]
