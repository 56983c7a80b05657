"""How a mistake reaches the user: one line instead of a traceback, and a failed merge undone.

Unmodified mergekit commands print a traceback for any exception, and pydantic wraps errors raised
inside its validators; :func:`install_excepthook` makes such a process print one line instead, for
our errors (:class:`mergekit_safety.core.errors.ConfigError`) and for the user mistakes mergekit
itself reports with a traceback (:func:`explain` holds the list; the texts of mergekit's,
transformers' and torch's own messages are matched in :mod:`mergekit_safety.mergekit_internals`). A
genuine bug keeps its traceback, and ``-v`` / ``--verbose`` or ``MERGEKIT_SAFETY_TRACEBACK=1`` shows
it for a mistake too.

A failed or interrupted merge also undoes what it wrote
(``mergekit_safety.core.runs.MergeRun.fail``): in process where mergekit's planner or executor
raises, and from the hook for what fails after. Nothing here runs on import: the commands install
the hook (:func:`install_excepthook`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from mergekit_safety.core import runs
from mergekit_safety.core.errors import error_chain, find_config_error

TRACEBACK_ENV = "MERGEKIT_SAFETY_TRACEBACK"
PREFIX = "mergekit-safety: error:"


# --- user mistakes that mergekit, transformers or torch report with a traceback -----------------


def explain(error: BaseException, tb: TracebackType | None = None) -> str | None:
    """The one line for a user mistake behind ``error``, or None for what looks like a bug."""
    found = find_config_error(error)
    if found is not None:
        return str(found)
    for candidate in error_chain(error):
        for rule in _RULES:
            message = rule(candidate, tb or candidate.__traceback__)
            if message:
                return message
    return None


def _yaml(error: BaseException, _tb: TracebackType | None) -> str | None:
    import yaml

    if not isinstance(error, yaml.YAMLError):
        return None
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"the recipe is not valid YAML: {problem}{where}"


def _pydantic(error: BaseException, _tb: TracebackType | None) -> str | None:
    details = getattr(error, "errors", None)
    if type(error).__name__ != "ValidationError" or not callable(details):
        return None
    first = details()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    got = first.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
    return f"{location or 'recipe'}: {first.get('msg', error)}{shown}"


def _foreign(error: BaseException, _tb: TracebackType | None) -> str | None:
    """mergekit's, transformers' and torch's own texts for a user mistake (matched in the door,
    imported only when a command fails: the CLI's start-up loads neither mergekit nor torch)."""
    from mergekit_safety import mergekit_internals

    return mergekit_internals.foreign_message(error)


def _safetensors(error: BaseException, _tb: TracebackType | None) -> str | None:
    """A shard opened outside mergekit's loaders (those name the file themselves)."""
    if type(error).__name__ != "SafetensorError":
        return None
    return f"unreadable safetensors file, truncated or corrupt ({error})"


def _os_error(error: BaseException, _tb: TracebackType | None) -> str | None:
    if not isinstance(error, (PermissionError, FileNotFoundError, NotADirectoryError)):
        return None
    if not getattr(error, "filename", None):
        return None
    return f"{error.strerror or type(error).__name__}: {error.filename}"


_RULES: tuple[Callable[[BaseException, TracebackType | None], str | None], ...] = (
    _yaml,
    _pydantic,
    _foreign,
    _safetensors,
    _os_error,
)


# --- undoing a failed run's output ---------------------------------------------------------------


def run_cleanups() -> None:
    """A command is failing: undo what the current merge (if any) wrote so far."""
    run = runs.current()
    if run is not None:
        run.fail()


def show_traceback() -> bool:
    """The user asked for full tracebacks: the env variable, or -v/--verbose on the command."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return any(arg in ("-v", "--verbose") or re.fullmatch(r"-v+", arg) for arg in sys.argv[1:])


def exit_on_terminate(signum: int, _frame: Any) -> None:
    """SIGTERM (a scheduler's kill, ``timeout``) ends a command as Ctrl-C does: the stack unwinds
    (temporary files and staging directories go), and once it has, what the current merge wrote
    is removed (a merge that finished, whose config.json is written, is left)."""
    atexit.register(run_cleanups)
    sys.exit(128 + signum)


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """:func:`exit_on_terminate` for SIGTERM while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def install_excepthook() -> None:
    """Print a user mistake that escapes a mergekit command as one line (exit status stays 1),
    and let SIGTERM remove a merge's partial output as Ctrl-C does (:func:`exit_on_terminate`)."""
    previous = sys.excepthook
    if getattr(previous, "_mergekit_safety", False):
        return
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, exit_on_terminate)

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        run_cleanups()
        message = None if show_traceback() else explain(error, tb)
        if message is None:
            previous(kind, error, tb)
            return
        print(f"{PREFIX} {message}", file=sys.stderr)

    hook._mergekit_safety = True  # type: ignore[attr-defined]
    sys.excepthook = hook
