"""One merge in progress: what its kernels decided, what it watches, and how to undo its output.

A :class:`MergeRun` is opened for exactly the span of one merge (:func:`opened`: mergekit's
``run_merge``, ``mergekit-pytorch``, a Python API call, a search's in-memory merge) and is
reached through a context variable, never a module global: it ends when its merge ends, a second
merge in the same process opens its own, and reads nothing the first left behind. Kernels report
their gate decisions to it, the planner the tensors it will run and the τ a ``top_k`` resolved
to, and the ``done`` line reads them back.

Worker threads (mergekit's multi-GPU executor) start with an empty context: :func:`bound` carries
the opening thread's run into them.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What a method does with one tensor, and why: the record ``inspect`` prints."""

    merge: bool
    reason: str
    rho: float | None = None


@dataclass
class AlignmentWatch:
    """The gated tensors of one (aligned, unaligned) pair: planned, run, and how many had V = 0."""

    planned: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    gated: int = 0
    empty: int = 0


@dataclass
class MergeRun:
    """The state of one merge, from planning (or the API call) to its last written tensor."""

    out_path: str | None = None
    """Where the merge writes; None for an in-memory merge (Python API, a scoring plan)."""
    quiet: bool = False
    api_selection: bool = False
    """A Python API call that selects by rank (``top_k``/``fraction``) over the tensors it got."""
    decisions: dict[str, Decision] = field(default_factory=dict)
    """Gated tensor name -> the kernel's decision."""
    watches: dict[tuple[Any, Any], AlignmentWatch] = field(default_factory=dict)
    recipe: Any = None
    """The planned recipe (mergekit's view, see ``mergekit_internals.PlannedRecipe``)."""
    written: bool = False
    seen: set[Hashable] = field(default_factory=set)
    headers: dict[Any, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    """Model -> its tensors' shapes from its file headers, read once per merge."""
    selection: Any = None
    """The planned recipe's ``top_k``/``fraction`` (a ``selection.Selection``), if it ranks."""
    threshold: float | None = None
    """τ that selection resolved to, once the plan's ρ pass ran: what the kernels merge at."""
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, name: str, decision: Decision) -> None:
        """A kernel's gate decision for tensor ``name`` (kernels may run in several threads)."""
        with self._lock:
            self.decisions[name] = decision

    def watch(self, key: tuple[Any, Any]) -> AlignmentWatch:
        with self._lock:
            return self.watches.setdefault(key, AlignmentWatch())

    def first_time(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen in this merge (a check made once, a warning)."""
        with self._lock:
            if key in self.seen:
                return False
            self.seen.add(key)
            return True

    def warn_once(self, key: Hashable, message: str, *, stacklevel: int = 2) -> None:
        """``warnings.warn(message)`` the first time ``key`` is seen in this merge."""
        if self.first_time(("warning", key)):
            warnings.warn(message, stacklevel=stacklevel + 1)

    def on_failure(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` if this merge fails (an exception, Ctrl-C included)."""
        self._cleanups.append(cleanup)

    def fail(self) -> None:
        """The merge failed: undo what it wrote (once; a cleanup's own error is swallowed)."""
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception:  # noqa: BLE001 - never hide the original error
                pass


_CURRENT: contextvars.ContextVar[MergeRun | None] = contextvars.ContextVar(
    "mergekit_safety_run", default=None
)


def current() -> MergeRun | None:
    """The merge this code runs in, if one is open in this context."""
    return _CURRENT.get()


@contextlib.contextmanager
def opened(run: MergeRun) -> Iterator[MergeRun]:
    """``run`` is current inside the block; it fails (undoes its output) if the block raises."""
    token = _CURRENT.set(run)
    try:
        yield run
    except BaseException:
        run.fail()
        raise
    finally:
        _CURRENT.reset(token)


def bound(function: Callable[..., Any], run: MergeRun | None) -> Callable[..., Any]:
    """``function`` that runs with ``run`` current, in whatever thread calls it."""
    if run is None:
        return function

    def with_run(*args: Any, **kwargs: Any) -> Any:
        token = _CURRENT.set(run)
        try:
            return function(*args, **kwargs)
        finally:
            _CURRENT.reset(token)

    return with_run
