"""A model card as huggingface_hub reads and writes it: the one card writer, for merged models
(:mod:`mergekit_safety.publish.model_card`) and LoRA adapters (:mod:`mergekit_safety.adapter.write`)
alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from mergekit_safety.core.errors import ConfigError

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData


def read_card(text: str) -> ModelCard:
    """A README as huggingface_hub's ``ModelCard``: metadata ``card.data``, body ``card.text``.

    A bad ``model-index`` is not an error here (:func:`update_card` keeps other models' entries
    as written); front matter that is not a YAML mapping is.
    """
    from huggingface_hub import ModelCard

    try:
        return ModelCard(text, ignore_metadata_errors=True)
    except yaml.YAMLError as error:
        raise ConfigError(f"README.md front matter is not valid YAML: {error}") from None
    except ValueError:
        raise ConfigError("README.md front matter is not a YAML mapping") from None


def render_card(data: ModelCardData, body: str, card: ModelCard | None = None) -> str:
    """The one card writer: ``data`` as the Hub's front matter, written by huggingface_hub, then
    ``body``. ``card``, the README read, keeps its keys in their order."""
    from huggingface_hub import ModelCard

    card = card if card is not None else ModelCard("---\n\n---\n")
    card.data, card.text = data, body
    return str(card)
