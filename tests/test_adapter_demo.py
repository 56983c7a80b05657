"""The demo's LoRA adapters: checked like the models, and the adapter path on them end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from adapter_helpers import full_merge, mergekit_safety  # noqa: E402
from helpers import REPO, mergekit_yaml, tiny_spec  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from mergekit_safety.demo.build import build_demo, sha256  # noqa: E402
from mergekit_safety.demo.extract import extract_adapter  # noqa: E402

DEMO = REPO / "recipes" / "demo"


def merged_as_trained(aligned: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The adapter merged the way the demo build merges it: in fp32, then stored as bf16."""
    base = LlamaForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return merged.to(torch.bfloat16).state_dict()


@pytest.mark.parametrize("name", ["finetuned", "safe"])
def test_committed_adapter_reproduces_its_model(name):
    info = json.loads((DEMO / name / "build_info.json").read_text())["adapter"]
    adapter = DEMO / info["path"]
    assert (
        sha256(adapter / "adapter_model.safetensors") == info["sha256"]["adapter_model.safetensors"]
    )
    got = merged_as_trained(DEMO / "aligned", adapter)
    want = load_file(DEMO / name / "model.safetensors")
    aligned = load_file(DEMO / "aligned" / "model.safetensors")
    for key, expected in want.items():
        if torch.equal(expected, aligned[key]):  # embeddings, norms: untouched by LoRA
            assert torch.equal(got[key], expected), key
            continue
        # bf16 rounding of the matrix: under one ulp (ε = 2⁻⁷) of its largest aligned weight
        bound = 2**-7 * float(aligned[key].float().abs().max())
        assert float((got[key].float() - expected.float()).abs().max()) < bound, key


def test_committed_adapters_are_what_extract_gives(tmp_path):
    for name in ("finetuned", "safe"):
        out = extract_adapter(DEMO / "aligned", DEMO / name, tmp_path / name, rank=8)
        got = load_file(out / "adapter_model.safetensors")
        want = load_file(DEMO / f"{name}_adapter" / "adapter_model.safetensors")
        assert got.keys() == want.keys()
        for key in want:  # SVD signs and last bits may vary by LAPACK build: compare products
            if key.endswith("lora_B.weight"):
                a_key = key.replace("lora_B", "lora_A")
                torch.testing.assert_close(got[key] @ got[a_key], want[key] @ want[a_key])


def test_build_saves_trained_adapters_bit_for_bit(tmp_path):
    """A (tiny) build keeps each LoRA stage's adapter; merged as trained, it is the model."""
    summary = build_demo(tmp_path, tiny_spec(), progress=False)
    for name in ("finetuned", "safe"):
        info = summary["models"][name]["adapter"]
        adapter = tmp_path / info["path"]
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "../aligned" and config["r"] == 8
        assert (
            sha256(adapter / "adapter_model.safetensors")
            == info["sha256"]["adapter_model.safetensors"]
        )
        got = merged_as_trained(tmp_path / "aligned", adapter)
        want = load_file(tmp_path / name / "model.safetensors")
        for key, expected in want.items():
            assert torch.equal(got[key], expected), key
    assert "adapter" not in summary["models"]["aligned"]


def test_demo_adapter_recipe_matches_mergekit_yaml(tmp_path):
    """README's path on the committed demo: adapter in, adapter out, equal to the full merge."""
    recipe = REPO / "recipes" / "adapter_safemerge.yml"
    out, full = tmp_path / "safe_adapter", tmp_path / "full"
    done = mergekit_safety("adapter", recipe, out, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " of 28 adapted modules merged" in done.stdout
    made = mergekit_yaml(recipe, full, "--lora-merge-cache", tmp_path / "cache", cwd=REPO)
    assert made.returncode == 0, made.stderr[-2000:]
    base = LlamaForCausalLM.from_pretrained(DEMO / "aligned", dtype=torch.bfloat16)
    got = PeftModel.from_pretrained(base, out).merge_and_unload().state_dict()
    aligned = load_file(DEMO / "aligned" / "model.safetensors")
    for key, expected in full_merge(full).items():
        bound = 2 * 2**-7 * float(aligned[key].float().abs().max())
        assert float((got[key].float() - expected.float()).abs().max()) <= bound, key
    shutil.rmtree(tmp_path / "cache")
