"""A mergekit recipe in any of its three layouts: its inputs, their roles, its parameters.

One walk (:func:`walk`) visits every ``parameters:`` mapping of a recipe — the recipe's own, each
entry of ``models``, each slice and its ``sources``, each module with its models or slices — on
mergekit's ``MergeConfiguration`` and on the recipe's raw YAML mapping alike. A caller that writes
the recipe back as it was written (a sweep point, ``inspect --write-recipe``) keeps the mapping,
so its key order and spelling survive; the others validate once and pass the configuration.

Reading and setting a parameter (:func:`get_parameter`, :func:`set_parameter`) and turning a rank
selection into ``threshold: τ`` (:func:`resolve_selection`) go through this walk and the one
parameter rewrite of :mod:`mergekit_safety.core.selection`.
"""

from __future__ import annotations

import copy as copying
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.selection import GATE_KEYS, drop_selection, set_gate

Recipe = MergeConfiguration | Mapping[str, Any]
"""Mergekit's validated configuration, or the recipe's YAML mapping as written."""
Kind = Literal["recipe", "model", "module", "slice", "source"]
INPUT_KINDS = ("model", "source")
"""The scopes that are inputs: an entry of ``models`` and a slice's source."""
DEFAULT_ROLE = "finetuned"


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _items(node: Any) -> list:
    return list(node or ())


@dataclass(frozen=True)
class Scope:
    """One place of a recipe that holds ``parameters:``, and the scopes around it."""

    kind: Kind
    label: str
    """How messages name it: the model, ``slice 0``, ``module text``; "" for the recipe."""
    node: Any
    """The recipe or entry holding ``parameters`` (a mapping or mergekit's definition)."""
    enclosing: tuple[Scope, ...] = ()
    """The scopes around this one, innermost first; the recipe's own last."""

    @property
    def parameters(self) -> Mapping[str, Any]:
        return _get(self.node, "parameters") or {}

    @property
    def is_input(self) -> bool:
        return self.kind in INPUT_KINDS

    @property
    def reference(self) -> ModelReference:
        """The input's model, validated (an input scope only)."""
        assert self.is_input, self.kind
        return ModelReference.model_validate(_get(self.node, "model"))

    @property
    def base_model(self) -> ModelReference | None:
        """The ``base_model`` in effect here: the enclosing slice's, else the recipe's."""
        for scope in (self, *self.enclosing):
            if scope.kind in ("slice", "recipe") and _get(scope.node, "base_model") is not None:
                return ModelReference.model_validate(_get(scope.node, "base_model"))
        return None

    def lookup(self, name: str) -> Any:
        """``name`` as set here or in the nearest enclosing scope; None if nowhere."""
        for scope in (self, *self.enclosing):
            if name in scope.parameters:
                return scope.parameters[name]
        return None

    def set(self, name: str, value: Any) -> None:
        """Set ``name`` in this scope's own ``parameters`` (in place)."""
        _set_parameters(self.node, {**self.parameters, name: value})


def _set_parameters(node: Any, parameters: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        node["parameters"] = parameters  # type: ignore[index]
    else:
        node.parameters = parameters


def walk(recipe: Recipe) -> list[Scope]:
    """Every scope of ``recipe``: the recipe's own first, then models, slices, modules in order."""
    top = Scope("recipe", "", recipe)
    scopes = [top]

    def slices(entries: Any, around: tuple[Scope, ...]) -> None:
        for index, output in enumerate(_items(entries)):
            piece = Scope("slice", f"slice {index}", output, around)
            scopes.append(piece)
            for source in _items(_get(output, "sources")):
                scopes.append(_input("source", source, (piece, *around)))

    scopes += [_input("model", entry, (top,)) for entry in _items(_get(recipe, "models"))]
    slices(_get(recipe, "slices"), (top,))
    for name, module in (_get(recipe, "modules") or {}).items():
        holder = Scope("module", f"module {name}", module, (top,))
        scopes.append(holder)
        around = (holder, top)
        scopes += [_input("model", entry, around) for entry in _items(_get(module, "models"))]
        slices(_get(module, "slices"), around)
    return scopes


def _input(kind: Kind, node: Any, around: tuple[Scope, ...]) -> Scope:
    label = str(ModelReference.model_validate(_get(node, "model")).model)
    return Scope(kind, label, node, around)


def inputs(recipe: Recipe) -> list[Scope]:
    """Every input of ``recipe`` (an entry of ``models`` or a slice's source), in order."""
    return [scope for scope in walk(recipe) if scope.is_input]


def parameter_scopes(recipe: Recipe) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ``parameters:`` mapping below the top level: per model, slice, source, module."""
    return [(scope.label, scope.parameters) for scope in walk(recipe)[1:]]


def role_of(scope: Scope) -> str:
    """The input's role as written (own, else enclosing, else ``finetuned``), lower case."""
    role = scope.lookup("role")
    role = DEFAULT_ROLE if role is None else role
    if not isinstance(role, str):
        raise ConfigError(f"role of {scope.reference} must be a plain string; got {role!r}")
    return role.strip().lower()


def roles(recipe: Recipe) -> list[tuple[Scope, str]]:
    """(input, role) for each input that is not the ``base_model`` in effect where it sits."""
    out = []
    for scope in inputs(recipe):
        base = scope.base_model
        if base is not None and scope.reference == base:
            continue
        out.append((scope, role_of(scope)))
    return out


Where = Literal["global", "finetuned"]


def get_parameter(recipe: Recipe, name: str, where: Where = "global") -> Any:
    """The recipe's global ``name``; or, per fine-tuned input, the list of their values."""
    if where == "global":
        return walk(recipe)[0].parameters.get(name)
    return [scope.lookup(name) for scope, role in roles(recipe) if role == DEFAULT_ROLE]


def set_parameter(
    recipe: Recipe, name: str, value: Any, where: Where = "global", *, copy: bool = True
) -> Any:
    """``recipe`` (a copy unless ``copy=False``) with ``name`` set globally or per fine-tune.

    A global ``threshold``/``top_k``/``fraction`` replaces the other two: they are alternatives.
    """
    out = _copy(recipe) if copy else recipe
    if where == "global":
        own = walk(out)[0].parameters
        parameters = set_gate(own, name, value) if name in GATE_KEYS else {**own, name: value}
        _set_parameters(out, parameters)
        return out
    for scope, role in roles(out):
        if role == DEFAULT_ROLE:
            scope.set(name, value)
    return out


def resolve_selection(recipe: Recipe, threshold: float, *, copy: bool = True) -> Any:
    """``recipe`` with its rank selection (``top_k``/``fraction``) replaced by ``threshold: τ``."""
    return set_parameter(recipe, "threshold", threshold, copy=copy)


def without_selection(recipe: Recipe, *, drop_threshold: bool) -> Any:
    """A deep copy without ``top_k``/``fraction`` (and ``threshold``) at the top level."""
    out = _copy(recipe)
    parameters = drop_selection(walk(out)[0].parameters, drop_threshold=drop_threshold)
    _set_parameters(out, parameters)
    return out


def _copy(recipe: Recipe) -> Any:
    if isinstance(recipe, MergeConfiguration):
        return recipe.model_copy(deep=True)
    return copying.deepcopy(dict(recipe))
