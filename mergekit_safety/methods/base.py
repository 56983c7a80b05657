"""What the safety methods share: role checking, the inputs sorted by role, and batch dispatch.

mergekit 0.1.5 gives a method no planning hook that sees per-model parameters, so
:class:`RoleCheckedMethod` checks roles in two places: while mergekit plans each tensor (it reads
the resolved ``role`` values off the ``ExecuteMergeMethodTask`` being validated, before anything
loads) and, for the Python API and as a guarantee, before the first kernel runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch
from mergekit.merge_methods.base import (
    BatchOptions,
    MergeMethod,
    MergeMethodSpec,
    TensorEntry,
    TensorGroup,
)

from mergekit_safety.preflight import check_same_architecture
from mergekit_safety.roles import Role, RoleRule, split_by_role
from mergekit_safety.subspace import compute_dtype, drifts, rounding_tolerance, score


@dataclass(frozen=True)
class Decision:
    """What a method does with one tensor, and why: the record ``inspect`` prints."""

    merge: bool
    reason: str
    rho: float | None = None


class RoleCheckedMethod(MergeMethod):
    """A group kernel whose inputs carry roles, with an optional batch kernel for plain cases.

    ``batch`` (if given) runs when no input has role ``unaligned``: that is the ungated case,
    which mergekit can pack into batches. Its spec must be a subset of ``group``'s. ``decide``
    is the method's gate, shared by its kernel and by ``mergekit-safety inspect``.
    """

    def __init__(
        self,
        group: MergeMethod,
        rule: RoleRule,
        decide: Callable[[GateInputs, Mapping[str, Any]], Decision],
        batch: MergeMethod | None = None,
    ):
        self.spec: MergeMethodSpec = group.spec
        self.rule = rule
        self.decide = decide
        self.group = group
        self.batch = batch
        self.supports_batching = batch is not None

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Hashable | None = None,
        *,
        group_name: str | None = None,
    ) -> None:
        super().validate_inputs(input_ids, base_id, group_name=group_name)
        task = _task_being_planned()
        if task is not None:
            roles = {
                model: task.input_parameters[model]["role"]
                for model in task.model_order
                if model != task.base_model and "role" in task.input_parameters.get(model, {})
            }
            self.rule.check(roles, task.base_model)
            others = tuple(m for m in task.model_order if m != task.base_model)
            check_same_architecture((task.base_model, *others) if task.base_model else others)

    def _execute(
        self,
        groups: Sequence[TensorGroup],
        parameters: list[dict[str, Any]],
        options: BatchOptions,
        *,
        input_dtypes: Sequence[torch.dtype | None],
        out_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        for group, values in zip(groups, parameters, strict=True):
            self.rule.check(values["role"], group.base.id if group.base else None)
        gated = any(Role.UNALIGNED in values["role"].values() for values in parameters)
        if self.batch is None or gated:
            method, bound = self.group, parameters
        else:
            names = {p.name for p in self.batch.spec.parameters}
            method = self.batch
            bound = [{k: v for k, v in values.items() if k in names} for values in parameters]
        return method._execute(
            groups, bound, options, input_dtypes=input_dtypes, out_dtype=out_dtype
        )


def _task_being_planned() -> Any:
    """The mergekit ``ExecuteMergeMethodTask`` whose validator called ``validate_inputs``."""
    adapter = sys.modules.get("mergekit.merge_methods.task_adapter")
    if adapter is None:  # not imported: no task is planning (and the API skips its import cost)
        return None
    caller = sys._getframe(2).f_locals.get("self")  # validate_configured_inputs(self)
    return caller if isinstance(caller, adapter.ExecuteMergeMethodTask) else None


@dataclass(frozen=True)
class RoleInputs:
    """One tensor group's inputs sorted by role, as mergekit handed them over.

    The fp32 (fp64) values the math needs are made on first use and kept: a tensor that keeps
    its fine-tuned weights costs no conversion, and the gate's Δ is reused by the merge.
    """

    stored_aligned: torch.Tensor
    stored_finetuned: tuple[torch.Tensor, ...]
    finetuned_ids: tuple[Hashable, ...]
    stored_unaligned: torch.Tensor | None
    stored_safe: torch.Tensor | None
    safe_id: Hashable | None
    gateable: bool
    """A 2-D weight without a vocabulary axis: the matrices Safe LoRA and SafeMERGE consider."""

    @classmethod
    def from_group(cls, group: TensorGroup, roles: Mapping[Hashable, Role]) -> RoleInputs:
        entries: dict[Hashable, TensorEntry] = {e.id: e for e in group.non_base}
        by_role = split_by_role(list(entries), roles)
        unaligned, safe = by_role[Role.UNALIGNED], by_role[Role.SAFE]
        base = group.base.tensor
        return cls(
            stored_aligned=base,
            stored_finetuned=tuple(entries[k].tensor for k in by_role[Role.FINETUNED]),
            finetuned_ids=tuple(by_role[Role.FINETUNED]),
            stored_unaligned=entries[unaligned[0]].tensor if unaligned else None,
            stored_safe=entries[safe[0]].tensor if safe else None,
            safe_id=safe[0] if safe else None,
            gateable=base.ndim == 2 and group.metadata.vocabulary_axis is None,
        )

    @property
    def has_unaligned(self) -> bool:
        return self.stored_unaligned is not None

    @cached_property
    def aligned(self) -> torch.Tensor:
        """θ_aligned in the compute dtype (the stored tensor itself when it already is)."""
        return self.stored_aligned.to(compute_dtype(self.stored_aligned))

    def minus_aligned(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored − θ_aligned`` in the compute dtype, in a new tensor.

        Cast, then subtract in place: 3× faster on a CPU than one mixed-dtype ``torch.sub``.
        """
        return stored.to(self.aligned.dtype, copy=True).sub_(self.aligned)

    @cached_property
    def updates(self) -> tuple[torch.Tensor, ...]:
        """Δᵢ = θ_ftᵢ − θ_aligned, one per fine-tune."""
        return tuple(self.minus_aligned(tensor) for tensor in self.stored_finetuned)

    @cached_property
    def update(self) -> torch.Tensor:
        """Δ: the fine-tuning update; several fine-tunes act as one, their updates summed."""
        first, *rest = self.updates
        return sum(rest, first.clone()) if rest else first

    @cached_property
    def alignment(self) -> torch.Tensor:
        """V = W_aligned − W_unaligned."""
        assert self.stored_unaligned is not None
        return self.minus_aligned(self.stored_unaligned).neg_()

    @cached_property
    def safe_update(self) -> torch.Tensor:
        """θ_safe − θ_aligned."""
        assert self.stored_safe is not None
        return self.minus_aligned(self.stored_safe)

    def rounding(self) -> float:
        """The rounding error the stored Δ already carries: the low-rank path's tolerance.

        A merged LoRA stored as bf16 is ``bf16(θ_a + B A)``: full rank at fp32 precision only
        through that rounding, which the checkpoint cannot represent anyway.
        """
        return rounding_tolerance(self.aligned, self.stored_aligned.dtype, len(self.updates))

    def alignment_score(self) -> float:
        """ρ of the summed update against the alignment subspace (the gate's score)."""
        return score(self.update, self.alignment, tolerance=self.rounding())

    def kept(self) -> torch.Tensor:
        """The weights a tensor keeps when it is not merged: θ_ft (θ_aligned + ΣΔ for several)."""
        if len(self.stored_finetuned) == 1:
            return self.stored_finetuned[0]
        return (self.aligned + self.update).to(self.stored_aligned.dtype)

    def cast_back(self, merged: torch.Tensor) -> torch.Tensor:
        """A merged result, back in the dtype the inputs arrived in."""
        return merged.to(self.stored_aligned.dtype)


class GateInputs(Protocol):
    """What a method's ``decide`` reads: :class:`RoleInputs` for full tensors, and
    :class:`mergekit_safety.adapter.factors.AdapterInputs` for LoRA factors (one gate for both)."""

    gateable: bool

    @property
    def has_unaligned(self) -> bool: ...

    def alignment_score(self) -> float: ...


def gate(inputs: GateInputs, threshold: float, *, inclusive: bool = False) -> Decision:
    """The subspace gate: merge a 2-D weight only if its update left the alignment subspace."""
    if not inputs.gateable:
        return Decision(False, "not gated: 1-D, or has a vocabulary axis")
    rho = inputs.alignment_score()
    if drifts(rho, threshold, inclusive=inclusive):
        return Decision(True, f"rho {'<=' if inclusive else '<'} threshold", rho)
    why = "undefined rho (V = 0 or delta = 0)" if rho != rho else "rho above threshold"
    return Decision(False, why, rho)
