"""What every subcommand shares: turning a user mistake into click's one-line error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from mergekit_safety.errors import explain, run_cleanups, show_traceback

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What ``--dtype`` takes in ``eval`` and ``sweep``."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Report a user mistake as ``Error: <message>`` with exit status 1, the way click does.

    What counts is :func:`mergekit_safety.errors.explain`'s list (our ConfigError, also wrapped
    by pydantic, and mergekit's own checks); a bug keeps its traceback, and ``--verbose`` or
    ``MERGEKIT_SAFETY_TRACEBACK=1`` shows the traceback for a mistake too. Either way, what a
    failed merge had written is removed first.
    """
    try:
        yield
    except click.ClickException:
        raise
    except BaseException as error:
        run_cleanups()
        message = None if show_traceback() else explain(error)
        if message is None:
            raise
        raise click.ClickException(message) from None
