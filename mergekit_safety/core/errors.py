"""One error type for every bad recipe, path or model pair.

A :class:`ConfigError` is a ``ValueError`` so API callers can catch it as usual; how it (and the
mistakes mergekit reports itself) reaches the user as one line:
:mod:`mergekit_safety.recipe.user_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator


class ConfigError(ValueError):
    """A user mistake found before heavy work: bad roles, parameters, paths or models."""


def install_hint(extra: str, packages: str) -> str:
    """How to install an optional extra: mergekit-safety is installed from its repository (it
    is not on the package index: an extra is installed as ``pip install -e '.[extra]'``)."""
    return f"pip install {packages} (in a clone of this repository: pip install -e '.[{extra}]')"


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """Return the ConfigError behind ``error``: itself, a cause, or one pydantic wrapped."""
    for candidate in error_chain(error):
        if isinstance(candidate, ConfigError):
            return candidate
    return None


def error_chain(
    error: BaseException | None, seen: set[int] | None = None
) -> Iterator[BaseException]:
    seen = set() if seen is None else seen
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        errors = getattr(error, "errors", None)  # pydantic.ValidationError keeps the originals
        if callable(errors):
            try:
                for detail in errors():
                    yield from error_chain((detail.get("ctx") or {}).get("error"), seen)
            except Exception:  # noqa: BLE001 - not a pydantic error after all
                pass
        error = error.__cause__ or error.__context__
