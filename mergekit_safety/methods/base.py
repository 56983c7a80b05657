"""What the safety methods share: role checking, the inputs sorted by role, and batch dispatch.

A method here knows nothing of who calls it. mergekit 0.1.5 gives a method no planning hook that
sees per-model parameters, so the checks that must run before any tensor loads (roles, parameter
domains, ``top_k``) are made by :mod:`mergekit_safety.recipe.planning`, which mergekit's planner
calls through :mod:`mergekit_safety.mergekit_internals`. For the Python API, which plans nothing,
the same checks run here when the parameters are bound. Every input tensor is checked for NaN/Inf
before its kernel runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch
from mergekit.merge_methods.base import (
    BatchOptions,
    MergeMethod,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
    TensorEntry,
    TensorGroup,
)

from mergekit_safety import mergekit_internals
from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError, find_config_error
from mergekit_safety.core.parameters import check_domains, check_parameters
from mergekit_safety.core.roles import Role, RoleRule, parse_role, split_by_role
from mergekit_safety.core.runs import Decision, MergeRun
from mergekit_safety.core.selection import (
    SELECTORS,
    parse_selection,
    resolve,
    unranked,
    with_threshold,
)
from mergekit_safety.core.subspace import compute_dtype, drifts, rounding_tolerance, score
from mergekit_safety.mergekit_internals import PluginMethod, execute_method
from mergekit_safety.methods.alignment_check import alignment_vanished

Changes = Callable[[str, tuple[int, ...], bool, Mapping[str, Any]], bool]
"""``changes(name, shape, vocabulary, parameters)``: does the method change this tensor?"""
RecipeCheck = Callable[[Any, Mapping[str, tuple[int, ...]]], None]
"""``check_recipe(config, shapes)``: the method's own checks of a recipe while mergekit plans it,
given base_model's tensor shapes from its file headers; raises ConfigError."""
ValueCheck = Callable[[str, Mapping[str, Any]], None]
"""``check_values(method, shared)``: the method's own rule on its resolved shared values (warn,
or raise ConfigError), after the rules every method shares (:func:`check_parameters`)."""
AdapterForm = Callable[[Any, Mapping[Hashable, float]], tuple[torch.Tensor, torch.Tensor]]
"""``form(inputs, weights) -> (B′, A′)``: a merged module's new LoRA factors, from
:class:`mergekit_safety.adapter.factors.AdapterInputs` and each input's resolved ``weight``."""


class RoleCheckedMethod(PluginMethod):
    """A group kernel whose inputs carry roles, with an optional batch kernel for plain cases.

    ``batch`` (if given) runs when no input has role ``unaligned``: that is the ungated case,
    which mergekit can pack into batches. Its spec must be a subset of ``group``'s. ``decide``
    is the method's gate, shared by its kernel and by ``mergekit-safety inspect``; ``inclusive``
    says whether it merges at ``ρ = τ``; ``gates`` whether it gates at all (LoX and harm removal
    change every tensor); ``weighted`` which roles' ``weight`` it reads; ``needs_calibration``
    whether its ``calibration`` parameter (if it has one) must be given; ``unmerged`` which model
    a tensor it does not merge comes from (``"finetuned"``, or ``"aligned"`` for Safe Delta);
    ``check_recipe`` and ``check_values`` its own checks beyond the shared ones; ``adapter`` its
    form in LoRA-factor space (``mergekit-safety adapter``), or why it has none;
    ``default_weights`` a role's ``weight`` where a model sets none.

    So a method is one module: its kernel, ``decide``, its defaults (the kernel's arguments),
    its checks, and its adapter form, registered once in :data:`mergekit_safety.methods.METHODS`;
    every list of methods (``inspect``, ``sweep``, ``adapter``, the CLI's help) is read from there.

    Every such method also takes ``top_k`` / ``fraction`` (:mod:`mergekit_safety.core.selection`):
    resolved to a threshold while mergekit plans (:mod:`mergekit_safety.recipe.planning`), or over
    the tensors handed over in one Python API call; the kernels themselves only ever see τ.
    """

    def __init__(
        self,
        group: MergeMethod,
        rule: RoleRule,
        decide: Callable[[GateInputs, Mapping[str, Any]], Decision],
        batch: MergeMethod | None = None,
        *,
        inclusive: bool = False,
        gates: bool = True,
        weighted: frozenset[Role] = frozenset({Role.FINETUNED}),
        needs_calibration: bool = False,
        unmerged: str = "finetuned",
        read_only_with: Mapping[str, tuple[str, Any]] | None = None,
        changes: Changes | None = None,
        check_recipe: RecipeCheck | None = None,
        check_values: ValueCheck | None = None,
        adapter: AdapterForm | str = "",
        default_weights: Mapping[Role, float] | None = None,
    ):
        self.spec: MergeMethodSpec = dataclasses.replace(
            group.spec, parameters=(*group.spec.parameters, *SELECTION_PARAMETERS)
        )
        self.rule = rule
        self.decide = decide
        self.group = group
        self.batch = batch
        self.inclusive = inclusive
        self.gates = gates
        """Gates matrices by ρ, given a model of role ``unaligned`` (reads ``threshold``)."""
        self.weighted = weighted
        """The roles whose ``weight`` the method reads."""
        self.needs_calibration = needs_calibration
        self.unmerged = unmerged
        self.read_only_with = dict(read_only_with or {})
        """Parameter -> (another parameter, the value that makes the method read it): set
        otherwise it would be ignored, so a recipe setting it is refused (``recipe_keys``)."""
        self.changes = changes
        """Whether an ungated merge changes a tensor, from its name, shape, vocabulary axis and
        resolved parameters (what the done line counts); None: every tensor."""
        self.supports_batching = batch is not None
        self.check_recipe = check_recipe
        self.own_value_check = check_values
        self.adapter = adapter
        """The merged module's factors (a function), or the reason there is no adapter form."""
        self.default_weights = dict(default_weights or {})

    @property
    def adapter_form(self) -> AdapterForm | None:
        """Its form in LoRA-factor space, or None (:attr:`adapter` then says why)."""
        return None if isinstance(self.adapter, str) else self.adapter

    def check_values(
        self, shared: Mapping[str, Any], per_model: Mapping[Hashable, Mapping[str, Any]]
    ) -> None:
        """The rules between parameters every method shares, then the method's own."""
        check_parameters(self.spec.name, shared, per_model)
        if self.own_value_check is not None:
            self.own_value_check(self.spec.name, shared)

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Hashable | None = None,
        *,
        group_name: str | None = None,
    ) -> None:
        if base_id is None:  # our line, not mergekit's "requires a base input"
            self.rule.check({}, None)
        super().validate_inputs(input_ids, base_id, group_name=group_name)

    def bind(
        self, groups: Sequence[TensorGroup], parameters: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The Python API's binding, with our errors and per-role defaults.

        Per-model mappings need not name every input: ``role`` defaults to finetuned, and
        ``weight`` to the method's default for the unaligned and safe models (mergekit would
        raise "Missing weight for input(s)" for a value the method never reads).
        """
        parameters = dict(parameters)
        roles = parameters.get("role")
        ids = [entry.id for entry in groups[0].non_base] if groups else []
        if isinstance(roles, Mapping):  # an input left out has the default role
            roles = parameters["role"] = {key: Role.FINETUNED for key in ids} | dict(roles)
            weight = parameters.get("weight")
            if isinstance(weight, Mapping):
                default = next(p.default for p in self.spec.parameters if p.name == "weight")
                unused = [key for key in ids if parse_role(roles[key]) is not Role.FINETUNED]
                parameters["weight"] = {key: default for key in unused} | dict(weight)
        check_domains(self.spec.parameters, parameters)  # mergekit's error names no parameter
        try:
            bound = super().bind(groups, parameters)
        except Exception as error:
            found = find_config_error(error)
            if found is None:
                raise
            raise found from None
        for values in bound:
            self.check_values(values, _per_model(values))
        return bound

    def __call__(
        self, groups: Sequence[TensorGroup], /, *, parameters: Mapping[str, Any] | None = None, **kw
    ) -> tuple[torch.Tensor, ...]:
        """The Python API: ``top_k``/``fraction`` rank the matrices among ``groups``."""
        given = parameters or {}
        selection = parse_selection(
            given.get("top_k"), given.get("fraction"), threshold_set="threshold" in given
        )
        with runs.opened(MergeRun(api_selection=selection is not None)):
            return super().__call__(groups, parameters=parameters, **kw)

    def execute(
        self,
        groups: Sequence[TensorGroup],
        parameters: list[dict[str, Any]],
        options: BatchOptions,
        *,
        input_dtypes: Sequence[torch.dtype | None],
        out_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        gated = any(Role.UNALIGNED in values["role"].values() for values in parameters)
        batched = self.batch is not None and not gated  # checks its output instead, below
        for group, values in zip(groups, parameters, strict=True):
            self.rule.check(values["role"], group.base.id if group.base else None)
            if not batched:
                check_finite(group)
        if any(values.get(key) is not None for values in parameters for key in SELECTORS):
            parameters = self._select_among(groups, parameters, input_dtypes)
        own = {p.name for p in self.group.spec.parameters}
        parameters = [{k: v for k, v in values.items() if k in own} for values in parameters]
        if gated:
            self._check_alignment(groups, parameters)
        if not batched:
            return execute_method(
                self.group,
                groups,
                parameters,
                options,
                input_dtypes=input_dtypes,
                out_dtype=out_dtype,
            )
        names = {p.name for p in self.batch.spec.parameters}
        bound = [{k: v for k, v in values.items() if k in names} for values in parameters]
        merged = execute_method(
            self.batch, groups, bound, options, input_dtypes=input_dtypes, out_dtype=out_dtype
        )
        # Ungated, no gate can be fooled: check the one output, not every input (a NaN or ±Inf
        # input reaches it even at weight 0), and name the input only when it fails.
        for group, tensor in zip(groups, merged, strict=True):
            if not finite(tensor):
                check_finite(group)
                raise ConfigError(
                    f"{group.metadata.name or 'a tensor'}: the merge overflowed to Inf "
                    "(weights too large for the output dtype?); nothing was merged"
                )
        return merged

    def _check_alignment(
        self, groups: Sequence[TensorGroup], parameters: list[dict[str, Any]]
    ) -> None:
        """Refuse a merge whose unaligned model equals the aligned one in every gated matrix."""
        results: dict[tuple[Any, Any], dict[str, bool | None]] = {}
        for index, (group, values) in enumerate(zip(groups, parameters, strict=True)):
            tensors = {entry.id: entry.tensor for entry in group.non_base}
            unaligned = split_by_role(list(tensors), values["role"])[Role.UNALIGNED][0]
            base = group.base.tensor
            gateable = base.ndim == 2 and group.metadata.vocabulary_axis is None
            same = torch.equal(base, tensors[unaligned]) if gateable else None
            key = (group.base.id, unaligned)
            results.setdefault(key, {})[group.metadata.name or f"#{index}"] = same
        for (aligned, unaligned), tensors in results.items():
            if alignment_vanished((aligned, unaligned), tensors):
                name = getattr(unaligned, "model", unaligned)
                raise ConfigError(
                    f"{self.spec.name}: the unaligned model {name} equals base_model "
                    f"{getattr(aligned, 'model', aligned)} in every gated "
                    "matrix (V = 0): the gate cannot work; give the model alignment started from"
                )

    def _select_among(
        self,
        groups: Sequence[TensorGroup],
        parameters: list[dict[str, Any]],
        input_dtypes: Sequence[torch.dtype | None],
    ) -> list[dict[str, Any]]:
        """top_k/fraction as τ: the one the merge's ρ pass resolved while planning
        (:func:`mergekit_safety.recipe.planning.on_planned`), or, in one API call, τ from every
        group's ρ (one extra ρ per matrix: the kernel scores it again at τ). A single tensor outside
        either cannot be ranked.
        """
        run = runs.current()
        if run is not None and run.threshold is not None:
            return [with_threshold(values, run.threshold) for values in parameters]
        if run is None or not run.api_selection:
            raise ConfigError(
                "top_k/fraction reached a single tensor: the planner did not rank the model; "
                "write the threshold out with `mergekit-safety inspect RECIPE --top-k K "
                "--write-recipe OUT.yml`"
            )
        first = parameters[0]
        selection = parse_selection(first.get("top_k"), first.get("fraction"))
        assert selection is not None
        if not any(Role.UNALIGNED in values["role"].values() for values in parameters):
            raise unranked(self.spec.name)
        scores: dict[str, float | None] = {}
        for index, (group, values, dtype) in enumerate(
            zip(groups, parameters, input_dtypes, strict=True)
        ):
            inputs = RoleInputs.from_group(
                mergekit_internals.align_dtype(group, dtype), values["role"]
            )
            if inputs.gateable and inputs.has_unaligned:
                name = group.metadata.name or f"#{index}"
                scores[name] = gate(inputs, 0.0).rho
        threshold = resolve(selection, scores).threshold
        return [with_threshold(values, threshold) for values in parameters]


SELECTION_PARAMETERS = (
    ParameterSpec("top_k", int | None, ParameterScope.SHARED, default=None,
                  description="merge the K gateable matrices with the lowest rho"),
    ParameterSpec("fraction", float | None, ParameterScope.SHARED, default=None,
                  description="merge this fraction of the gateable matrices, lowest rho first"),
)  # fmt: skip
"""Added to every gated method's spec; the kernels never see them (``execute`` drops them)."""


def missing_calibration(method: str) -> str:
    """The line for a method that needs calibration statistics and was given none."""
    return (
        f"{method} needs `calibration: DIR` in the top-level parameters: the statistics "
        "`mergekit-safety calibrate ALIGNED --prompts FILE --out DIR` writes"
    )


def _per_model(values: Mapping[str, Any]) -> dict[Hashable, dict[str, Any]]:
    """Bound per-input parameters (``role``, ``weight``) regrouped by model."""
    out: dict[Hashable, dict[str, Any]] = {
        key: {"role": role} for key, role in values["role"].items()
    }
    for key, weight in (values.get("weight") or {}).items():
        out.setdefault(key, {})["weight"] = weight
    return out


def check_finite(group: TensorGroup) -> None:
    """Stop on a NaN or Inf input: the gate would score it as drift and merge garbage silently.

    One min/max pass per tensor in its own dtype: a NaN propagates to both, ±Inf is one of
    them, and nothing is allocated (an fp32 sum of a bf16 tensor converts a full copy first:
    in a merge, with fresh pages for every copy, 5× slower than this).
    """
    for entry in group.entries:
        if not finite(entry.tensor):
            model = getattr(entry.id, "model", entry.id)
            raise ConfigError(
                f"{group.metadata.name or 'a tensor'} of {model} holds NaN or Inf values; "
                "nothing was merged (check that checkpoint)"
            )


def finite(tensor: torch.Tensor) -> bool:
    """No NaN or ±Inf: one min/max pass, nothing allocated (see :func:`check_finite`)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(float(low)) and math.isfinite(float(high))


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
    stored_harmful: torch.Tensor | None = None
    name: str | None = None

    @classmethod
    def from_group(cls, group: TensorGroup, roles: Mapping[Hashable, Role]) -> RoleInputs:
        entries: dict[Hashable, TensorEntry] = {e.id: e for e in group.non_base}
        by_role = split_by_role(list(entries), roles)
        unaligned, safe = by_role[Role.UNALIGNED], by_role[Role.SAFE]
        harmful = by_role[Role.HARMFUL]
        base = group.base.tensor
        return cls(
            stored_aligned=base,
            stored_finetuned=tuple(entries[k].tensor for k in by_role[Role.FINETUNED]),
            finetuned_ids=tuple(by_role[Role.FINETUNED]),
            stored_unaligned=entries[unaligned[0]].tensor if unaligned else None,
            stored_safe=entries[safe[0]].tensor if safe else None,
            safe_id=safe[0] if safe else None,
            gateable=base.ndim == 2 and group.metadata.vocabulary_axis is None,
            stored_harmful=entries[harmful[0]].tensor if harmful else None,
            name=group.metadata.name,
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
        converted = self.stored_unaligned.to(self.aligned.dtype, copy=True)
        return torch.sub(self.aligned, converted, out=converted)  # one pass, not sub_ + neg_

    @cached_property
    def safe_update(self) -> torch.Tensor:
        """θ_safe − θ_aligned."""
        assert self.stored_safe is not None
        return self.minus_aligned(self.stored_safe)

    @cached_property
    def harm_update(self) -> torch.Tensor:
        """τ_H = θ_harmful − θ_aligned."""
        assert self.stored_harmful is not None
        return self.minus_aligned(self.stored_harmful)

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
    return note(inputs, gate_decision(inputs.alignment_score(), threshold, inclusive=inclusive))


def gate_decision(rho: float, threshold: float, *, inclusive: bool = False) -> Decision:
    """The gate's decision and reason for a matrix of score ``rho`` (what kernels and
    ``inspect`` both report)."""
    if drifts(rho, threshold, inclusive=inclusive):
        return Decision(True, f"rho {'<=' if inclusive else '<'} threshold", rho)
    why = "undefined rho (V = 0 or delta = 0)" if rho != rho else "rho above threshold"
    return Decision(False, why, rho)


def note(inputs: GateInputs, decision: Decision) -> Decision:
    """Report a gated decision, by tensor name, to the merge this kernel runs in."""
    name = getattr(inputs, "name", None)
    run = runs.current()
    if name is not None and run is not None:
        run.record(name, decision)
    return decision
