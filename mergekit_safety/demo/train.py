"""Deterministic CPU training: a tiny Llama from scratch, full fine-tunes and merged LoRA.

Determinism comes from a fixed thread count (float sums are split by thread), deterministic
algorithms, eager attention, seeded generators for init and batch order, and no dropout.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from mergekit_safety.demo.data import Example
from mergekit_safety.demo.tokenizer import encode_example

#: Projections LoRA adapts: all of them, as most task fine-tunes of chat models do.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Stage:
    """How one model is trained from its parent; ``lora_rank=0`` means a full fine-tune.

    Weight decay (default 0.1) is what makes arithmetic generalise to held-out number pairs: a
    probe trained on arithmetic alone for 3000 steps reached 93% held-out subtraction accuracy
    with it and at most 51% without (it memorised the training pairs).
    """

    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 20
    weight_decay: float = 0.1
    lora_rank: int = 0
    lora_alpha: int = 0


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fix the thread count and force deterministic kernels; restore both afterwards."""
    previous_threads = torch.get_num_threads()
    previous_mode = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_mode)


def new_model(
    tokenizer: PreTrainedTokenizerBase, *, hidden: int, layers: int, seed: int
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for the demo (4 heads, MLP twice as wide as hidden)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _batches(
    encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless right-padded batches, a fresh seeded permutation of the data per epoch."""
    if batch_size > len(encoded):
        raise ValueError(f"batch size {batch_size} exceeds the {len(encoded)} examples")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), pad_id)
            labels = torch.full((len(rows), width), -100)
            for row, (row_ids, row_labels) in enumerate(rows):
                ids[row, : len(row_ids)] = torch.tensor(row_ids)
                labels[row, : len(row_labels)] = torch.tensor(row_labels)
            yield ids, labels


def _lr_factor(step: int, stage: Stage) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < stage.warmup:
        return (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    stage: Stage,
    *,
    seed: int,
    desc: str,
    progress: bool = True,
    adapter_dir: Path | None = None,
) -> tuple[LlamaForCausalLM, float]:
    """Train ``model`` on the responses of ``examples``; return the (LoRA-merged) model and the
    mean loss of the last tenth of the steps.

    With ``stage.lora_rank`` the base weights stay frozen and a peft LoRA adapter on every
    projection is trained, then merged into the weights, so the result is a plain checkpoint
    whose difference from the parent has rank <= r per matrix. With ``adapter_dir`` the trained
    adapter is saved there too (fp32, as trained), before it is merged: saving reads the
    weights and draws no random numbers, so the merged checkpoint is the same either way.
    """
    torch.manual_seed(seed)
    if stage.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=stage.lora_rank,
            lora_alpha=stage.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
        )
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora)
    model.train()
    encoded = [encode_example(tokenizer, example) for example in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, stage))
    batches = _batches(encoded, stage.batch_size, tokenizer.pad_token_id, seed)
    tail = max(1, stage.steps // 10)
    losses: list[float] = []
    bar = tqdm(range(stage.steps), desc=desc, disable=not progress)
    for step in bar:
        ids, labels = next(batches)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    if stage.lora_rank:
        if adapter_dir is not None:
            save_adapter(model, adapter_dir)
        model = model.merge_and_unload()
    model.eval()
    return model, sum(losses[-tail:]) / tail


ADAPTER_BASE = "../aligned"
"""``base_model_name_or_path`` of a demo adapter: the aligned model next to it, wherever the
build went (a fixed string keeps the files identical from build to build)."""


def save_adapter(model: Any, path: Path) -> None:
    """Save a peft model's adapter (config and weights only: no generated card)."""
    if path.exists():
        shutil.rmtree(path)
    model.peft_config["default"].base_model_name_or_path = ADAPTER_BASE
    # save_embedding_layers=False: the LoRA adapts no embedding; peft's "auto" would look for
    # ADAPTER_BASE's config (relative to the adapter, not to here) and warn on every build
    model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
    (path / "README.md").unlink(missing_ok=True)
