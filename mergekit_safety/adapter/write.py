"""Write the merged factors as a standard peft LoRA adapter, all at once or not at all.

Encoding: each module's scale is folded into ``lora_B`` and its ``lora_alpha`` set equal to its
rank (no rsLoRA), so peft's scale ``alpha / r`` is 1 and ``W + B′ A′`` is the merge exactly.
``r`` and ``lora_alpha`` are the most common rank; modules of another rank (a safemerge module
carries ``r_ft + r_safe``, a kept one ``r_ft``) get ``rank_pattern`` and ``alpha_pattern``
entries. Factors are stored in fp32 (fp64 if computed so): the merge is exact up to the rounding
of ``W + B′A′`` in the base model's dtype.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mergekit_safety.adapter.merge import MergedModule
from mergekit_safety.adapter.source import PREFIX
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.outputs import check_writable, staged

RECIPE_FILE = "mergekit_config.yml"


def check_out(out: str | os.PathLike) -> Path:
    """OUT must not exist, or be an empty directory: nothing is overwritten."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; give a new directory")
    check_writable(out, "OUT")
    return out


def write_adapter(
    out: str | os.PathLike,
    modules: Sequence[MergedModule],
    *,
    base_model: str,
    task_type: str | None,
    recipe_text: str,
    card: str,
) -> Path:
    """Write adapter_config.json, adapter_model.safetensors, README.md and the recipe to ``out``.

    Everything goes to a temporary sibling directory first, which is renamed into place: a
    failure leaves ``out`` as it was.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = check_out(out)
    if not modules:
        raise ConfigError("no module to write: the fine-tuned adapters adapt nothing")
    ranks = {m.module: m.a.shape[0] for m in modules}
    common = Counter(ranks.values()).most_common(1)[0][0]
    others = {module: rank for module, rank in ranks.items() if rank != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,
        target_modules=sorted(ranks),
        rank_pattern=others,
        alpha_pattern=dict(others),
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
        task_type=task_type,
        inference_mode=True,
    )
    config.base_model_name_or_path = base_model
    tensors = {}
    for m in modules:
        tensors[f"{PREFIX}{m.module}.lora_A.weight"] = m.a
        tensors[f"{PREFIX}{m.module}.lora_B.weight"] = m.b
    with staged(out) as staging:
        config.save_pretrained(staging)
        _sort_targets(staging / "adapter_config.json")
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        (staging / RECIPE_FILE).write_text(recipe_text, encoding="utf-8")
        (staging / "README.md").write_text(card, encoding="utf-8")
        _default_modes(staging)
    return out


def _sort_targets(path: Path) -> None:
    """peft writes ``target_modules`` from a set: sort it, so reruns write the same bytes."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _default_modes(directory: Path) -> None:
    """The modes a plain open would give (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def adapter_card(
    *, method: str, base_model: str, adapters: Sequence[str], recipe_text: str, summary: str
) -> str:
    """A peft model card: Hub metadata (``library_name: peft``, ``base_model``) and the recipe.

    Written by :func:`mergekit_safety.core.hub_card.render_card`, the merged models' card writer.
    """
    from huggingface_hub import ModelCardData

    from mergekit_safety.core.hub_card import render_card

    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        tags=["lora", "peft", "safety", "mergekit-safety", method],
    )
    sources = "\n".join(f"- `{a}`" for a in adapters)
    return render_card(
        data,
        f"# Safety-merged LoRA adapter ({method})\n\n"
        f"A LoRA adapter for `{base_model}`, made by `mergekit-safety adapter` from:\n\n"
        f"{sources}\n\n{summary}\n\n"
        "Applying it (`PeftModel.from_pretrained(base, this_dir)`, merged or not) gives exactly "
        f"the `{method}` merge `mergekit-yaml` makes from the same recipe, up to the base "
        "model's dtype rounding.\n\n"
        f"## Merge Details\n\n### Recipe\n\n```yaml\n{recipe_text.rstrip()}\n```\n",
    )
