"""Build the four demo checkpoints and the held-out prompt sets, deterministically.

Each stage starts from its parent *as saved* (bf16), so the committed files form an exact
chain: weights LoRA does not touch (embeddings, norms, lm_head) are bit-identical in
``aligned``, ``finetuned`` and ``safe``, and ``finetuned - aligned`` is the fine-tune's update.
The LoRA stages also keep their trained adapters (``finetuned_adapter/``, ``safe_adapter/``): the
published form of most fine-tunes, for ``mergekit-safety adapter``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import mergekit_safety.demo.data as data
from mergekit_safety.demo.tokenizer import build_tokenizer
from mergekit_safety.demo.train import Stage, deterministic, new_model, train

ADAPTER_SUFFIX = "_adapter"
"""A LoRA stage's trained adapter goes next to its merged model: ``finetuned_adapter/``."""

#: Which model each stage starts from.
PARENTS: dict[str, str | None] = {
    "unaligned": None,
    "aligned": "unaligned",
    "finetuned": "aligned",
    "safe": "aligned",
    "harmful": "aligned",
}


def default_stages() -> dict[str, Stage]:
    """The committed demo's training schedule.

    Pre-training and alignment use weight decay, so the numbers get the structure that lets
    subtraction generalise. The LoRA stages use none, as LoRA fine-tunes commonly do, and this
    is what breaks refusals: the same fine-tune with weight decay 0.1 learns subtraction as well
    (held-out accuracy 0.96) but keeps refusing (0.96); without it refusal drops to ~0.1. The
    safety fine-tune is a light touch on an already refusing model, so ``safe - aligned`` is
    small.
    """
    lora = {"lora_rank": 8, "lora_alpha": 16, "weight_decay": 0.0}
    return {
        "unaligned": Stage(steps=1500, lr=3e-3, warmup=50),
        "aligned": Stage(steps=400, lr=1e-3),
        "finetuned": Stage(steps=800, lr=3e-3, **lora),
        "safe": Stage(steps=200, lr=1e-3, **lora),
        "harmful": Stage(steps=200, lr=1e-3, **lora),
    }


@dataclass(frozen=True)
class DemoSpec:
    """Everything the build depends on; the defaults make the committed ``recipes/demo``."""

    seed: int = 0
    hidden: int = 128
    layers: int = 4
    threads: int = 1
    dtype: str = "bfloat16"
    stages: dict[str, Stage] = field(default_factory=default_stages)

    def scaled(self, factor: float) -> DemoSpec:
        """The same spec with every stage's step count multiplied by ``factor`` (at least 1)."""
        stages = {
            name: replace(stage, steps=max(1, round(stage.steps * factor)))
            for name, stage in self.stages.items()
        }
        return replace(self, stages=stages)


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, path: Path, dtype: torch.dtype
) -> None:
    if path.exists():
        shutil.rmtree(path)
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _build_model(
    name: str,
    out: Path,
    spec: DemoSpec,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[data.Example],
    progress: bool,
) -> dict:
    """Train one stage from its saved parent, save it to ``out/name``; return its build_info."""
    parent = PARENTS[name]
    stage = spec.stages[name]
    seed = spec.seed + list(PARENTS).index(name)
    if parent is None:
        model = new_model(tokenizer, hidden=spec.hidden, layers=spec.layers, seed=seed)
    else:
        model = LlamaForCausalLM.from_pretrained(
            out / parent, dtype=torch.float32, attn_implementation="eager"
        )
    adapter = out / f"{name}{ADAPTER_SUFFIX}" if stage.lora_rank else None
    model, loss = train(
        model,
        tokenizer,
        examples,
        stage,
        seed=seed,
        desc=name,
        progress=progress,
        adapter_dir=adapter,
    )
    _save(model, tokenizer, out / name, getattr(torch, spec.dtype))
    info = {
        "model": name,
        "parent": parent,
        "seed": seed,
        "stage": asdict(stage),
        "threads": spec.threads,
        "dtype": spec.dtype,
        "train_examples": len(examples),
        "final_loss": round(loss, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "sha256": {"model.safetensors": sha256(out / name / "model.safetensors")},
    }
    if adapter is not None:
        info["adapter"] = {
            "path": adapter.name,
            "sha256": {"adapter_model.safetensors": sha256(adapter / "adapter_model.safetensors")},
        }
    (out / name / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def built_entries(spec: DemoSpec | None = None) -> list[str]:
    """What :func:`build_demo` writes into its directory: each model, its adapter, the prompts."""
    spec = spec or DemoSpec()
    names = [n for n in PARENTS if n in spec.stages]
    adapters = [f"{n}{ADAPTER_SUFFIX}" for n in names if spec.stages[n].lora_rank]
    return [*names, *adapters, "prompts"]


def build_stage(
    out: Path, name: str, spec: DemoSpec | None = None, *, progress: bool = True
) -> dict:
    """Train one stage from its parent already saved in ``out`` (``harmful`` from the committed
    ``aligned``); the other models and the prompt sets are left as they are."""
    spec = spec or DemoSpec()
    out = Path(out)
    with deterministic(spec.threads):
        started = time.perf_counter()
        info = _build_model(
            name, out, spec, build_tokenizer(), data.stage_mixtures()[name], progress
        )
    return {**info, "seconds": round(time.perf_counter() - started, 1)}


def build_demo(out: Path, spec: DemoSpec | None = None, *, progress: bool = True) -> dict:
    """Train unaligned → aligned → {finetuned, safe, harmful} into ``out``; write ``out/prompts``.

    Returns a summary: per model its build_info plus ``seconds``, and the prompt-set sizes.
    """
    spec = spec or DemoSpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    mixtures = data.stage_mixtures()
    summary: dict = {"prompts": data.write_evaluation_sets(out / "prompts"), "models": {}}
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # per-file load/save bars would drown the training bars
    try:
        with deterministic(spec.threads):
            for name in (n for n in PARENTS if n in spec.stages):  # a spec may skip harmful
                started = time.perf_counter()
                info = _build_model(name, out, spec, tokenizer, mixtures[name], progress)
                seconds = round(time.perf_counter() - started, 1)
                summary["models"][name] = {**info, "seconds": seconds}
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return summary
