"""The check that fails fast once the models are known, before mergekit loads a tensor: matching
architectures. (Paths and the recipe itself are checked as it is read:
:mod:`mergekit_safety.recipe.load`.)"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

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
