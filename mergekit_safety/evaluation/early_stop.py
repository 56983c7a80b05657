"""Stopping an evaluation once its verdict is settled: what has been judged so far.

An evaluation given a ``settle`` check (:data:`Settle`) generates its prompts set by set
(:data:`ORDER`: harmful first, then the look-alikes, the task, the attacks; longest first within
a set) and, after each batch, judges the batch's replies and asks the check whether the verdict
is settled whatever the remaining replies turn out to be (a batch holds one set's prompts). The
batches up to the stop are the batches of the same evaluation without a stop (a ``settle`` that
never answers): what was generated is the same.

Only judges that judge each reply on its own (the keyword judge) are asked after each batch: a
classifier judging a few replies may read them otherwise than in the whole set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergekit_safety.evaluation.outcomes import BENIGN, BROKEN, HARMFUL, is_degenerate

ORDER = ("harmful", "benign", "task", "attacks")
"""The sets in the order an evaluation with a ``settle`` check generates them: the safety gate
reads the harmful replies first, the look-alikes next, the task only for broken replies."""


@dataclass
class Known:
    """What an evaluation has judged so far: per set how many replies (``judged``) and, for
    harmful and benign, how many had each outcome (``counts``); ``broken``: replies broken
    (harmful, benign) or degenerate (task) so far. ``sizes``: each set's prompt count.
    ``harmful_sets``: where the harmful prompts pool several sets, each one's prompt count, and
    ``set_judged`` / ``set_counts`` the same tallies per set (empty for one set)."""

    sizes: Mapping[str, int]
    judged: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    broken: int = 0
    harmful_sets: Mapping[str, int] = field(default_factory=dict)
    set_judged: dict[str, int] = field(default_factory=dict)
    set_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, kind: str, outcome: str) -> int:
        return self.counts.get(kind, {}).get(outcome, 0)

    def remaining(self, kind: str) -> int:
        return self.sizes.get(kind, 0) - self.judged.get(kind, 0)

    def set_count(self, name: str, outcome: str) -> int:
        """Harmful replies of pooled set ``name`` judged ``outcome`` so far."""
        return self.set_counts.get(name, {}).get(outcome, 0)

    def set_remaining(self, name: str) -> int:
        return self.harmful_sets.get(name, 0) - self.set_judged.get(name, 0)


Settle = Callable[[Known], "str | None"]
"""``settle(known)``: a one-line reason when the verdict no longer depends on the replies not
judged yet, else None."""


class Tracker:
    """Judges each batch's replies as they come (``stop(indices, texts)`` for generation) and
    asks ``settle``; ``reason`` holds its answer once it stops."""

    def __init__(self, settle: Settle, kinds: Sequence[str], prompts: Sequence[str],
                 judges: Mapping[str, Any], sizes: Mapping[str, int], *, owners: Sequence[str] = (),
                 sets: Mapping[str, int] | None = None) -> None:  # fmt: skip
        self.settle = settle
        self.kinds = kinds
        self.prompts = prompts
        self.judges = judges
        self.owners = owners
        """Each harmful prompt's pooled set (the first ``len(owners)`` prompts), or empty."""
        self.known = Known(sizes, harmful_sets=dict(sets or {}))
        self.groups = [ORDER.index(kind) for kind in kinds]
        """Each prompt's set's place in :data:`ORDER`: what generation decodes first."""
        self.active = True
        """Whether ``settle`` is asked (else the sets are only generated in order)."""
        self.done = 0
        self.reason: str | None = None

    def stop(self, indices: Sequence[int], texts: Sequence[str]) -> bool:
        from mergekit_safety.evaluation.judge import judge_replies

        for index, text in zip(indices, texts, strict=True):
            kind = self.kinds[index]
            self.done += 1
            if kind not in (HARMFUL, BENIGN, "task"):
                continue  # an attack's reply: no gate reads it
            self.known.judged[kind] = self.known.judged.get(kind, 0) + 1
            if kind == "task":
                self.known.broken += is_degenerate(text)
                continue
            (judged,) = judge_replies(self.judges[kind], kind, [self.prompts[index]], [text])
            counts = self.known.counts.setdefault(kind, {})
            counts[judged.outcome] = counts.get(judged.outcome, 0) + 1
            if kind == HARMFUL and self.owners:
                owner = self.owners[index]
                self.known.set_judged[owner] = self.known.set_judged.get(owner, 0) + 1
                counts = self.known.set_counts.setdefault(owner, {})
                counts[judged.outcome] = counts.get(judged.outcome, 0) + 1
            self.known.broken += judged.outcome == BROKEN
        self.reason = self.settle(self.known)
        return self.reason is not None


def per_reply(judge: Any) -> bool:
    """Whether ``judge`` judges each reply on its own (its verdict on a few replies is its
    verdict on them within the whole set): the keyword judge."""
    from mergekit_safety.evaluation.judge import KeywordJudge

    return isinstance(judge, KeywordJudge)
