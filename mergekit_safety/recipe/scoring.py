"""Score every weight of a recipe through mergekit's own planner, loader and executor.

``inspect`` and the ``top_k`` pass must see exactly the tensors and resolved parameters the merge
would: so the recipe is planned by mergekit's ``MergePlanner``
(:func:`mergekit_safety.mergekit_internals.plan_tensors`) and each merge is replaced by the
method's decision for its tensor (:func:`gate_record`). Nothing is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit.config import MergeConfiguration
from mergekit.merge_methods import TensorGroup, get
from mergekit.options import MergeOptions

from mergekit_safety import mergekit_internals
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.roles import Role
from mergekit_safety.core.selection import (
    SELECTORS,
    Resolved,
    Selection,
    parse_selection,
    resolve,
    unranked,
)
from mergekit_safety.mergekit_internals import PlannedTensor
from mergekit_safety.methods.base import RoleCheckedMethod, RoleInputs, check_finite
from mergekit_safety.recipe.walk import parameter_scopes


@dataclass(frozen=True)
class TensorDecision(Mapping[str, Any]):
    """The gate's decision for one output tensor: what ``inspect`` prints, one row per tensor.

    Reads as a mapping too (``record["rho"]``), as the records were before.
    """

    tensor: str
    shape: list[int]
    gated: bool
    rho: float | None
    merge: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON record, keys in ``inspect --json`` order."""
        return {name: getattr(self, name) for name in self}

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


def gate_record(tensor: PlannedTensor, group: TensorGroup) -> TensorDecision:
    """The decision the tensor's method takes for it (a NaN or Inf input: one line, as in the
    merge; its ρ would read as drift)."""
    check_finite(group)
    method = get(tensor.method)
    roles = {entry.id: tensor.input_parameters[entry.id]["role"] for entry in group.non_base}
    method.rule.check(roles, tensor.base)
    inputs = RoleInputs.from_group(group, roles)
    decision = method.decide(inputs, tensor.parameters)
    return TensorDecision(
        tensor=tensor.name,
        shape=list(group.base.tensor.shape),
        gated=inputs.gateable,
        rho=decision.rho,
        merge=decision.merge,
        reason=decision.reason,
    )


def selection_of(config: MergeConfiguration) -> Selection | None:
    """The recipe's ``top_k``/``fraction`` (global parameters only), validated."""
    settings = config.parameters or {}
    misplaced = [
        f"{where}: {key}" for where, scope in parameter_scopes(config) for key in SELECTORS
        if key in scope
    ]  # fmt: skip
    if misplaced:
        raise ConfigError(
            f"top_k and fraction rank the whole model: set them under the recipe's top-level "
            f"`parameters:`, not per model or slice ({misplaced[0]})"
        )
    raw = {key: settings.get(key) for key in SELECTORS}
    if all(value is None for value in raw.values()):
        return None
    for key, value in raw.items():
        if value is not None and not isinstance(value, int | float):
            raise ConfigError(f"{key} must be one number for the whole model; got {value!r}")
    threshold_set = "threshold" in settings or any(
        "threshold" in scope for _where, scope in parameter_scopes(config)
    )
    return parse_selection(raw["top_k"], raw["fraction"], threshold_set=threshold_set)


def decide_at(
    records: list[TensorDecision], resolved: Resolved, method: RoleCheckedMethod
) -> list[TensorDecision]:
    """The records with each gated decision redone at the resolved τ."""
    chosen = {name for name, _rho in resolved.chosen}
    sign = "<=" if method.inclusive else "<"
    out = []
    for record in records:
        if record.gated:
            rho = record.rho
            merge = record.tensor in chosen
            assert rho is None or rho != rho or merge == (rho <= resolved.threshold)
            if merge:
                reason = f"rho {sign} threshold ({resolved.selection.label()})"
            elif rho is None or rho != rho:
                reason = "undefined rho (V = 0 or delta = 0)"
            else:
                reason = f"rho above threshold ({resolved.selection.label()})"
            record = dataclasses.replace(record, merge=merge, reason=reason)
        out.append(record)
    return out


CACHE_SIZE = 8


@dataclass
class ScoreCache:
    """ρ records kept by what ρ depends on, for as long as :func:`kept_scores` is open."""

    entries: OrderedDict[str, list[TensorDecision]] = field(default_factory=OrderedDict)

    def get(self, key: str) -> list[TensorDecision] | None:
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: str, records: list[TensorDecision]) -> None:
        self.entries[key] = records
        while len(self.entries) > CACHE_SIZE:
            self.entries.popitem(last=False)


_KEPT: contextvars.ContextVar[ScoreCache | None] = contextvars.ContextVar(
    "mergekit_safety_scores", default=None
)


@contextlib.contextmanager
def kept_scores(cache: ScoreCache | None = None) -> Iterator[ScoreCache]:
    """Keep ρ passes inside the block (a sweep): merges of the same models score them once.

    ``cache``: keep them in this one (a search's resident merge holds one across its trials).
    """
    token = _KEPT.set(cache or _KEPT.get() or ScoreCache())
    try:
        yield _KEPT.get()  # type: ignore[misc]
    finally:
        _KEPT.reset(token)


def score_config(
    config: MergeConfiguration,
    options: MergeOptions,
    *,
    arch_info: Any = None,
    out_config: Any = None,
    require_unaligned: bool = False,
    gated_only: bool = False,
    cache: bool = True,
    selection: Selection | None = None,
) -> list[TensorDecision]:
    """Plan ``config`` with mergekit's planner and run the gate on each tensor, writing nothing.

    See :func:`score_planned`, which this calls with the plan (made only if the records are
    not kept already).
    """

    def plan() -> list[PlannedTensor]:
        return mergekit_internals.plan_tensors(
            config, options, arch_info=arch_info, out_config=out_config
        )

    return score_planned(
        config,
        options,
        plan,
        require_unaligned=require_unaligned,
        gated_only=gated_only,
        cache=cache,
        selection=selection,
    )


def score_planned(
    config: MergeConfiguration,
    options: MergeOptions,
    planned: Callable[[], list[PlannedTensor]],
    *,
    require_unaligned: bool = False,
    gated_only: bool = False,
    cache: bool = True,
    selection: Selection | None = None,
) -> list[TensorDecision]:
    """Run the gate on each tensor ``planned()`` gives (``config``'s plan), writing nothing.

    With ``cache`` inside :func:`kept_scores`, for ranking by ρ: kept by what ρ depends on
    (models, roles, layer ranges, dtype, device and the weight files' sizes and times), so a
    sweep over λ × top_k scores the models once; outside such a block nothing is kept. The
    cached records' decisions are those at the recipe's own parameters, which the key leaves
    out: a caller ranking by ρ redoes them (:func:`resolve_records`).
    """
    kept = _KEPT.get() if cache else None
    key = _score_key(config, options, gated_only) if kept is not None else None
    if key is not None and (hit := kept.get(key)) is not None:
        return hit
    tensors = planned()
    if gated_only:  # a vocabulary matrix is never gated: do not load it
        tensors = [tensor for tensor in tensors if not tensor.vocabulary]
    if require_unaligned and not any(_has_unaligned(tensor) for tensor in tensors):
        raise unranked(config.merge_method)
    if selection is not None:
        count_rankable(tensors, selection)
    records = mergekit_internals.map_planned(
        tensors, gate_record, device=str(options.device), quiet=options.quiet,
        desc="Scoring weights",
    )  # fmt: skip
    if key is not None:
        kept.put(key, records)
    return records


def resolve_records(
    records: list[TensorDecision], selection: Selection, method: RoleCheckedMethod
) -> tuple[Resolved, list[TensorDecision]]:
    """A selection turned into τ over scored records: the one place ``top_k`` becomes a
    threshold for a planned recipe (the merge's ρ pass and ``inspect`` alike), and the records
    decided at it (which checks τ against every ρ once more)."""
    resolved = resolve(selection, {r.tensor: r.rho for r in records if r.gated})
    return resolved, decide_at(records, resolved, method)


def _has_unaligned(tensor: PlannedTensor) -> bool:
    return any(values.get("role") == Role.UNALIGNED for values in tensor.input_parameters.values())


def _score_key(config: MergeConfiguration, options: MergeOptions, gated_only: bool) -> str:
    """What ρ depends on: the recipe without any parameter but ``role``, and the weight files."""
    data = config.model_dump(mode="json")

    def keep_roles(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ({r: v for r, v in (val or {}).items() if r == "role"} if k == "parameters"
                    else keep_roles(val))
                for k, val in node.items()
            }  # fmt: skip
        if isinstance(node, list):
            return [keep_roles(item) for item in node]
        return node

    stamps = {}
    for reference in config.referenced_models():
        folder = Path(reference.model.path).expanduser()
        if folder.is_dir():
            for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
                stat = file.stat()
                stamps[str(file.resolve())] = (stat.st_size, stat.st_mtime_ns)
    return json.dumps(
        [keep_roles(data), str(options.device), gated_only, stamps], sort_keys=True, default=str
    )


def check_top_k(config: MergeConfiguration, top_k: int) -> None:
    """``top_k`` (a sweep's or a search's largest) fits the recipe's rankable matrices: planned
    by mergekit, counted from the file headers; nothing is loaded, no ρ computed."""
    from mergekit_safety.recipe.walk import without_selection

    tensors = mergekit_internals.plan_tensors(
        without_selection(config, drop_threshold=False), MergeOptions(quiet=True)
    )
    count_rankable([t for t in tensors if not t.vocabulary], Selection(top_k=int(top_k)))


def count_rankable(tensors: list[PlannedTensor], selection: Selection) -> None:
    """Stop a ``top_k`` larger than the matrices that could be ranked, before any ρ pass.

    The count comes from the aligned model's file headers (2-D weights without a vocabulary
    axis): an upper bound, since a matrix with V = 0 or Δ = 0 is not ranked either.
    """
    if selection.top_k is None or not tensors or tensors[0].base is None:
        return
    shapes = mergekit_internals.tensor_shapes(tensors[0].base)
    if not shapes:  # not safetensors: the rho pass finds out
        return
    candidates = [t for t in tensors if not t.vocabulary and len(shapes.get(t.name, (0,))) == 2]
    if selection.top_k > len(candidates):
        raise ConfigError(
            f"top_k={selection.top_k} but only {len(candidates)} matrices can be ranked "
            "(gateable: 2-D weights without a vocabulary axis, counted from the file headers "
            f"before any rho is computed); use top_k <= {len(candidates)} or fraction"
        )
