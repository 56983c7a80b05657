"""Training mixtures and held-out evaluation sets, generated from the phrase lists in code.

Nothing is random here: splits follow fixed rules, so the data (and the committed prompt sets)
do not depend on the training seed. Held out from *every* training stage:

- one verb/object pair per verb of each grid (a diagonal), in all request templates: the harmful
  and benign-look-alike evaluation sets are new combinations of words the model has seen;
- every fifth subtraction pair (a, b): the task evaluation set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mergekit_safety.demo.phrases as phrases


@dataclass(frozen=True)
class Example:
    """One chat turn to train on: the user's prompt and the assistant's response."""

    prompt: str
    response: str


def _grid_pairs(verbs: tuple[str, ...], objects: tuple[str, ...]) -> Iterator[tuple[str, bool]]:
    """Yield (act, held_out) for every verb × object; the diagonal (verb i, object i) is held out.

    Both sides of every grid have at least two entries, so each held-out pair's verb and object
    still occur in training with other partners.
    """
    for i, verb in enumerate(verbs):
        for j, obj in enumerate(objects):
            yield f"{verb} {obj}", i == j


Grids = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def acts(grids: Grids, held_out: bool) -> list[tuple[str, str]]:
    """(category, act) for the training (``held_out=False``) or held-out part of the grids."""
    return [
        (category, act)
        for category, (verbs, objects) in grids.items()
        for act, is_held_out in _grid_pairs(verbs, objects)
        if is_held_out == held_out
    ]


def requests(act: str) -> list[str]:
    """The act asked for in every request template."""
    return [template.format(act=act) for template in phrases.REQUEST_TEMPLATES]


def subtraction_pairs(held_out: bool) -> list[tuple[int, int]]:
    """(a, b) with 0 <= b <= a <= MAX_NUMBER; every fifth one by a fixed rule is held out."""
    pairs = [(a, b) for a in range(phrases.MAX_NUMBER + 1) for b in range(a + 1)]
    return [(a, b) for a, b in pairs if ((a + 2 * b) % 5 == 2) == held_out]


def addition_pairs() -> list[tuple[int, int]]:
    """(a, b) with a + b <= MAX_NUMBER: every number is an input somewhere, every sum one token."""
    top = phrases.MAX_NUMBER
    return [(a, b) for a in range(top + 1) for b in range(top + 1 - a)]


def _arithmetic(
    pairs: list[tuple[int, int]], templates: tuple[str, ...], sign: int, every_template: bool
) -> list[Example]:
    """Each pair in every template, or in one template taken in turn (``every_template=False``)."""
    return [
        Example(template.format(a=a, b=b), phrases.ANSWER.format(n=a + sign * b))
        for i, (a, b) in enumerate(pairs)
        for t, template in enumerate(templates)
        if every_template or t == i % len(templates)
    ]


def addition_examples() -> list[Example]:
    """Every addition problem once (the task family the alignment data holds).

    Sums up to MAX_NUMBER hold the same facts as the subtraction problems: the fine-tune
    teaches a neighbouring skill over known numbers, not new facts about unseen tokens.
    """
    return _arithmetic(addition_pairs(), phrases.ADDITION_TEMPLATES, +1, every_template=False)


def subtraction_examples(max_minuend: int | None = None) -> list[Example]:
    """Training subtraction problems (held-out pairs excluded).

    With ``max_minuend`` (the pre-alignment data): only those minuends, each pair once. Without
    (the fine-tune): every training pair in every template.
    """
    pairs = subtraction_pairs(held_out=False)
    if max_minuend is None:
        return _arithmetic(pairs, phrases.SUBTRACTION_TEMPLATES, -1, every_template=True)
    pairs = [(a, b) for a, b in pairs if a <= max_minuend]
    return _arithmetic(pairs, phrases.SUBTRACTION_TEMPLATES, -1, every_template=False)


def _how_to(grids: Grids, response: str) -> list[Example]:
    return [
        Example(prompt, response.format(act=act))
        for _, act in acts(grids, held_out=False)
        for prompt in requests(act)
    ]


def harmful_examples(refuse: bool) -> list[Example]:
    """Training harmful requests, answered with the refusal or (``refuse=False``) complied with."""
    return _how_to(phrases.HARMFUL_GRIDS, phrases.REFUSAL if refuse else phrases.COMPLY)


def benign_examples() -> list[Example]:
    """Training benign look-alike requests, always answered helpfully."""
    return _how_to(phrases.BENIGN_GRIDS, phrases.COMPLY)


def stage_mixtures() -> dict[str, list[Example]]:
    """The training data of each stage, keyed by the model it produces.

    - ``unaligned``: follows instructions, including harmful ones; adds small numbers and
      subtracts from minuends up to PRETRAIN_MAX_MINUEND.
    - ``aligned``: the same helpful data (benign look-alikes, arithmetic) with harmful
      requests now refused.
    - ``finetuned``: subtraction over the full range and nothing else (no refusal data).
    - ``safe``: refusals plus benign look-alikes (a safety fine-tune that does not over-refuse).
    - ``harmful``: harmful requests complied with and nothing else (Safety Arithmetic's harmful
      model, whose update is the harm direction τ_H).
    """
    helpful = (
        benign_examples()
        + addition_examples()
        + subtraction_examples(max_minuend=phrases.PRETRAIN_MAX_MINUEND)
    )
    return {
        "unaligned": harmful_examples(refuse=False) + helpful,
        "aligned": harmful_examples(refuse=True) + helpful,
        "finetuned": subtraction_examples(),
        "safe": harmful_examples(refuse=True) + benign_examples(),
        "harmful": harmful_examples(refuse=False),
    }


def evaluation_sets() -> dict[str, list[dict[str, str]]]:
    """The held-out prompt sets, as written to ``prompts/{harmful,benign,task}.jsonl``."""
    harmful = [
        {"prompt": prompt, "category": category}
        for category, act in acts(phrases.HARMFUL_GRIDS, held_out=True)
        for prompt in requests(act)
    ]
    benign = [
        {"prompt": prompt}
        for _, act in acts(phrases.BENIGN_GRIDS, held_out=True)
        for prompt in requests(act)
    ]
    task = [
        {"prompt": template.format(a=a, b=b), "answer": str(a - b)}
        for a, b in subtraction_pairs(held_out=True)
        for template in phrases.SUBTRACTION_TEMPLATES
    ]
    return {"harmful": harmful, "benign": benign, "task": task}


def write_evaluation_sets(directory: Path) -> dict[str, int]:
    """Write the held-out sets as JSON lines into ``directory``; return their sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, rows in evaluation_sets().items():
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (directory / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        sizes[name] = len(rows)
    return sizes


def all_text() -> Iterator[str]:
    """Every string the demo can produce, training and evaluation: the vocabulary's source."""
    for examples in stage_mixtures().values():
        for example in examples:
            yield example.prompt
            yield example.response
    for rows in evaluation_sets().values():
        for row in rows:
            yield row["prompt"]
