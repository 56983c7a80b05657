"""A word-level tokenizer with a chat template, saved the way transformers loads any chat model.

Word level keeps the vocabulary at ~150 entries (so the embedding matrices stay small next to
the transformer blocks) and makes every number 0..20 a single token, so answers are easy to
score. Chat markers are *special* tokens: ``<user>`` is one token, never split into ``<``,
``user``, ``>``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import mergekit_safety.demo.data as data
import mergekit_safety.demo.phrases as phrases

#: Renders ``<s> <user> prompt <assistant> response </s>``; other roles (system) are skipped.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' <user> ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' <assistant> ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <assistant>' }}{% endif %}"
)


def vocabulary() -> list[str]:
    """Special tokens, then the numbers 0..MAX_NUMBER in order, then every other word sorted.

    Derived from every string the data can produce, so a change to the phrase lists can never
    leave a word out (an ``<unk>`` in training would be a silent bug).
    """
    numbers = [str(n) for n in range(phrases.MAX_NUMBER + 1)]
    words = {word for text in data.all_text() for word in text.split()}
    rest = sorted(words - set(numbers) - set(phrases.SPECIAL_TOKENS))
    return list(phrases.SPECIAL_TOKENS) + numbers + rest


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The demo tokenizer: lower-cases, splits words from punctuation, knows the chat template."""
    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=phrases.UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(list(phrases.SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=phrases.PAD,
        unk_token=phrases.UNK,
        bos_token=phrases.BOS,
        eos_token=phrases.EOS,
        additional_special_tokens=[phrases.USER, phrases.ASSISTANT],
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=128,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encode_example(
    tokenizer: PreTrainedTokenizerFast, example: data.Example
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and labels that train on the response (and eos) only."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": example.prompt}], add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
        ],
        tokenize=False,
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"chat template does not extend the prompt: {example!r}")
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    return ids, labels
