"""``Evaluator``: :func:`~.pipeline.evaluate` bound to one set of prompts and settings.

What ``eval`` runs on each model, what ``sweep`` runs on each reference and point (a model path
in, a summary dict out), and what the efficacy study's sweeps run with their own measurement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_safety.evaluation.pipeline import EvalResult
from mergekit_safety.evaluation.prompts import PromptSets

Measure = Callable[[str], EvalResult]
"""Measures the model at a path (instead of :func:`~.pipeline.evaluate` with the settings)."""
Report = Callable[[str, dict[str, Any], float], None]
"""Told of each model evaluated: its path, its summary and the seconds it took."""


@dataclass
class Evaluator:
    """Model path -> summary dict (``__call__``), or the full result (:meth:`evaluate`)."""

    prompts: PromptSets
    judge: str | None = None
    batch_size: int = 16
    max_new_tokens: int = 64
    device: str = "cpu"
    progress: bool = True
    dtype: str | None = None
    loader: Any = None
    """A ``ResidentBase`` (``ResidentVllm`` on vLLM) for an adapter sweep: the aligned model
    loads once for every point."""
    backend: str = "transformers"
    lm_eval: dict[str, Any] | None = None
    """``harness.run_tasks`` keyword arguments (tasks, include, ...) to run on every model."""
    known: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """Summaries measured before, by model path: returned as they are, nothing evaluated."""
    measure: Measure | None = None
    """How a model is measured, if not by ``evaluate`` with the settings above (the efficacy
    study: a token budget per prompt set)."""
    report: Report | None = None
    stop_settled: bool = False
    """Stop a safety reply once the judge's verdict is settled (``evaluate``'s ``stop_settled``)."""
    settle: Any = None
    """Stop the whole evaluation once its verdict is settled (``evaluate``'s ``settle``: a
    search's gate); a stopped evaluation runs no lm-eval tasks."""
    seconds: float = 0.0
    """Time spent evaluating so far (models in ``known`` cost nothing)."""
    _loaded: Any = field(default=None, init=False, repr=False)
    """The judge, loaded on first use: a classifier loads once for every model evaluated."""

    def __post_init__(self) -> None:
        self.known = {_key(path): summary for path, summary in self.known.items()}

    def __call__(self, path: str) -> dict[str, Any]:
        known = self.known.get(_key(path)) if self.known else None
        if known is not None:
            return dict(known)
        start = time.time()
        summary = self.evaluate(path).summary()
        if self.report is not None:
            self.report(path, summary, time.time() - start)
        return summary

    def evaluate(self, path: str) -> EvalResult:
        """Generate, judge and score ``path`` (and run the lm-eval tasks, if any)."""
        import mergekit_safety.evaluation.harness as harness
        import mergekit_safety.evaluation.pipeline as pipeline  # patchable there (tests)

        start = time.time()
        if self.measure is not None:
            result = self.measure(path)
        else:
            result = pipeline.evaluate(
                path,
                self.prompts,
                judge=self._judge(),
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                device=self.device,
                dtype=self.dtype,
                progress=self.progress,
                backend=self.backend,
                loader=self.loader,
                **({"stop_settled": True} if self.stop_settled else {}),
                **({"settle": self.settle} if self.settle is not None else {}),
            )
        if self.lm_eval and not result.settled:
            from mergekit_safety.evaluation.resident_models import ResidentNetwork

            in_memory = {}
            if isinstance(self.loader, ResidentNetwork):  # a search's trial: the model in memory
                in_memory = {"network": self.loader.network, "tokenizer": self.loader.tokenizer}
            result.lm_eval = harness.run_tasks(
                path, device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                backend=self.backend, **self.lm_eval, **in_memory,
            )  # fmt: skip
        self.seconds += time.time() - start
        return result

    def _judge(self) -> Any:
        from mergekit_safety.evaluation.pipeline import resolve_judge

        if self._loaded is None:
            self._loaded = resolve_judge(self.judge, device=self.device, dtype=self.dtype)
        return self._loaded

    def prompt_sets(self) -> dict[str, Any]:
        """Where each set came from and its size, for sweep.json and the card."""
        return {**self.prompts.sources, "counts": self.prompts.counts()}


def _key(path: str) -> str:
    return str(Path(path).resolve())
