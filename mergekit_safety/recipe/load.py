"""A recipe read from its file: parsed, validated by mergekit and its local models found, every
failure a one-line ConfigError, before anything loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mergekit_safety.core.errors import ConfigError


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
