"""Safe Delta (Lu et al., ICML 2025, arXiv 2505.12038): keep the fine-tuned entries a safety
budget allows, and compensate the rest, per linear layer, from the aligned model's input
statistics on safety data.

Per weight W (``out × in``) of a linear layer with calibration statistics
(:mod:`mergekit_safety.core.calibration`; ``mergekit-safety calibrate`` on the aligned model),
following the authors' ``adjust_delta`` (ColinLu50/SafeDelta commit 3a4ea35,
``llama2/safedelta/safedelta_runner.py`` lines 70–171, with the run's ``blocksize=2048``,
``percdamp=0.01`` from ``llama2/run_safedelta.py`` lines 210–214):

1. ``H = 2 XᵀX / N``; a column never seen gets ``H_jj = 1``; ``H += 0.01 · mean(diag H) · I``;
   ``U`` = the upper Cholesky factor of ``H⁻¹`` (SparseGPT's sequential OBS form), ``d = diag U``.
2. Per block of 2048 columns: the per-entry safety cost of taking the fine-tuned value,
   ``c_ij = (W_ft,ij − W_ij)² / d_j²`` (OBS: δ² / [H⁻¹]); entries are ranked by ``1 / d_j²``
   (columns where a change costs least first); the 15 % of entries with the largest ``1/d²``
   are never taken; along that order, entries are taken while the running sum of costs stays
   within the budget ``ε = mean(1/d²) · (s / 2) · (out / 4096)``, s = ``budget`` (the
   reference's ``--scale``; default 0.1, its ``main`` default and the summary-task script's).
3. Compensation, in sub-blocks of 4 columns: taken entries become W_ft, the others stay
   aligned; the error ``(W − Q) / d`` is pushed onto the later columns through ``U``'s rows
   (``W[:, later] −= err · U[cols, later]``), within the block and then past it.

Tensors without statistics (1-D, embeddings, ``lm_head``) stay aligned, as in the reference
(it edits the decoder layers' linear modules of the aligned model and saves that model).
Several fine-tunes act as one: W_ft = θ_aligned + ΣΔᵢ. Deviations (``docs/faithfulness.md``):
ties in the ranking are broken by flat index (the reference's ``argsort`` is unstable); the
compensation is applied lazily in chunks of 128 columns (the same values, summed in another
order); the 15 % cut keeps every entry when
``int(0.15·n) = 0`` (the reference's ``[0:-0]`` would keep none; only matrices under 7 entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_safety.core import calibration as calibration_files
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.parameters import Budget
from mergekit_safety.core.roles import Role, RoleRule, RoleValue
from mergekit_safety.methods.base import (
    Decision,
    GateInputs,
    RoleCheckedMethod,
    RoleInputs,
    missing_calibration,
)

SAFE_DELTA_BUDGET = 0.1
"""The safety budget s (the reference's ``--scale``; provenance: the module docstring)."""

BLOCK = 2048
"""Columns per block (``run_safedelta.py`` line 213); the budget is per block."""
SUB_BLOCK = 4
"""Columns compensated together (``safedelta_runner.py`` line 144)."""
CHUNK = 128
"""Columns whose compensation is applied lazily together (a multiple of ``SUB_BLOCK``)."""
DAMPING = 0.01
"""``percdamp`` (``run_safedelta.py`` line 212)."""
EXCLUDED = 0.15
"""The share of entries, most safety-sensitive first, never taken (line 130)."""
ROWS_UNIT = 4096
"""The budget scales with ``out / 4096`` (line 105)."""


def inverse_factor(hessian: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``U``: the upper Cholesky factor of ``(H + damping)⁻¹``, dead columns set to 1 first.

    In ``dtype``: fp32 as the reference (fp64 for fp64 weights).
    """
    h = hessian.to(dtype, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    index = torch.arange(h.shape[0], device=h.device)
    h[index, index] += DAMPING * torch.mean(torch.diag(h))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def selection_mask(
    current: torch.Tensor, finetuned: torch.Tensor, d: torch.Tensor, budget: float, rows: int
) -> torch.Tensor:
    """Which entries of one block take the fine-tuned value (step 2 of the module docstring)."""
    sensitivity = (1.0 / d.square()).expand_as(current)  # 1 / d_j², the same down a column
    cost = ((finetuned - current).square() / d.square()).reshape(-1)
    order = torch.argsort(sensitivity.reshape(-1), stable=True)
    cut = int(EXCLUDED * order.numel())
    if cut:
        order = order[:-cut]
    allowed = sensitivity.mean() * (budget / 2) * (rows / ROWS_UNIT)
    taken = torch.cumsum(cost[order], 0) <= allowed
    mask = torch.zeros(cost.numel(), dtype=torch.bool, device=cost.device)
    mask[order] = taken
    return mask.view_as(current)


def safe_delta(
    aligned: torch.Tensor, finetuned: torch.Tensor, hessian: torch.Tensor, budget: float
) -> torch.Tensor:
    """Safe Delta on one ``out × in`` weight, in fp32 (fp64 for fp64 inputs).

    The reference pushes each 4-column sub-block's error onto every later column of its block at
    once; here it goes onto the rest of a chunk of ``CHUNK`` columns at once and onto the columns
    past the chunk in one product when the chunk is done (SparseGPT's lazy batch update): each
    column has received every earlier error when its sub-block is processed, so the result is
    the reference's up to floating-point summation order, in far fewer passes over W.
    """
    dtype = torch.float64 if aligned.dtype == torch.float64 else torch.float32
    w = aligned.to(dtype, copy=True)
    target = finetuned.to(dtype)
    factor = inverse_factor(hessian.to(w.device), dtype)
    rows, columns = w.shape
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block = w[:, start:end].clone()
        wanted = target[:, start:end]
        inner = factor[start:end, start:end]
        d = torch.diag(inner)
        mask = selection_mask(block, wanted, d.reshape(1, -1), budget, rows)
        errors = torch.zeros_like(block)
        width = end - start
        for chunk in range(0, width, CHUNK):
            stop = min(chunk + CHUNK, width)
            for first in range(chunk, stop, SUB_BLOCK):
                last = min(first + SUB_BLOCK, stop)
                current = block[:, first:last]
                chosen = torch.where(mask[:, first:last], wanted[:, first:last], current)
                error = (current - chosen) / d[first:last]
                block[:, first:last] = chosen
                block[:, last:stop] -= error @ inner[first:last, last:stop]
                errors[:, first:last] = error
            block[:, stop:] -= errors[:, chunk:stop] @ inner[chunk:stop, stop:]
        w[:, start:end] = block
        w[:, end:] -= errors @ factor[start:end, end:]
    return w


@merge_method(
    name="safe_delta",
    pretty_name="Safe Delta",
    reference_url="https://arxiv.org/abs/2505.12038",
    contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
)
def safe_delta_merge(
    group: TensorGroup,
    role: PerNonBase[RoleValue] = Role.FINETUNED,
    calibration: str | None = None,
    budget: Budget = SAFE_DELTA_BUDGET,
) -> torch.Tensor:
    inputs = RoleInputs.from_group(group, role)
    if calibration is None:
        raise ConfigError(missing_calibration("safe_delta"))
    name = group.metadata.name or ""
    hessian = calibration_files.read(calibration).hessian(name, inputs.aligned.device)
    if hessian is None or inputs.stored_aligned.ndim != 2:
        return inputs.stored_aligned  # not a calibrated linear layer: aligned, as the reference
    finetuned = (
        inputs.stored_finetuned[0]
        if len(inputs.stored_finetuned) == 1
        else inputs.aligned + inputs.update
    )
    return inputs.cast_back(safe_delta(inputs.aligned, finetuned, hessian, budget))


def decide(inputs: GateInputs, parameters: Mapping[str, Any]) -> Decision:
    """What ``inspect`` reports: each calibrated matrix is edited under the budget."""
    budget = parameters.get("budget", SAFE_DELTA_BUDGET)
    return Decision(True, f"Safe Delta, budget {budget:g}")


def changes(name: str, shape: tuple[int, ...], vocabulary: bool, parameters: Mapping) -> bool:
    """What the kernel edits: 2-D weights with calibration statistics; the rest stay aligned."""
    where = parameters.get("calibration")
    if len(shape) != 2 or where is None:
        return False
    return calibration_files.module_of(name) in calibration_files.read(where).modules


safe_delta_method = RoleCheckedMethod(
    group=safe_delta_merge,
    decide=decide,
    changes=changes,
    rule=RoleRule("safe_delta", {Role.FINETUNED: (1, None)}),
    gates=False,
    weighted=frozenset(),
    needs_calibration=True,
    unmerged="aligned",
    adapter="its entry-wise selection and compensation give a full-rank update, no LoRA",
)
