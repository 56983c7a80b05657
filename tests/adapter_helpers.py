"""Real peft LoRA adapters on the tiny models, with nonzero factors, for the adapter tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from helpers import ENV
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(
    aligned: Path,
    unaligned: Path,
    path: Path,
    seed: int,
    *,
    rank: int = 4,
    alpha: int = 8,
    scale: float = 0.05,
    **config,
) -> Path:
    """A LoRA on ``aligned`` with random factors; every other module's update lies along V's
    leading directions (high ρ), the rest are random (low ρ), so a τ in between splits them."""
    model = LlamaForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    before = LlamaForCausalLM.from_pretrained(unaligned, dtype=torch.float32).state_dict()
    after = model.state_dict()
    lora = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=TARGETS, task_type="CAUSAL_LM", **config
    )
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index, (name, module) in enumerate(peft_model.named_modules()):
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=generator) / a.shape[1] ** 0.5)
            if index % 2:  # along V's leading left singular vectors: stays in the subspace
                weight = name.removeprefix("base_model.model.") + ".weight"
                v = after[weight] - before[weight]
                u = torch.linalg.svd(v, full_matrices=False)[0][:, : b.shape[1]]
                b.copy_(u * scale * b.shape[0] ** 0.5)
            else:
                b.copy_(torch.randn(b.shape, generator=generator) * scale)
    peft_model.save_pretrained(path)
    return path


def mergekit_safety(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``mergekit-safety`` command in a fresh interpreter, offline."""
    command = [Path(sys.executable).with_name("mergekit-safety"), *args]
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def applied(aligned: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """``PeftModel.from_pretrained(aligned, adapter).merge_and_unload()``'s state dict."""
    from peft import PeftModel

    model = LlamaForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def full_merge(out: Path) -> dict[str, torch.Tensor]:
    """The state dict ``mergekit-yaml`` wrote to ``out``."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def adapter_sweep_rows(tmp_path: Path, aligned: str, adapter: Path, evaluator) -> str:
    """`sweep --adapter` of safe_linear over weight 0, 0.5, 1 on ``aligned+adapter``: rows, YAML."""
    import yaml
    from helpers import write_recipe
    from mergekit.options import MergeOptions

    from mergekit_safety.tuning.grid import plan_sweep
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.runners import OnDisk, SerialRunner

    recipe = write_recipe(
        tmp_path / "recipe.yml",
        {
            "merge_method": "safe_linear",
            "base_model": aligned,
            "models": [{"model": f"{aligned}+{adapter}", "parameters": {"weight": 0.5}}],
            "dtype": "float32",
        },
    )
    plan = plan_sweep(recipe, "weight", [0.0, 0.5, 1.0])
    runner = SerialRunner(MergeOptions(), OnDisk(adapter=True))
    result = run_sweep(plan, evaluator, runner, progress=False)
    return yaml.safe_dump(result.rows())


def adapter_pair(family: dict, root: Path, seeds: tuple[int, int], ranks: tuple[int, int]):
    """Two adapters of the given ranks on the family's aligned model, factors at scale 0.5."""
    aligned, unaligned = family["aligned"], family["unaligned"]
    return [
        make_adapter(aligned, unaligned, root / name, seed, rank=rank, scale=0.5)
        for name, seed, rank in zip(("one", "two"), seeds, ranks, strict=True)
    ]
