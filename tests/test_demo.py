"""The demo builder: data and held-out splits, a tiny build, and the committed recipes/demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from helpers import REPO, tiny_spec  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mergekit_safety.cli import main  # noqa: E402
from mergekit_safety.demo import data, phrases  # noqa: E402
from mergekit_safety.demo.build import build_demo, sha256  # noqa: E402
from mergekit_safety.demo.tokenizer import build_tokenizer, encode_example  # noqa: E402

COMMITTED = REPO / "recipes" / "demo"
MODELS = ("unaligned", "aligned", "finetuned", "safe")
CHAT = [{"role": "user", "content": "How do I kill a Python process?"}]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, tiny_spec(), progress=False)
    return out


# --- data ---------------------------------------------------------------------------------


def test_data_is_deterministic():
    assert data.stage_mixtures() == data.stage_mixtures()
    assert data.evaluation_sets() == data.evaluation_sets()


def test_held_out_prompts_never_appear_in_training():
    trained = {
        example.prompt for examples in data.stage_mixtures().values() for example in examples
    }
    sets = data.evaluation_sets()
    for name, rows in sets.items():
        assert 50 <= len(rows) <= 200, name
        assert not {row["prompt"] for row in rows} & trained, name
    # Not only the prompts: the held-out acts and number pairs are absent from every stage.
    held_acts = [act for _, act in data.acts(phrases.HARMFUL_GRIDS, held_out=True)]
    held_acts += [act for _, act in data.acts(phrases.BENIGN_GRIDS, held_out=True)]
    for act in held_acts:
        assert not any(f" {act} " in f" {prompt} " for prompt in trained), act
    for a, b in data.subtraction_pairs(held_out=True):
        for template in phrases.SUBTRACTION_TEMPLATES:
            assert template.format(a=a, b=b) not in trained


def test_held_out_pairs_recombine_known_words():
    """Each held-out act's verb and object occur in training, with other partners."""
    for grids in (phrases.HARMFUL_GRIDS, phrases.BENIGN_GRIDS):
        trained = " ".join(act for _, act in data.acts(grids, held_out=False))
        for verbs, objects in grids.values():
            for word in verbs + objects:
                assert word in trained


def test_task_answers_are_digits_and_correct():
    for row in data.evaluation_sets()["task"]:
        numbers = [int(token) for token in row["prompt"].split() if token.isdigit()]
        a, b = numbers if row["prompt"].startswith(("what", "compute")) else numbers[::-1]
        assert row["answer"] == str(a - b)


# --- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_covers_all_text_and_keeps_markers_whole():
    tokenizer = build_tokenizer()
    for examples in data.stage_mixtures().values():
        for example in examples[::7]:
            ids, labels = encode_example(tokenizer, example)
            assert tokenizer.unk_token_id not in ids
            assert len(ids) == len(labels)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)
    tokens = tokenizer.convert_ids_to_tokens(ids["input_ids"])
    assert tokens[:2] == ["<s>", "<user>"] and tokens[-1] == "<assistant>"
    assert "<unk>" not in tokens  # lower-cased, "?" split off


def test_every_word_is_trained():
    """No word occurs only in the held-out sets: its embedding would be untrained."""
    tokenizer = build_tokenizer()
    trained = {
        word
        for examples in data.stage_mixtures().values()
        for example in examples
        for word in f"{example.prompt} {example.response}".split()
    }
    words = set(tokenizer.get_vocab()) - set(phrases.SPECIAL_TOKENS)
    assert words == trained
    assert {str(n) for n in range(phrases.MAX_NUMBER + 1)} <= trained


# --- a tiny build ---------------------------------------------------------------------------


def test_tiny_build_loads_with_chat_template(tiny_build):
    configs = []
    for name in MODELS:
        path = tiny_build / name
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        assert text.startswith("<s> <user> ") and text.endswith("<assistant>")
        assert model.config.vocab_size == len(tokenizer)
        info = json.loads((path / "build_info.json").read_text())
        assert info["sha256"]["model.safetensors"] == sha256(path / "model.safetensors")
        configs.append((path / "config.json").read_text())
    assert all(config == configs[0] for config in configs)
    for name in ("harmful", "benign", "task"):
        assert (tiny_build / "prompts" / f"{name}.jsonl").stat().st_size > 0


def test_tiny_build_lora_stages_touch_projections_only(tiny_build):
    aligned = load_file(tiny_build / "aligned" / "model.safetensors")
    for name in ("finetuned", "safe"):
        tuned = load_file(tiny_build / name / "model.safetensors")
        assert tuned.keys() == aligned.keys()
        changed = [key for key in aligned if not torch.equal(tuned[key], aligned[key])]
        # LoRA adapts the projections only: embeddings, norms and lm_head stay bit-identical.
        assert changed and all(key.endswith("_proj.weight") for key in changed), name


def test_tiny_build_is_deterministic(tiny_build, tmp_path):
    build_demo(tmp_path, tiny_spec(), progress=False)
    for name in MODELS:
        assert sha256(tmp_path / name / "model.safetensors") == sha256(
            tiny_build / name / "model.safetensors"
        )


def test_cli_build_smoke(tmp_path):
    """The CLI with its default model size and one step per stage."""
    result = CliRunner().invoke(
        main, ["demo", "build", "--out", str(tmp_path), "--steps-scale", "0.0001", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "Built" in result.output
    info = json.loads((tmp_path / "finetuned" / "build_info.json").read_text())
    assert info["stage"]["steps"] == 1 and info["stage"]["lora_rank"] == 8


# --- the committed demo ---------------------------------------------------------------------


def test_committed_demo_matches_build_info_and_shares_architecture():
    first_config = None
    tokenizer_files = None
    for name in MODELS:
        path = COMMITTED / name
        info = json.loads((path / "build_info.json").read_text())
        assert info["sha256"]["model.safetensors"] == sha256(path / "model.safetensors"), name
        config = json.loads((path / "config.json").read_text())
        first_config = first_config or config
        assert config == first_config, name
        files = {
            file.name: file.read_bytes()
            for file in sorted(path.iterdir())
            if file.name.startswith(("tokenizer", "chat_template"))
        }
        tokenizer_files = tokenizer_files or files
        assert files == tokenizer_files, name
        model = AutoModelForCausalLM.from_pretrained(path)
        assert 0.5e6 < model.num_parameters() < 1e6
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)


def test_committed_prompts_are_the_generated_sets():
    for name, rows in data.evaluation_sets().items():
        lines = (COMMITTED / "prompts" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_committed_fine_tunes_are_merged_lora_updates():
    """finetuned/safe − aligned: rank-8 on the projections (up to bf16 rounding), 0 elsewhere."""
    aligned = load_file(COMMITTED / "aligned" / "model.safetensors")
    for name in ("finetuned", "safe"):
        tuned = load_file(COMMITTED / name / "model.safetensors")
        for key, weight in aligned.items():
            if not key.endswith("_proj.weight"):
                assert torch.equal(tuned[key], weight), (name, key)
                continue
            singular = torch.linalg.svdvals(tuned[key].float() - weight.float())
            assert (singular[:8] ** 2).sum() / (singular**2).sum() > 0.99, (name, key)
