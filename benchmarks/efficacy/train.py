"""Supervised fine-tuning on (prompt, reply) pairs: full fine-tuning (A) or a peft LoRA (S, FTs).

A plain loop rather than ``Trainer``: the loss is on the reply tokens only (the chat template's
prompt part is masked), batches are length-sorted buckets, and the whole thing is float32 on CPU
(no native bf16 here). Deterministic for a seed on one machine.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class TrainSettings:
    """What a run used; recorded next to the model."""

    lr: float = 1e-4
    epochs: int = 3
    batch_size: int = 8
    seed: int = 0
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    max_len: int = 160
    warmup: float = 0.05
    weight_decay: float = 0.0


def encode_pair(tokenizer, prompt: str, reply: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of the full chat and labels with the prompt part masked (-100)."""
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    full = head + reply + tokenizer.eos_token
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_len]
    labels = [-100] * min(len(head_ids), len(ids)) + ids[len(head_ids) :]
    return ids, labels[: len(ids)]


def _batches(rows: list, batch_size: int, rng: random.Random) -> list[list]:
    order = list(range(len(rows)))
    rng.shuffle(order)
    chunks = [order[i : i + batch_size * 8] for i in range(0, len(order), batch_size * 8)]
    batches = []
    for chunk in chunks:  # length buckets inside a shuffled window: less padding, still mixed
        chunk.sort(key=lambda i: len(rows[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(rows, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def finetune(
    base: str | Path,
    pairs: Sequence[tuple[str, str]],
    out: Path,
    settings: TrainSettings,
    *,
    merged_out: Path | None = None,
    log=print,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Train on ``pairs``; save to ``out`` (a full model, or the LoRA adapter); return a record.

    With LoRA and ``merged_out``, the adapter merged into the base is saved there as a full model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device)
    if settings.lora_r:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha or 2 * settings.lora_r,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    rows = [encode_pair(tokenizer, p, r, settings.max_len) for p, r in pairs]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warm = max(1, int(settings.warmup * total))

    def schedule(step: int) -> float:  # linear warm-up, cosine decay
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start, step, losses = time.time(), 0, []
    for epoch in range(settings.epochs):
        for batch in _batches(rows, settings.batch_size, rng):
            inputs = {k: v.to(device) for k, v in _collate([rows[i] for i in batch], pad).items()}
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step % 10 == 0 or step == total:
                recent = sum(losses[-10:]) / len(losses[-10:])
                log(
                    f"  epoch {epoch + 1} step {step}/{total} loss {recent:.4f} "
                    f"({time.time() - start:.0f} s)"
                )
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if settings.lora_r and merged_out is not None:
        merged = model.merge_and_unload()
        merged_out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(merged_out, safe_serialization=True)
        tokenizer.save_pretrained(merged_out)
    record = {
        "settings": asdict(settings),
        "examples": len(rows),
        "steps": total,
        "first_loss": sum(losses[:10]) / max(1, len(losses[:10])),
        "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "train_s": round(time.time() - start, 1),
        "trainable_parameters": sum(p.numel() for p in params),
    }
    (out / "train_info.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
