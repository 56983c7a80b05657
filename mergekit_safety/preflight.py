"""Checks that fail fast, before mergekit loads a tensor: paths, recipe, matching architectures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.core.errors import ConfigError

SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
"""Config fields that must agree for per-tensor merging (vocabulary size may differ: mergekit
aligns vocabularies when the recipe has a ``tokenizer`` section)."""


def check_same_architecture(models: Sequence[Any]) -> None:
    """Raise ConfigError if a model's config disagrees with the first one's (the base model's)."""
    shapes = {}
    for model in models:
        if os.path.isfile(model.model.path):
            continue  # a raw checkpoint file (mergekit-pytorch): no config to compare
        config = model.config(trust_remote_code=False)
        shapes[model] = {key: getattr(config, key, None) for key in SHAPE_KEYS}
    if not shapes:
        return
    reference_model, reference = next(iter(shapes.items()))
    for model, shape in shapes.items():
        diff = {k: (reference[k], v) for k, v in shape.items() if v != reference[k]}
        if diff:
            key, (want, got) = next(iter(diff.items()))
            raise ConfigError(
                f"mismatched models: {key} is {got} in {model} but {want} in {reference_model}"
            )


def load_recipe(path: str | os.PathLike) -> Any:
    """Parse and validate a mergekit YAML recipe; every failure is a one-line ConfigError."""
    return read_recipe(path)[1]


def read_recipe(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """The recipe as written (its YAML mapping) and validated (mergekit's configuration), from
    one read of the file; every failure is a one-line ConfigError."""
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({_first_line(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping with merge_method and models")
    try:
        config = MergeConfiguration.model_validate(data)
    except (ValidationError, RuntimeError) as error:
        raise ConfigError(f"{path}: {_first_line(error)}") from None
    check_local_models(config)
    return data, config


def check_local_models(config: Any) -> None:
    """Every model given as a local path must exist and hold a config.json."""
    for reference in config.referenced_models():
        for label, where in (("model", reference.model), ("LoRA adapter", reference.lora)):
            if where is None:
                continue
            local = where.path.startswith((".", "/", "~")) or os.path.exists(where.path)
            if local and not Path(where.path).expanduser().exists():
                raise ConfigError(f"{label} not found: {where.path}")
        path = Path(reference.model.path).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            raise ConfigError(f"not a model directory (no config.json): {path}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # pydantic puts the summary first and the useful message on a later line
    useful = [line for line in lines if "validation error for" not in line]
    return (useful or lines or [type(error).__name__])[0]
