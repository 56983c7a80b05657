"""What every subcommand shares: turning a user mistake into click's one-line error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from mergekit_safety.errors import explain, run_cleanups, show_traceback

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What ``--dtype`` takes in ``eval`` and ``sweep``."""


def lm_eval_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--lm-eval``, ``--lm-eval-include``, ``--lm-eval-chat-template``, ``--lm-eval-limit``:
    lm-evaluation-harness tasks, the same in ``eval`` and ``sweep``."""
    options = [
        click.option(
            "--lm-eval",
            "lm_eval_tasks",
            metavar="TASK[,TASK]",
            help="Also run these lm-evaluation-harness tasks on each model (pip install "
            "'mergekit-safety[lm-eval]'): metrics go to summary.json and the card's model-index.",
        ),
        click.option(
            "--lm-eval-include",
            type=click.Path(file_okay=False),
            help="A directory of lm-eval task YAMLs (e.g. a task over a local JSONL file).",
        ),
        click.option(
            "--lm-eval-chat-template",
            is_flag=True,
            help="Apply the chat template in lm-eval's prompts [default: off, as lm-eval].",
        ),
        click.option(
            "--lm-eval-limit",
            type=click.IntRange(min=1),
            help="Use the first N documents of each task.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


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
