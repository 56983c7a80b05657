"""One module's inputs in adapter space, read by the methods' own ``decide`` (one gate for both).

:class:`AdapterInputs` offers what :class:`mergekit_safety.methods.base.GateInputs` asks —
``gateable``, ``has_unaligned``, ``alignment_score()`` — from LoRA factors: several fine-tunes act
as one, ``Δ = Σ sᵢ Bᵢ Aᵢ = [s₁B₁, …] [A₁; …]``, so ρ is measured on the same summed update as
the full merge, from ``Vᵀ B`` and r × r triangles (:func:`lowrank_factors_score_and_project`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mergekit_safety.adapter.source import ModuleFactors
from mergekit_safety.core.subspace import lowrank_factors_score_and_project


@dataclass
class AdapterInputs:
    """The LoRA factors of one module by input, and V read on demand (only if the gate asks)."""

    finetuned: Sequence[tuple[Hashable, ModuleFactors]]
    safe: tuple[Hashable, ModuleFactors] | None
    gateable: bool
    alignment: Callable[[], torch.Tensor] | None
    """Reads V = θ_aligned − θ_unaligned; None without an ``unaligned`` model."""
    device: str = "cpu"
    _projected: torch.Tensor | None = field(default=None, repr=False)

    @property
    def has_unaligned(self) -> bool:
        return self.alignment is not None

    def left(self, coefficients: Mapping[Hashable, float] | None = None) -> torch.Tensor:
        """``[c₁ s₁ B₁, …]`` over the fine-tunes (``c = 1`` without ``coefficients``)."""
        return torch.cat(
            [
                f.scaled_left(1.0 if coefficients is None else coefficients[key]).to(self.device)
                for key, f in self.finetuned
            ],
            dim=1,
        )

    def right(self) -> torch.Tensor:
        """``[A₁; …]`` over the fine-tunes."""
        return torch.cat([f.right().to(self.device) for _key, f in self.finetuned], dim=0)

    def alignment_score(self) -> float:
        """ρ of ``Σ sᵢ Bᵢ Aᵢ``; keeps ``C [s₁B₁, …]`` for Safe LoRA."""
        assert self.alignment is not None
        rho, self._projected = lowrank_factors_score_and_project(
            self.left(), self.right(), self.alignment().to(self.device)
        )
        return rho

    def projected_left(self) -> torch.Tensor:
        """``C [s₁B₁, …]``: Safe LoRA's new left factor (the gate computed it)."""
        if self._projected is None:
            self.alignment_score()
        assert self._projected is not None
        return self._projected
