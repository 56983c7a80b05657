"""A search's trial without a write or a reload: merge in memory into a network loaded once.

The output network is loaded once from the recipe's ``base_model`` (its architecture and tokenizer
are the merge's: mergekit writes the base model's config). Each trial plans the trial's recipe
with mergekit's own planner and executor (:func:`~mergekit_safety.mergekit_internals.
merge_in_memory`), inside a merge run of its own (:mod:`mergekit_safety.core.runs`) so the planning
hooks — checks, the ``top_k`` ρ pass, the gated kernels' decisions — apply as in ``mergekit-yaml``,
and copies every merged tensor into the resident network's parameters (a ``top_k`` recipe's ρ
pass runs once, for the first trial: ρ depends on the models, not on the searched values). The
network then holds the tensors ``mergekit-yaml`` would write for that recipe (cast to the
network's dtype, as loading the written model does), and is evaluated as it is
(``ResidentNetwork``); with ``backend="vllm"`` the merged tensors are loaded into one vLLM
engine in place (``ResidentVllmMerge``), which answers the trial's prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergekit_safety import mergekit_internals
from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.recipe.scoring import ScoreCache, kept_scores


class ResidentMerge:
    """The output network in memory; :meth:`apply` merges a recipe into it."""

    def __init__(
        self,
        recipe: Mapping[str, Any],
        options: Any,
        *,
        device: str,
        dtype: str | None,
        backend: str = "transformers",
    ):
        from mergekit.config import MergeConfiguration

        from mergekit_safety.evaluation import generation
        from mergekit_safety.tuning.grid import reference_name
        from mergekit_safety.tuning.merging import evaluable

        config = MergeConfiguration.model_validate(dict(recipe))
        if config.tokenizer_source is not None or config.tokenizer is not None:
            raise ConfigError(
                "search keeps the base model's tokenizer in memory: drop tokenizer_source/"
                "tokenizer from the recipe (or merge it with mergekit-yaml)"
            )
        self.options = options
        self.arch_info, self.out_config = mergekit_internals.architecture(config, options)
        self.base = evaluable(reference_name(config.base_model), options)
        # on vLLM the merge target stays on the CPU: the engine holds the accelerator's copy
        where = "cpu" if backend == "vllm" else device
        self.network, self.tokenizer = generation.load_model(self.base, device=where, dtype=dtype)
        self.parameters = dict(self.network.named_parameters(remove_duplicate=False))
        self.scores = ScoreCache()
        """The ``top_k`` ρ pass, kept across trials (ρ does not depend on what is searched)."""
        self.merges = 0
        self.view: Any = None
        """The network as the evaluator sees it (a ``ResidentNetwork``, made on first use)."""
        self.vllm: Any = None
        """With ``backend="vllm"``: the engine each merge is loaded into (``ResidentVllmMerge``)."""
        if backend == "vllm":
            from mergekit_safety.evaluation.resident_models import ResidentVllmMerge

            self.vllm = ResidentVllmMerge(self.base, dtype=dtype)

    def apply(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``recipe`` into the network; returns the merged tensors by name (as merged)."""
        import torch
        from mergekit.config import MergeConfiguration

        config = MergeConfiguration.model_validate(dict(recipe))
        merged: dict[str, Any] = {}
        with runs.opened(runs.MergeRun(quiet=True)), kept_scores(self.scores), torch.no_grad():
            for name, tensor in mergekit_internals.merge_in_memory(
                config, self.options, arch_info=self.arch_info, out_config=self.out_config
            ):
                target = self.parameters.get(name)
                if target is None:
                    raise ConfigError(f"the merge writes {name}, which {self.base} does not have")
                target.copy_(tensor)
                merged[name] = tensor
        unset = [
            name
            for name, param in self.parameters.items()
            if name not in merged and not any(param is self.parameters[m] for m in merged)
        ]
        if unset:
            raise ConfigError(f"the merge leaves {unset[0]} of the network unset")
        self.merges += 1
        if self.vllm is not None:
            self.vllm.load(merged, save=self._save)
        return merged

    def _save(self, path: str) -> None:
        self.network.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def close(self) -> None:
        from mergekit_safety.evaluation import generation

        if self.vllm is not None:
            self.vllm.close()
            self.vllm = None
        self.network = self.tokenizer = self.view = None
        self.parameters = {}
        generation.release()


def evaluate_trial(
    resident: ResidentMerge,
    evaluator: Any,
    recipe: Mapping[str, Any],
    name: str,
    *,
    settle: Any = None,
) -> dict[str, Any]:
    """Merge ``recipe`` into the resident network and evaluate it: the summary dict.

    ``evaluator``: an ``Evaluator`` (or anything callable on a name with a ``loader``
    attribute), pointed at the resident network for the call; ``settle``: its ``settle`` for
    the call (:class:`~mergekit_safety.tuning.settle.GateSettle`: a search's gate).
    """
    from mergekit_safety.evaluation.resident_models import ResidentNetwork

    resident.apply(recipe)
    previous = evaluator.loader
    if resident.vllm is None and resident.view is None:  # one view: the prompts encode once
        resident.view = ResidentNetwork(resident.network, resident.tokenizer)
    evaluator.loader = resident.vllm or resident.view
    before = getattr(evaluator, "settle", None)
    if settle is not None:
        evaluator.settle = settle
    try:
        return dict(evaluator(name))
    finally:
        evaluator.loader = previous
        if settle is not None:
            evaluator.settle = before
