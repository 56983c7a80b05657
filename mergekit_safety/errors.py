"""One error type for every bad recipe, path or model pair, and how it reaches the user.

A :class:`ConfigError` is a ``ValueError`` so API callers can catch it as usual. Unmodified mergekit
commands print a traceback for any exception, and pydantic wraps errors raised inside its
validators; :func:`install_excepthook` makes such a process print our message on one line instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import TracebackType


class ConfigError(ValueError):
    """A user mistake found before heavy work: bad roles, parameters, paths or models."""


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """Return the ConfigError behind ``error``: itself, a cause, or one pydantic wrapped."""
    for candidate in _chain(error):
        if isinstance(candidate, ConfigError):
            return candidate
    return None


def _chain(error: BaseException | None, seen: set[int] | None = None) -> Iterator[BaseException]:
    seen = set() if seen is None else seen
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        errors = getattr(error, "errors", None)  # pydantic.ValidationError keeps the originals
        if callable(errors):
            try:
                for detail in errors():
                    yield from _chain((detail.get("ctx") or {}).get("error"), seen)
            except Exception:  # noqa: BLE001 - not a pydantic error after all
                pass
        error = error.__cause__ or error.__context__


def install_excepthook() -> None:
    """Print a ConfigError that escapes a mergekit command as one line (exit status stays 1)."""
    previous = sys.excepthook
    if getattr(previous, "_mergekit_safety", False):
        return

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        config_error = find_config_error(error)
        if config_error is None:
            previous(kind, error, tb)
            return
        print(f"mergekit-safety: error: {config_error}", file=sys.stderr)

    hook._mergekit_safety = True  # type: ignore[attr-defined]
    sys.excepthook = hook
