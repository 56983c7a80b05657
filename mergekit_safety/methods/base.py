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
from typing import Any

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
from mergekit_safety.subspace import compute_dtype, drifts, score


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
        decide: Callable[[RoleInputs, Mapping[str, Any]], Decision],
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
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

    caller = sys._getframe(2).f_locals.get("self")  # validate_configured_inputs(self)
    return caller if isinstance(caller, ExecuteMergeMethodTask) else None


@dataclass(frozen=True)
class RoleInputs:
    """One tensor group's inputs sorted by role, converted to the compute dtype."""

    aligned: torch.Tensor
    finetuned: tuple[torch.Tensor, ...]
    finetuned_ids: tuple[Hashable, ...]
    unaligned: torch.Tensor | None
    safe: torch.Tensor | None
    safe_id: Hashable | None
    gateable: bool
    """A 2-D weight without a vocabulary axis: the matrices Safe LoRA and SafeMERGE consider."""

    @classmethod
    def from_group(cls, group: TensorGroup, roles: Mapping[Hashable, Role]) -> RoleInputs:
        base = group.base.tensor
        dtype = compute_dtype(base)
        entries: dict[Hashable, TensorEntry] = {e.id: e for e in group.non_base}
        by_role = split_by_role(list(entries), roles)

        def load(key: Hashable) -> torch.Tensor:
            return entries[key].tensor.to(dtype)

        unaligned, safe = by_role[Role.UNALIGNED], by_role[Role.SAFE]
        return cls(
            aligned=base.to(dtype),
            finetuned=tuple(load(k) for k in by_role[Role.FINETUNED]),
            finetuned_ids=tuple(by_role[Role.FINETUNED]),
            unaligned=load(unaligned[0]) if unaligned else None,
            safe=load(safe[0]) if safe else None,
            safe_id=safe[0] if safe else None,
            gateable=base.ndim == 2 and group.metadata.vocabulary_axis is None,
        )

    def update(self) -> torch.Tensor:
        """Δ: the fine-tuning update; several fine-tunes act as one, their updates summed."""
        total = torch.zeros_like(self.aligned)
        for tensor in self.finetuned:
            total += tensor - self.aligned
        return total

    def alignment(self) -> torch.Tensor:
        """V = W_aligned − W_unaligned."""
        assert self.unaligned is not None
        return self.aligned - self.unaligned

    def finetuned_weights(self) -> torch.Tensor:
        """The weights a matrix keeps when it is not merged: θ_ft (θ_aligned + ΣΔ for several)."""
        if len(self.finetuned) == 1:
            return self.finetuned[0]
        return self.aligned + self.update()


def gate(inputs: RoleInputs, threshold: float, *, inclusive: bool = False) -> Decision:
    """The subspace gate: merge a 2-D weight only if its update left the alignment subspace."""
    if not inputs.gateable:
        return Decision(False, "not gated: 1-D, or has a vocabulary axis")
    rho = score(inputs.update(), inputs.alignment())
    if drifts(rho, threshold, inclusive=inclusive):
        return Decision(True, f"rho {'<=' if inclusive else '<'} threshold", rho)
    why = "undefined rho (V = 0 or delta = 0)" if rho != rho else "rho above threshold"
    return Decision(False, why, rho)
