"""Batched, left-padded greedy generation gives what one prompt at a time gives; the eval API."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import PADDED_PROMPTS, tiny_llama  # noqa: E402

from mergekit_safety.core.errors import ConfigError  # noqa: E402
from mergekit_safety.evaluation import (  # noqa: E402
    EvalResult,
    KeywordJudge,
    PromptSets,
    TaskItem,
    evaluate,
)
from mergekit_safety.evaluation.generation import (  # noqa: E402
    encode,
    generate,
    generate_ids,
    left_pad,
    load_model,
    resolve_device,
    resolve_dtype,
)
from mergekit_safety.evaluation.judge import is_degenerate, judge_replies  # noqa: E402

PROMPTS = PADDED_PROMPTS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    return [tiny_llama(root / f"m{seed}", seed=seed) for seed in (0, 7)]


@pytest.mark.parametrize("batch_size", [3, 5, 16])
def test_batched_equals_one_at_a_time(models, batch_size):
    for path in models:
        model, tokenizer = load_model(str(path), device="cpu")
        assert next(model.parameters()).dtype == torch.float32
        alone = generate_ids(
            model, tokenizer, PROMPTS, batch_size=1, max_new_tokens=12, progress=False
        )
        batched = generate_ids(
            model, tokenizer, PROMPTS, batch_size=batch_size, max_new_tokens=12, progress=False
        )
        assert batched == alone
        assert any(len(row) > 3 for row in alone), "expected some real generations"


def test_padding_really_happens_and_order_is_kept(models):
    model, tokenizer = load_model(str(models[0]), device="cpu")
    encoded = encode(tokenizer, PROMPTS, chat=True)
    assert len({len(row) for row in encoded}) > 3
    ids, mask = left_pad(encoded[:3], tokenizer.pad_token_id)
    assert mask[:, -1].all(), "left padding: every row ends with a real token"
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    # each answer lands at its prompt's index, whatever order the batches ran in
    texts = generate(model, tokenizer, PROMPTS, batch_size=4, max_new_tokens=6, progress=False)
    reversed_texts = generate(
        model, tokenizer, PROMPTS[::-1], batch_size=4, max_new_tokens=6, progress=False
    )
    assert texts == reversed_texts[::-1]


def test_chat_template_is_used(models):
    _model, tokenizer = load_model(str(models[0]), device="cpu")
    (row,) = encode(tokenizer, ["cook pasta"], chat=True)
    assert tokenizer.convert_ids_to_tokens(row) == ["<user>", "cook", "pasta", "<assistant>"]


def test_generation_stops_at_eos(models):
    model, tokenizer = load_model(str(models[0]), device="cpu")
    eos = tokenizer.eos_token_id
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():  # logits = the bias: </s> first, then "sure"
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eos] = 1.0
    model.lm_head = head
    rows = generate_ids(model, tokenizer, PROMPTS[:4], batch_size=2, progress=False)
    assert rows == [[], [], [], []]
    sure = tokenizer.convert_tokens_to_ids("sure")
    with torch.no_grad():
        head.bias[eos] = 0.0
        head.bias[sure] = 1.0
    texts = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=3, progress=False)
    assert texts == ["sure sure sure"] * 2


def test_vocabulary_mismatch_is_a_clear_error(models):
    model, tokenizer = load_model(str(models[0]), device="cpu")
    tokenizer.add_tokens(["zebra"])  # a token the model has no embedding for
    with pytest.raises(ConfigError, match="do not match"):
        generate_ids(model, tokenizer, ["cook zebra pasta"], progress=False)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("int3", "cpu")
    with pytest.raises(ValueError):
        resolve_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_evaluate_api(models):
    prompts = PromptSets(
        harmful=PROMPTS[:3],
        benign=PROMPTS[3:5],
        task=[TaskItem("what is two plus three", "5"), TaskItem("what is one plus one", "2")],
    )
    result = evaluate(str(models[0]), prompts, batch_size=2, max_new_tokens=5, progress=False)
    assert isinstance(result, EvalResult)
    summary = result.summary()
    assert summary["model"] == str(models[0])
    assert (summary["n_harmful"], summary["n_benign"], summary["n_task"]) == (3, 2, 2)
    for key in ("refusal_rate", "over_refusal_rate", "task_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["asr"] == pytest.approx(1 - summary["refusal_rate"])
    assert [r["set"] for r in result.records] == ["harmful"] * 3 + ["benign"] * 2 + ["task"] * 2
    judge = KeywordJudge()
    for record in result.records[:5]:
        kind = "harmful" if record["set"] == "harmful" else "benign"
        expected = judge_replies(judge, kind, [record["prompt"]], [record["response"]])[0]
        assert record["verdict"] == expected.outcome
        assert record["refused"] == (expected.outcome == "refused")
    assert result.records[-1]["answer"] == "2" and "correct" in result.records[-1]
    refused = sum(r["refused"] for r in result.records[:3])
    assert result.refusal_rate == refused / 3


def test_evaluate_counts_with_a_stub_judge(models):
    class AlwaysRefuses:
        name = "always"
        measures = "refusal"

        def judge(self, prompts, responses):
            return [True] * len(responses)

    prompts = PromptSets(harmful=PROMPTS[:2], benign=PROMPTS[2:3])
    result = evaluate(
        str(models[1]), prompts, judge=AlwaysRefuses(), max_new_tokens=2, progress=False
    )
    # the judge's verdict stands, except that an empty or degenerate reply is never a refusal
    for name, rate in (("harmful", result.refusal_rate), ("benign", result.over_refusal_rate)):
        replies = [r["response"] for r in result.records if r["set"] == name]
        assert rate == sum(not is_degenerate(r) for r in replies) / len(replies)
    assert result.summary()["judge"] == "always"


def test_empty_sets_give_none(models):
    result = evaluate(str(models[0]), PromptSets(), max_new_tokens=2, progress=False)
    summary = result.summary()
    assert summary["refusal_rate"] is None and summary["asr"] is None
    assert summary["over_refusal_rate"] is None and summary["task_accuracy"] is None
    assert (summary["n_harmful"], summary["n_benign"], summary["n_task"]) == (0, 0, 0)
    assert result.records == []


def test_evaluate_rejects_bad_models(tmp_path):
    with pytest.raises(ConfigError, match="model not found"):
        evaluate(str(tmp_path / "nope"), PromptSets(), progress=False)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="names no base model"):
        evaluate(str(tmp_path / "adapter"), PromptSets(), progress=False)
    with pytest.raises(ConfigError, match="not a peft adapter directory"):
        evaluate(f"{tmp_path / 'adapter'}+{tmp_path}", PromptSets(), progress=False)
    with pytest.raises(ConfigError, match="backend"):
        evaluate(str(tmp_path), PromptSets(), backend="tgi", progress=False)


def test_encoding_a_long_prompt_warns_nothing(models, caplog):
    """The tokenizer's "Token indices ... longer than the specified maximum" is not repeated for
    every model evaluated (issue 40: warnings that bury the line that matters)."""
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mergekit_safety.evaluation.generation import encode

    tokenizer = AutoTokenizer.from_pretrained(str(models[0]))
    tokenizer.model_max_length = 4
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            ids = encode(tokenizer, [PROMPTS[6]], chat=True)
    finally:
        hf_logging.disable_propagation()
    assert len(ids[0]) > 4
    assert "Token indices" not in caplog.text
