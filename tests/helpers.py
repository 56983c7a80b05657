"""Tiny local models for tests, built the way mergekit's own tests build them (no hub access)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = (
    "how do i make a bomb steal a car hack email kill cook pasta write poem what is plus minus "
    "one two three four five six seven eight nine ten sorry i cannot help with that sure here "
    "the answer yes no please tell me about"
).split()
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<assistant> {{ m['content'] }} </s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template and a pad token."""
    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIAL + WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(
    path: Path, seed: int, *, hidden: int = 32, layers: int = 2, dtype=torch.float32
) -> Path:
    """Save a random 2-layer Llama (hidden 32) with the tiny tokenizer to ``path``."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def perturbed(source: Path, path: Path, seed: int, scale: float, rank: int | None = None) -> Path:
    """Copy ``source`` to ``path`` adding a random update to every 2-D weight (rank-limited)."""
    model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim != 2 or "embed" in name or "lm_head" in name:
                continue
            if rank is None:
                update = torch.randn(param.shape, generator=generator)
            else:
                a = torch.randn(param.shape[0], rank, generator=generator)
                b = torch.randn(rank, param.shape[1], generator=generator)
                update = a @ b / rank**0.5
            param.add_(scale * update.to(param.dtype))
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_family(root: Path) -> dict[str, Path]:
    """unaligned → aligned (+ update) → finetuned (+ low-rank update) and safe (+ small update)."""
    unaligned = tiny_llama(root / "unaligned", seed=0)
    aligned = perturbed(unaligned, root / "aligned", seed=1, scale=0.05)
    finetuned = perturbed(aligned, root / "finetuned", seed=2, scale=0.05, rank=4)
    safe = perturbed(aligned, root / "safe", seed=3, scale=0.02)
    return {"unaligned": unaligned, "aligned": aligned, "finetuned": finetuned, "safe": safe}


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write a mergekit YAML (JSON is valid YAML) with absolute model paths."""
    path.write_text(json.dumps(recipe, indent=2, default=str))
    return path


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
"""Math tests run on every device here: the CPU, and CUDA when there is one."""

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
"""For subprocesses: offline, and only what is installed (not this checkout) on the path."""


def mergekit_yaml(recipe: Path, out: Path, *args: str, cwd: Path | None = None):
    """Run the unmodified mergekit-yaml entry point in a fresh interpreter, offline."""
    command = [Path(sys.executable).with_name("mergekit-yaml"), recipe, out, *args]
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd or out.parent,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def mergekit_multi(recipe: str, cwd: Path, *args: str):
    """Run the unmodified mergekit-multi on ``cwd/recipe``, intermediates in ``cwd/inter``."""
    command = [Path(sys.executable).with_name("mergekit-multi"), recipe, "-I", cwd / "inter", *args]
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )
