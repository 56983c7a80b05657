"""Models given as LoRA adapters: ``base+adapter`` (mergekit's notation) or an adapter directory.

An adapter is evaluated as peft runs it on its base model, in memory: no merged copy is written.
A directory holding only ``adapter_config.json`` names its base in ``base_model_name_or_path``;
a relative base is looked up from the working directory, then from the adapter directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergekit_safety.core.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a base model and, optionally, a peft adapter on it."""

    base: str
    adapter: str | None = None


def parse_model(model: str) -> ModelSpec:
    """Split ``base+adapter``; read an adapter directory's base; else a plain model."""
    if "+" in model:
        base, _, adapter = model.partition("+")
        if not base or not adapter or "+" in adapter:
            raise ConfigError(f"{model}: write a model with an adapter as BASE+ADAPTER")
        return ModelSpec(base, adapter)
    path = Path(model).expanduser()
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return ModelSpec(adapter_base(path), model)
    return ModelSpec(model)


def adapter_config(adapter: str | Path) -> dict:
    """A local adapter directory's ``adapter_config.json``; one line when it cannot be read."""
    config_path = Path(adapter).expanduser() / "adapter_config.json"
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config_path}: not readable ({error})") from None


def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in a peft adapter (``r``, or a ``rank_pattern`` entry above it)."""
    config = adapter_config(adapter)
    return max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])


def adapter_base(adapter: Path) -> str:
    """The base model an adapter directory names, resolved to a local path where one exists."""
    base = adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ConfigError(
            f"{adapter}: adapter_config.json names no base model; write it as BASE+{adapter}"
        )
    for candidate in (Path(base).expanduser(), adapter / base):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return str(base)


def check_adapter(adapter: str) -> None:
    """A local adapter directory must hold adapter_config.json (a Hub id is checked on load)."""
    path = Path(adapter).expanduser()
    if path.exists() or adapter.startswith((".", "/", "~")):
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter}: not a peft adapter directory (no adapter_config.json)")
