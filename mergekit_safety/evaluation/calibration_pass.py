"""The calibration pass: run the aligned model on safety prompts and sum, per linear layer, its
inputs' outer products ``XᵀX`` (what Safe Delta's per-entry safety cost needs).

Streaming: prompts go through in batches; forward hooks on every ``nn.Linear`` (the output
head excepted) add ``XᵀX`` of the batch's real tokens into one float32 ``in × in`` accumulator
per layer. Memory is the model, the accumulators (Σ in² per layer, fixed) and one batch's
activations: it does not grow with the number of prompts. Sequences are padded on the right,
so every real token sees exactly what it would see alone (a causal model never attends to the
pads after it), and pads are masked out of the sums: the result equals one prompt at a time,
as the reference runs it (batch size 1), up to float32 summation order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_safety.core.calibration import FORMAT, METADATA, TENSOR, file_of
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.outputs import check_writable, staged
from mergekit_safety.evaluation.generation import load_model, release, render


def texts_of(tokenizer: Any, conversations: Sequence[Any]) -> list[list[int]]:
    """Token ids: a prompt with the generation prompt after it; a prompt + reply as written."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    rows = []
    for conversation in conversations:
        if isinstance(conversation, str):
            text = render(tokenizer, conversation, chat) if chat else conversation
        elif chat:
            text = tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=False
            )
        else:
            text = " ".join(turn["content"] for turn in conversation)
        # verbose=False: the caller cuts each row to --max-length; the tokenizer's warning about
        # its model_max_length would repeat on every run
        rows.append(tokenizer(text, add_special_tokens=not chat, verbose=False)["input_ids"])
    return rows


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, mask) padded on the right: real tokens keep positions 0..L−1."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def linear_layers(model: Any) -> dict[str, torch.nn.Linear]:
    """Every ``nn.Linear`` by its weight's module name, the output head excepted."""
    head = model.get_output_embeddings()
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }


def accumulate(
    model: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """``XᵀX`` per linear layer over the real tokens of every batch (float32, on the model's
    device)."""
    from tqdm.auto import tqdm

    layers = linear_layers(model)
    device = next(model.parameters()).device
    sums = {
        name: torch.zeros(m.in_features, m.in_features, dtype=torch.float32, device=device)
        for name, m in layers.items()
    }
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def add(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            x = inputs[0][current["mask"]].to(torch.float32)  # real tokens × in
            sums[name].addmm_(x.T, x)

        return add

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with torch.inference_mode():
            for ids, mask in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
                current["mask"] = mask.to(device)
                model(input_ids=ids.to(device), attention_mask=mask.to(device).long())
    finally:
        for handle in handles:
            handle.remove()
    return sums


def calibrate(
    model_path: str,
    conversations: Sequence[Any],
    out: Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Run the pass and write ``out``: one ``<module>.safetensors`` per layer and the record."""
    check_empty(out)
    started = time.perf_counter()
    model, tokenizer = load_model(model_path, device=device, dtype=dtype)
    try:
        rows = [row[:max_length] for row in texts_of(tokenizer, conversations)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sums = accumulate(model, batches_of(rows, pad, batch_size), progress=progress)
    finally:
        release(model)
    digest = hashlib.sha256(
        json.dumps(list(conversations), sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return write(
        out,
        sums,
        model=str(model_path),
        prompts=source,
        prompts_sha256=digest,
        rows=rows,
        max_length=max_length,
        dtype=str(dtype or "auto"),
        seconds=time.perf_counter() - started,
    )


def check_empty(out: Path) -> None:
    """``--out`` is new, empty, or holds only an interrupted calibration; and it can be written.

    Made before the model loads. An interrupted run of this version leaves nothing in ``--out``
    (it writes a staging sibling, :func:`mergekit_safety.core.outputs.staged`); one of an older
    version left per-layer files without ``calibration.json``: that is replaced, not "not empty".
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not interrupted(out):
        raise ConfigError(f"--out {out} is not empty; choose a new directory")
    check_writable(out, "--out")


def interrupted(out: Path) -> bool:
    """``out`` holds per-layer statistics and no ``calibration.json``: a calibration cut short."""
    entries = list(Path(out).iterdir())
    return bool(entries) and all(
        entry.is_file() and entry.suffix == ".safetensors" for entry in entries
    )


def batches_of(
    rows: Sequence[Sequence[int]], pad: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [right_pad(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]


def write(
    out: Path,
    sums: dict[str, torch.Tensor],
    *,
    rows: Sequence[Sequence[int]],
    seconds: float,
    **fields: Any,
) -> dict[str, Any]:
    """Each layer's sum as ``<module>.safetensors`` and the record, ``calibration.json``."""
    from safetensors.torch import save_file

    out = Path(out)
    record = {
        "format": FORMAT,
        **fields,
        "sequences": len(rows),
        "tokens": sum(len(row) for row in rows),
        "statistic": "sum over real tokens of x x^T, float32; H = 2 xtx / sequences",
        "seconds": round(seconds, 2),
        "modules": {name: int(total.shape[0]) for name, total in sums.items()},
    }
    with staged(out) as staging:  # all files or none: Ctrl-C leaves no half calibration
        for name, total in sums.items():
            save_file({TENSOR: total.cpu().contiguous()}, str(file_of(staging, name)))
        (staging / METADATA).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.is_dir() and interrupted(out):
            shutil.rmtree(out)
    return record
