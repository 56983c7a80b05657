"""An ``unaligned`` model equal to the aligned one: V = 0 everywhere, so no gate can work.

One matrix with V = 0 is an ordinary case (alignment left it alone: it keeps θ_ft). Every gated
matrix with V = 0 means the wrong model was given, which the kernels see one tensor at a time:
the planner records in the merge's run which tensors it will run (:func:`watch_planned`), and the
kernels answer once the last of them ran (:func:`alignment_vanished`).
"""

from __future__ import annotations

from typing import Any

from mergekit_safety.core import runs


def watch_planned(key: tuple[Any, Any], tensor: str) -> None:
    """Record a tensor the planned merge of (aligned, unaligned) ``key`` will run."""
    run = runs.current()
    if run is not None:
        run.watch(key).planned.add(tensor)


def alignment_vanished(key: tuple[Any, Any], results: dict[str, bool | None]) -> bool:
    """Whether V = 0 in every gated matrix of the merge: the gate then has nothing to measure.

    ``results``: tensor name -> V == 0 (None: not gated). A planned merge answers once its last
    tensor ran; a call not planned by mergekit (the Python API) answers from the tensors given,
    when there are several: for one matrix, V = 0 is the documented keep-θ_ft case.
    """
    run = runs.current()
    watch = run.watches.get(key) if run is not None else None
    if watch is None:
        gated = [zero for zero in results.values() if zero is not None]
        return len(gated) > 1 and all(gated)
    for tensor, zero in results.items():
        if tensor in watch.done:
            continue
        watch.done.add(tensor)
        watch.gated += zero is not None
        watch.empty += bool(zero)
    return watch.done >= watch.planned and watch.gated > 0 and watch.empty == watch.gated
