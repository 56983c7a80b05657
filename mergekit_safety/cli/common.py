"""What every subcommand shares: turning our ConfigError into click's one-line error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from mergekit_safety.errors import find_config_error


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Report a ConfigError (also one wrapped by pydantic) as ``Error: <message>``, exit 1."""
    try:
        yield
    except Exception as error:
        found = find_config_error(error)
        if found is None:
            raise
        raise click.ClickException(str(found)) from None
