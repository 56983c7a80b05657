"""Merging a point (mergekit's ``run_merge``, or in adapter space); installing the choice."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

Merge = Callable[[Mapping[str, Any], Path, Any], None]
"""Merges a recipe into a directory with mergekit ``MergeOptions``."""


def evaluable(name: str, merge_options: Any) -> str:
    """The directory to evaluate for a reference: itself, or its LoRA merged, with a tokenizer."""
    from mergekit.common import ModelReference

    from mergekit_safety.recipe.lora_cache import merged_copy

    return merged_copy(
        ModelReference.parse(name),
        merge_options.lora_merge_cache,
        trust_remote_code=merge_options.trust_remote_code,
    )


def merge_recipe(
    recipe: Mapping[str, Any], out_path: Path, options: Any, config_source: str | None = None
) -> None:
    """Merge through mergekit's own ``run_merge``, as ``mergekit-yaml`` does."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge

    config = MergeConfiguration.model_validate(recipe)
    source = config_source or yaml.safe_dump(dict(recipe), sort_keys=False)
    run_merge(config, str(out_path), options=options, config_source=source)


def merge_adapter(recipe: Mapping[str, Any], out_path: Path, options: Any) -> None:
    """Merge in adapter space, as ``mergekit-safety adapter`` does: the same merge, as a peft
    LoRA adapter for the aligned model (the recipe's inputs must be ``aligned+adapter``)."""
    from mergekit_safety.adapter import merge_recipe_to_adapter

    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = out_path.parent / "recipe.yml"
    source.write_text(yaml.safe_dump(dict(recipe), sort_keys=False), encoding="utf-8")
    merge_recipe_to_adapter(source, out_path, device="cuda" if options.cuda else "cpu")


def references(recipe: Mapping[str, Any]) -> list[Any]:
    """Every model the recipe reads (mergekit ``ModelReference``s)."""
    from mergekit.config import MergeConfiguration

    return list(MergeConfiguration.model_validate(recipe).referenced_models())


WEIGHT_FILES = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_config.json",
)
"""A previous model's weights in ``out``: removed, so a stale shard or index cannot be loaded."""


def install(source: Path, out: Path) -> None:
    """Move a finished merge's files into ``out`` (created if needed; same-named files and an
    earlier model's weights replaced), all at the end
    (:func:`~mergekit_safety.core.outputs.staged`): an interruption leaves ``out`` as it was."""
    from mergekit_safety.core.outputs import staged

    with staged(out, merge=True, stale=WEIGHT_FILES) as staging:
        for item in source.iterdir():
            shutil.move(str(item), str(staging / item.name))
