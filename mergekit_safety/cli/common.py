"""What every subcommand shares: turning a user mistake into click's one-line error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from mergekit_safety.recipe.user_errors import explain, run_cleanups, show_traceback
from mergekit_safety.recipe.user_errors import (
    terminate_unwinds as terminate_unwinds,  # for the commands
)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Report a user mistake as ``Error: <message>`` with exit status 1, the way click does.

    What counts is :func:`mergekit_safety.recipe.user_errors.explain`'s list (our ConfigError, also
    wrapped by pydantic, and mergekit's own checks); a bug keeps its traceback, and ``--verbose`` or
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


NOTHING_PASSES = 3
"""Exit status when a sweep or search ran but nothing passes the gate (1: an error, 2: usage)."""


def check_outputs(*, out: Path | None = None, report: Path | None = None,
                  storage: str | None = None) -> None:  # fmt: skip
    """Where a sweep or search will write takes files (its folder made for a sqlite
    ``--storage``, as for ``--out``): checked before any model is evaluated, not after."""
    from mergekit_safety.core.outputs import check_writable

    for label, where in (("--out", out), ("--report", report)):
        if where is not None:
            check_writable(where, label)
    if storage is not None:
        from mergekit_safety.tuning.study import prepare_storage

        prepare_storage(storage)
