"""Which recipe keys a safety method reads: an unknown or unused one is refused before any work.

mergekit drops a recipe key it does not know (a misspelled section, ``thresold:``) and hands a
method only the parameters in its spec, so a typo in a safety parameter would merge silently
with the default. While mergekit validates a recipe that uses one of our methods
(:func:`check_recipe_keys`, called through :mod:`mergekit_safety.mergekit_internals`), every
section and every ``parameters:`` key (top level, module, slice, model, slice source) is checked
against what the method reads for that input's role (values: ``mergekit_safety.core.parameters``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mergekit.merge_methods import get, registered_methods
from mergekit.merge_methods.base import ParameterScope

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.roles import Role, parse_role
from mergekit_safety.core.selection import GATE_KEYS
from mergekit_safety.methods.base import RoleCheckedMethod
from mergekit_safety.recipe.walk import walk

SECTIONS = ("merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype",
            "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name")  # fmt: skip
"""What a mergekit recipe may hold at the top (``name`` is mergekit-multi's)."""


def ours(method_name: Any) -> RoleCheckedMethod | None:
    """The safety method a recipe names, or None (a stock method; an unknown one mergekit names)."""
    try:
        method = get(str(method_name))
    except RuntimeError:
        return None
    return method if isinstance(method, RoleCheckedMethod) else None


def check_recipe_keys(raw: Mapping[str, Any]) -> None:
    """Refuse a key the recipe's method does not read, with what was probably meant."""
    method = ours(raw.get("merge_method"))
    if method is None:
        return
    name = method.spec.name
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"{name}: unknown recipe section `{key}`{_meant(key, SECTIONS)}")
    shared = {p.name for p in method.spec.parameters if p.scope is ParameterScope.SHARED}
    per_input = {p.name for p in method.spec.parameters if p.scope is not ParameterScope.SHARED}
    inputs = list(_inputs(raw))
    gated = method.gates and any(_role(p) is Role.UNALIGNED for _where, p in inputs)
    top = raw.get("parameters") or {}
    for where, parameters in _scopes(raw):
        for key in parameters:  # per-input ones here apply to every input
            _check_key(method, key, shared | per_input, where)
            if key in GATE_KEYS and not gated:
                raise ConfigError(not_gated(method, key))
            if key in method.read_only_with:
                _check_read(method, key, parameters, top)
    for where, parameters in inputs:
        role = _role(parameters)
        for key in parameters:
            if key in shared:
                raise ConfigError(
                    f"{name}: `{key}` is a recipe-wide parameter; set it under the top-level "
                    f"`parameters:`, not on {where}"
                )
            _check_key(method, key, per_input, where)
            if key == "weight" and role not in method.weighted:
                raise ConfigError(
                    f"{name}: `weight` of {where} (role {role.value}) is not used: {name} "
                    "weighs only "
                    + " and ".join(f"{r.value} models" for r in sorted(method.weighted))
                )


def _check_key(method: RoleCheckedMethod, key: str, known: set[str], where: str) -> None:
    if key in known:
        return
    name = method.spec.name
    users = sorted(
        m.spec.name
        for m in registered_methods()
        if isinstance(m, RoleCheckedMethod) and key in {p.name for p in m.spec.parameters}
    )
    if users:
        raise ConfigError(f"{name}: `{key}` in {where} is not a parameter of {name} "
                          f"({', '.join(users)} use it)")  # fmt: skip
    vocabulary = {p.name for m in registered_methods() for p in getattr(m.spec, "parameters", ())}
    raise ConfigError(
        f"{name}: unknown parameter `{key}` in {where}{_meant(key, known | vocabulary)}"
    )


def _check_read(
    method: RoleCheckedMethod, key: str, parameters: Mapping[str, Any], top: Mapping[str, Any]
) -> None:
    """``key`` is read only when another parameter has a value: refuse it where it has not."""
    other, wanted = method.read_only_with[key]
    default = next(p.default for p in method.spec.parameters if p.name == other)
    value = parameters.get(other, top.get(other, default) if isinstance(top, Mapping) else default)
    if value != wanted:
        name = method.spec.name
        raise ConfigError(
            f"{name}: `{key}` is read only with `{other}: {wanted}`, and {other} is {value} here: "
            f"{key} would be ignored; set `{other}: {wanted}` or remove {key}"
        )


def check_filters(recipe: Any, names: Iterable[str], model: Any) -> None:
    """Every ``filter:`` of the recipe's parameters matches some tensor of ``names`` (mergekit
    applies a filtered value to the tensors whose name contains it, and a filter that matches
    none is silently ignored: every tensor gets the unfiltered value)."""
    names = list(names)
    if not names:
        return
    for scope in walk(recipe):
        where = scope.label or "the top-level `parameters:`"
        for key, value in scope.parameters.items():
            if not isinstance(value, list):
                continue
            for entry in value:  # a mapping as written, mergekit's ConditionalParameter as read
                text = entry.get("filter") if isinstance(entry, Mapping) else None
                text = getattr(entry, "filter", text)
                if isinstance(text, str):
                    check_filter(text, names, model, f"`{key}` in {where}")


def check_filter(text: str, names: Iterable[str], model: Any, where: str) -> None:
    """One filter matches a tensor name (as mergekit matches: a substring), or one line."""
    names = list(names)
    if not names or any(text in name for name in names):
        return
    parts = dict.fromkeys(
        part
        for name in names
        for part in name.split(".")
        if not part.isdigit() and part not in ("model", "layers", "weight", "bias")
    )
    meant = _meant(text, parts) or f" (its tensor names hold {', '.join(list(parts)[:6])}, ...)"
    raise ConfigError(
        f"{where}: filter {text!r} matches no tensor of {model}{meant}; its value would apply "
        "to nothing"
    )


def not_gated(method: RoleCheckedMethod, key: str) -> str:
    """Why a gate key (``threshold``, ``top_k``, ``fraction``) does nothing with ``method`` here."""
    name = method.spec.name
    if method.gates:
        return (f"{name}: `{key}` gates matrices by rho, which needs a model with role "
                f"'unaligned' ({name} without one is ungated and merges every tensor)")  # fmt: skip
    gating = sorted(m.spec.name for m in registered_methods()
                    if isinstance(m, RoleCheckedMethod) and m.gates)  # fmt: skip
    return f"{name}: `{key}` does nothing here: {name} does not gate ({', '.join(gating)} do)"


def _role(parameters: Mapping[str, Any]) -> Role:
    try:
        return parse_role(parameters.get("role", Role.FINETUNED.value))
    except ConfigError:
        return Role.FINETUNED  # the role check says what is wrong with it


def _meant(key: str, known: Any) -> str:
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.7)
    return f"; did you mean `{close[0]}`?" if close else ""


def _scopes(raw: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every recipe-wide ``parameters:`` mapping: top level, module, slice."""
    for scope in walk(raw):
        if not scope.is_input:
            yield scope.label or "the top-level `parameters:`", scope.parameters


def _inputs(raw: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every input's ``parameters:``, named by its model, in mergekit's three layouts."""
    for scope in walk(raw):
        if scope.is_input:
            yield f"model {scope.label}", scope.parameters
