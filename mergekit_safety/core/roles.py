"""The ``role`` each input model plays, and the structural checks every method shares.

``base_model`` is the aligned model. Every other input carries ``role``: ``finetuned`` (default),
``unaligned`` (the model before alignment, which defines the alignment subspace) or ``safe`` (the
aligned model fine-tuned on safety data) or ``harmful`` (the aligned model fine-tuned on harmful
data). Methods declare which roles they accept and need.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from pydantic import BeforeValidator

from mergekit_safety.core.errors import ConfigError


class Role(str, Enum):
    FINETUNED = "finetuned"
    UNALIGNED = "unaligned"
    SAFE = "safe"
    HARMFUL = "harmful"  # the aligned model fine-tuned on harmful data (harm_removal's τ_H)


def parse_role(value: object) -> Role:
    if isinstance(value, Role):
        return value
    try:
        return Role(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(repr(r.value) for r in Role)
        raise ConfigError(f"unknown role {value!r}; use one of {allowed}") from None


RoleValue = Annotated[Role, BeforeValidator(parse_role)]
"""Parameter type for ``role``: validated while mergekit plans, before any tensor loads."""


@dataclass(frozen=True)
class RoleRule:
    """Which roles a method accepts: at least ``min`` and at most ``max`` inputs of each."""

    method: str
    counts: Mapping[Role, tuple[int, int | None]]

    def check(self, roles: Mapping[Hashable, Role], base: Hashable | None) -> None:
        """Raise ConfigError unless the non-base inputs' roles fit this method."""
        if base is None:
            raise ConfigError(
                f"{self.method} needs base_model: the aligned model the fine-tune started from"
            )
        by_role: dict[Role, list[Hashable]] = {role: [] for role in Role}
        for model, role in roles.items():
            by_role[role].append(model)
        for role in Role:
            low, high = self.counts.get(role, (0, 0))
            found = by_role[role]
            if high == 0 and found:
                raise ConfigError(
                    f"{self.method} takes no model with role {role.value!r}; got {_names(found)}"
                )
            if len(found) < low:
                raise ConfigError(
                    f"{self.method} needs a model with role {role.value!r}"
                    + ("" if role is Role.FINETUNED else " (set `parameters: {role: ...}`)")
                )
            if high is not None and len(found) > high:
                raise ConfigError(
                    f"{self.method} takes at most {high} model(s) with role {role.value!r}; "
                    f"got {len(found)}: {_names(found)}"
                )


def split_by_role(
    ids: Sequence[Hashable], roles: Mapping[Hashable, Role]
) -> dict[Role, list[Hashable]]:
    """Group input ids by role, keeping input order."""
    out: dict[Role, list[Hashable]] = {role: [] for role in Role}
    for key in ids:
        out[roles[key]].append(key)
    return out


def _names(models: Sequence[Hashable]) -> str:
    return ", ".join(str(getattr(m, "model", m)) for m in models)
