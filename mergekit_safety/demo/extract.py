"""Recover a LoRA adapter from a merged LoRA checkpoint: ``θ_child − θ_parent`` at rank r.

A LoRA stage's checkpoint is ``bf16(θ_parent + s·B A)``: its difference from the parent is the
rank-r update plus bf16 rounding noise. The rank-r truncated SVD of that difference (in fp64) is
the nearest rank-r matrix to it: the trained update, up to that rounding. It is written as a
peft LoRA with ``lora_alpha = r`` (scale 1), ``B = U √S``, ``A = √S Vᵀ``. ``demo build`` saves the
trained adapters themselves; this recovers them for checkpoints built without that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mergekit_safety.demo.train import ADAPTER_BASE, LORA_TARGETS


def extract_adapter(parent: Path, child: Path, out: Path, rank: int) -> Path:
    """Write the rank-``rank`` adapter that takes ``parent`` to ``child`` into ``out``."""
    before, after = load_file(parent / "model.safetensors"), load_file(child / "model.safetensors")
    tensors, targets = {}, set()
    for name in sorted(after):
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        delta = after[name].double() - before[name].double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_B.weight"] = (u[:, :rank] * root).float().contiguous()
        tensors[f"{prefix}.lora_A.weight"] = (root[:, None] * vh[:rank]).float().contiguous()
        targets.add(module.rsplit(".", 1)[-1])
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": ADAPTER_BASE,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "use_rslora": False,
        "fan_in_fan_out": False,
        "task_type": None,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
