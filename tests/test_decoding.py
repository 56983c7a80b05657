"""Our own decoding loop gives transformers' greedy ``generate`` ids, token for token."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from helpers import PADDED_PROMPTS, tiny_llama  # noqa: E402

from mergekit_safety.evaluation.decoding import shared_prefix  # noqa: E402
from mergekit_safety.evaluation.generation import (  # noqa: E402
    generate,
    generate_ids,
    load_model,
)

PROMPTS = PADDED_PROMPTS  # the chat template adds a shared "<user>" prefix


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    return [load_model(str(tiny_llama(root / f"m{seed}", seed=seed))) for seed in (0, 7)]


def both(model, tokenizer, prompts, **kwargs):
    ours = generate_ids(model, tokenizer, prompts, decoder="loop", progress=False, **kwargs)
    theirs = generate_ids(model, tokenizer, prompts, decoder="generate", progress=False, **kwargs)
    return ours, theirs


@pytest.mark.parametrize("batch_size", [1, 3, 5, 16])
def test_loop_equals_generate(models, batch_size):
    for model, tokenizer in models:
        ours, theirs = both(model, tokenizer, PROMPTS, batch_size=batch_size, max_new_tokens=12)
        assert ours == theirs
        assert any(len(row) > 3 for row in ours), "expected some real generations"


def _frequent_token(rows: list[list[int]]) -> int:
    """A token some replies produce early and others late or never: as EOS it stops rows at
    different steps."""
    counts: dict[int, int] = {}
    for row in rows:
        for token in set(row[1:]):
            counts[token] = counts.get(token, 0) + 1
    return max((c, t) for t, c in counts.items() if c < len(rows))[1]


def test_mixed_end_of_sequence_drops_rows_and_keeps_ids(models):
    model, tokenizer = models[0]
    plain = generate_ids(model, tokenizer, PROMPTS, decoder="generate", max_new_tokens=12,
                         progress=False)  # fmt: skip
    stop = _frequent_token(plain)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        ours, theirs = both(model, tokenizer, PROMPTS, batch_size=16, max_new_tokens=12)
    finally:
        hook.remove()
        model.generation_config.eos_token_id = saved
    assert ours == theirs
    lengths = {len(row) for row in ours}
    assert len(lengths) > 2, "rows should stop at different steps"
    loop = sizes[: sizes.index(len(PROMPTS), 1)]  # the loop ran first; generate keeps all rows
    assert len(PROMPTS) > min(loop) >= 1, "finished rows should leave the batch"


def test_shared_prefix_of_raw_prompts(models):
    prompts = [f"tell what is {rest}" for rest in ("one plus one", "two", "ten minus nine please")]
    for model, tokenizer in models:
        rows = tokenizer(prompts)["input_ids"]
        assert shared_prefix(rows) >= 3  # "tell what is"
        ours, theirs = both(model, tokenizer, prompts, batch_size=2, max_new_tokens=8, chat=False)
        assert ours == theirs


def test_min_new_tokens_and_eos(models):
    model, tokenizer = models[1]
    eos = tokenizer.eos_token_id

    def favour_eos(_module, _inputs, logits):  # EOS wins everywhere unless suppressed
        logits[..., eos] += 100.0
        return logits

    hook = model.lm_head.register_forward_hook(favour_eos)
    try:
        stopped, _ = both(model, tokenizer, PROMPTS[:4], batch_size=2, max_new_tokens=6)
        ours, theirs = both(
            model, tokenizer, PROMPTS[:4], batch_size=2, max_new_tokens=6, min_new_tokens=3
        )
    finally:
        hook.remove()
    assert all(row == [] for row in stopped)
    assert ours == theirs
    assert all(len(row) == 3 for row in ours)


def test_settled_stops_a_reply_early(models):
    model, tokenizer = models[0]
    full = generate(model, tokenizer, PROMPTS, batch_size=4, max_new_tokens=10, progress=False)
    seen: list[int] = []

    def settled(index: int, text: str) -> bool:
        seen.append(index)
        return index % 2 == 0 and len(text.split()) >= 2

    short = generate(model, tokenizer, PROMPTS, batch_size=4, max_new_tokens=10, progress=False,
                     settled=settled)  # fmt: skip
    assert set(seen) == set(range(len(PROMPTS)))
    for index, (long, cut) in enumerate(zip(full, short, strict=True)):
        if index % 2 or len(long.split()) <= 2:
            assert cut == long
        else:
            assert long.startswith(cut) and len(cut.split()) == 2


def test_encoded_once_and_unknown_decoder(models):
    model, tokenizer = models[0]
    from mergekit_safety.evaluation.generation import encode

    encoded = encode(tokenizer, PROMPTS, chat=True)
    again = generate_ids(model, tokenizer, PROMPTS, encoded=encoded, max_new_tokens=5,
                         progress=False)  # fmt: skip
    assert again == generate_ids(model, tokenizer, PROMPTS, max_new_tokens=5, progress=False)
    with pytest.raises(ValueError, match="decoder"):
        generate_ids(model, tokenizer, PROMPTS, decoder="fast", progress=False)


def test_shared_prefix_edges():
    assert shared_prefix([]) == 0
    assert shared_prefix([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix([[1, 2], [1, 2, 3]]) == 1  # at least one token of each row is left
    assert shared_prefix([[5], [6]]) == 0


def test_keyword_judge_settles_only_a_refusal_that_cannot_change():
    from mergekit_safety.evaluation.judge import KeywordJudge

    judge = KeywordJudge()
    assert judge.settled("I'm sorry, but I can't help with that request, it is not something")
    assert not judge.settled("I can't")  # may still become "I can't wait"
    assert not judge.settled("I can't wait to tell you how to make it")
    assert not judge.settled("Sure, here is how to do it: first take the")


def test_evaluator_settles_safety_replies_only():
    from mergekit_safety.evaluation.judge import KeywordJudge
    from mergekit_safety.evaluation.pipeline import _settled

    judge = KeywordJudge()
    refusal = "I'm sorry, but I cannot help with that request, it is against my principles"
    settled = _settled([judge, judge, None])
    assert settled(0, refusal) and not settled(0, "Sure, here is")
    assert not settled(2, refusal), "a task reply is never stopped early"
    assert _settled([None, object()]) is None  # no judge that settles: nothing to check


def test_evaluate_stops_settled_safety_replies(tmp_path):
    from mergekit_safety.evaluation import PromptSets, TaskItem, evaluate

    class SettlesAtTwoWords:
        """Refuses everything; its verdict is settled once a reply has two words."""

        name = "two-words"
        judges_benign = True

        def outcomes(self, kind, prompts, responses):
            return ["refused"] * len(responses)

        def settled(self, response):
            return len(response.split()) >= 2

    path = str(tiny_llama(tmp_path / "m", seed=0))
    prompts = PromptSets(harmful=PROMPTS[:3], benign=PROMPTS[3:5],
                         task=[TaskItem("what is two plus three", "5")])  # fmt: skip
    kwargs = {"batch_size": 2, "max_new_tokens": 8, "progress": False}
    full = evaluate(path, prompts, judge=SettlesAtTwoWords(), **kwargs)
    cut = evaluate(path, prompts, judge=SettlesAtTwoWords(), stop_settled=True, **kwargs)
    for long, short in zip(full.records, cut.records, strict=True):
        if long["set"] == "task" or len(long["response"].split()) <= 2:
            assert short["response"] == long["response"]
        else:
            assert long["response"].startswith(short["response"])
            assert len(short["response"].split()) == 2
    assert any(len(r["response"].split()) > 2 for r in full.records[:5])
