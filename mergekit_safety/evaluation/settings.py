"""How an evaluation runs, as one immutable value: the prompt sets' sources, the judge, the
generation settings and the lm-eval tasks. ``eval``, ``sweep`` and ``search`` collapse their
flags into an :class:`EvalSettings` (``cli/options.py``) and build the
:class:`~.prompt_evaluator.Evaluator` from it with :meth:`EvalSettings.build`, the one way it is
built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.evaluation.prompt_evaluator import Evaluator
from mergekit_safety.evaluation.prompts import PromptSets


@dataclass(frozen=True)
class PromptSources:
    """Where the three prompt sets come from (:func:`~.prompts.load_prompt_sets`), and which
    jailbreaks wrap the first ``attack_limit`` harmful prompts."""

    harmful: str | None = None
    benign: str | None = None
    task: str | None = None
    prompts_dir: str | None = None
    limit: int | None = None
    split: str = "train"
    column: str | None = None
    attacks: str | None = None
    attack_limit: int | None = None

    def __post_init__(self) -> None:
        if self.attack_limit is not None and not self.attacks:
            raise ConfigError("--attack-limit wraps nothing without --attacks")

    def load(self) -> PromptSets:
        """Read every set now (a bad path is one line before any model loads)."""
        from mergekit_safety.evaluation.prompts import load_prompt_sets

        return load_prompt_sets(
            harmful=self.harmful,
            benign=self.benign,
            task=self.task,
            prompts_dir=self.prompts_dir,
            limit=self.limit,
            split=self.split,
            column=self.column,
        ).with_attacks(self.attacks, self.attack_limit)


@dataclass(frozen=True)
class LmEvalSettings:
    """lm-evaluation-harness tasks to run on every model (``--lm-eval`` and its options)."""

    tasks: tuple[str, ...]
    include: str | None = None
    chat_template: bool = False
    limit: int | None = None

    def check(self) -> None:
        """lm-eval installed and every task known (one line, before any model loads)."""
        from mergekit_safety.evaluation import harness

        harness.check_tasks(list(self.tasks), self.include)

    def arguments(self) -> dict[str, Any]:
        """``harness.run_tasks``' keyword arguments (the Evaluator's ``lm_eval``)."""
        return {
            "tasks": list(self.tasks),
            "include": self.include,
            "chat_template": self.chat_template,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class EvalSettings:
    """Everything an evaluation needs but the model: prompts, judge, generation, lm-eval."""

    prompts: PromptSources = PromptSources()
    judge: str | None = None
    batch_size: int = 16
    max_new_tokens: int = 64
    device: str = "cpu"
    dtype: str | None = None
    backend: str = "transformers"
    lm_eval: LmEvalSettings | None = None
    progress: bool = True

    def replace(self, **changes: Any) -> EvalSettings:
        return dataclasses.replace(self, **changes)

    @property
    def tasks(self) -> list[str]:
        """The lm-eval tasks run on every model (none without ``lm_eval``)."""
        return [] if self.lm_eval is None else list(self.lm_eval.tasks)

    def generation(self) -> dict[str, Any]:
        """The generation settings as ``sweep.json``, ``search.json`` and the card keep them."""
        return {
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "device": self.device,
            "dtype": self.dtype,
        }

    def build(self, *, loader: Any = None) -> Evaluator:
        """The Evaluator: prompt sets read, the judge named correctly and lm-eval's tasks
        checked now, so a mistake is one line before any merge or model load. ``loader``: a
        resident model for every evaluation (an adapter sweep's aligned model)."""
        from mergekit_safety.evaluation.judge import check_judge

        prompts = self.prompts.load()
        check_judge(self.judge)  # a classifier loads on first use
        if self.lm_eval is not None:
            self.lm_eval.check()
        return Evaluator(
            prompts,
            self.judge,
            self.batch_size,
            self.max_new_tokens,
            self.device,
            self.progress,
            self.dtype,
            loader=loader,
            backend=self.backend,
            lm_eval=None if self.lm_eval is None else self.lm_eval.arguments(),
        )
