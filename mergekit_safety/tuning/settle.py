"""Gate-settled stopping: a trial that can no longer pass the gate stops evaluating.

A trial's prompts are generated set by set (harmful first: :mod:`~mergekit_safety.evaluation.
early_stop`); after each batch, :class:`GateSettle` asks whether the gate fails *whatever the
replies not generated yet turn out to be*: more engaged harmful replies than ``--max-engaged``
allows, too few refusals or helpful look-alikes left to reach the bound, more broken replies
than the gate allows. Each test is the gate's own rate (a count over the set's size) with the
unknown replies counted in its favour, so a stopped trial is one the full evaluation fails. Where
``--harmful`` pools several sets, the harmful limits are tested on the pool and on each set, as
the gate reads them (:func:`~mergekit_safety.core.acceptance.gated`).

Why the choice is unchanged (``tests/test_search_settle.py`` runs a search both ways):

- the chosen trial passes the gate, so it is never stopped; its rates are the full evaluation's,
  whose batches are the same with or without stopping (the same order, the same batches);
- a stopped trial is told to Optuna as PRUNED, with the gate's constraints of what was measured
  (each > 0: it fails), and it counts as finished, as a full trial does: the trial count, the
  startup phase and the seed of each batch's sampler are the same;
- the TPE sampler (``gamma`` below, Optuna's default, passed explicitly) models the best
  ``gamma(n)`` trials; infeasible trials (stopped or not) fill that group, ordered by how far they
  miss the gate, only while fewer than ``gamma(n)`` trials pass. Stopping is therefore allowed
  for a batch only once ``gamma(budget.trials)`` trials pass (:func:`may_stop`): from then on
  every infeasible trial is modelled alike, whatever its rates, so the sampler asks the same
  trials as without stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mergekit_safety.core.acceptance import Gate
from mergekit_safety.evaluation.early_stop import Known
from mergekit_safety.evaluation.outcomes import BENIGN, ENGAGED, HARMFUL, HELPFUL, REFUSED


def gamma(n: int) -> int:
    """How many of ``n`` trials TPE models as the good ones (Optuna's ``default_gamma``)."""
    return min(int(math.ceil(0.1 * n)), 25)


@dataclass(frozen=True)
class GateSettle:
    """``settle(known)`` for a trial's evaluation: why ``gate`` fails whatever follows, or None.
    With ``active`` False it never stops (the trial is still generated set by set, as when it
    may stop, so its replies are the same either way)."""

    gate: Gate
    active: bool = True

    def __call__(self, known: Known) -> str | None:
        if not self.active:
            return None
        return settled_failure(self.gate, known)


def settled_failure(gate: Gate, known: Known) -> str | None:
    """The first of ``gate``'s limits that fails whatever the replies not judged yet are."""
    sizes = known.sizes
    n_all = sum(sizes.get(kind, 0) for kind in (HARMFUL, BENIGN, "task"))
    sets = known.harmful_sets
    tests = {
        # metric: [(where, set size, the count so far that bounds it, count toward it at most)]
        "engaged_rate": [("", sizes.get(HARMFUL, 0), known.count(HARMFUL, ENGAGED), 0)] + [
            (f" on {name}", n, known.set_count(name, ENGAGED), 0) for name, n in sets.items()
        ],
        "refusal_rate": [("", sizes.get(HARMFUL, 0), known.count(HARMFUL, REFUSED),
                          known.remaining(HARMFUL))] + [
            (f" on {name}", n, known.set_count(name, REFUSED), known.set_remaining(name))
            for name, n in sets.items()
        ],
        "helpful_rate": [("", sizes.get(BENIGN, 0), known.count(BENIGN, HELPFUL),
                          known.remaining(BENIGN))],
        "over_refusal_rate": [("", sizes.get(BENIGN, 0), known.count(BENIGN, REFUSED), 0)],
        "empty_rate": [("", n_all, known.broken, 0)],
    }  # fmt: skip
    for key, sign, bound in gate.limits():
        for where, n, count, more in tests[key]:
            if n <= 0:
                continue
            if sign == "<=" and count / n - bound > 0:  # the rate only grows from here
                return f"{key}{where} ≥ {count}/{n} > {bound:g}"
            if sign == ">=" and bound - (count + more) / n > 0:  # at most (count + more) / n
                return f"{key}{where} ≤ {count + more}/{n} < {bound:g}"
    return None


def passing(study: Any) -> int:
    """How many finished trials pass the gate (feasible: every constraint ≤ 0)."""
    from optuna.trial import TrialState

    return sum(
        1
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(value <= 0 for value in trial.user_attrs.get("constraints", [1.0]))
    )


def may_stop(study: Any, trials: int) -> bool:
    """Whether a batch's trials may stop once settled: ``gamma(trials)`` trials pass already
    (a search of ``trials`` never asks with more than ``trials`` in the study)."""
    return passing(study) >= gamma(trials)
