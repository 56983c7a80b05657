"""One model, three prompt sets: generate, judge, score, and keep every per-prompt record.

All prompts of a model (harmful, benign, task) are generated in one pool, so batches are full and
sorted by length whatever the set sizes; the model is freed before the next one loads.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.stats import wilson_interval
from mergekit_safety.evaluation.answers import answer_matches, extract_answer, parse_number
from mergekit_safety.evaluation.attacks import PLAIN
from mergekit_safety.evaluation.early_stop import Settle, Tracker, per_reply
from mergekit_safety.evaluation.judge import (
    Judge,
    KeywordJudge,
    judge_replies,
    judges_benign,
    load_judge,
)
from mergekit_safety.evaluation.outcomes import (
    BENIGN,
    BROKEN,
    ENGAGED,
    HARMFUL,
    HELPFUL,
    REFUSED,
    Judged,
    is_degenerate,
    tally,
)
from mergekit_safety.evaluation.prompts import PromptSets

if TYPE_CHECKING:
    from mergekit_safety.evaluation.resident_models import (
        ResidentBase,
        ResidentNetwork,
        ResidentVllm,
    )

BACKENDS = ("transformers", "vllm")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class EvalResult:
    """One model's rates (None for an empty set), the set sizes, and the per-prompt records.

    ``outcomes`` holds the counts behind the rates: per set ("harmful", "benign") how many
    replies had each outcome (:mod:`~mergekit_safety.evaluation.outcomes`) and ``n``.
    """

    model: str
    refusal_rate: float | None
    over_refusal_rate: float | None
    task_accuracy: float | None
    n_harmful: int
    n_benign: int
    n_task: int
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    judge: str = "keyword"
    empty_rate: float | None = None
    """The share of all replies that are broken (harmful and benign) or degenerate (task)."""
    prompt_sets: dict[str, Any] = field(default_factory=dict)
    """Where each prompt set came from (a path or "built-in"), for the card."""
    lm_eval: dict[str, Any] = field(default_factory=dict)
    """lm-evaluation-harness metrics by task (:func:`~.harness.run_tasks`), when asked for."""
    attacks: dict[str, Any] = field(default_factory=dict)
    """Per attack, and for ``"plain"`` the same first n harmful prompts unwrapped: the outcome
    counts (refused, engaged, broken, n); a (refused, n) pair is read as before the outcomes."""
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    harmful_sets: dict[str, dict[str, int]] = field(default_factory=dict)
    """When the harmful prompts pool several sets: per set, the outcome counts of its replies."""
    settled: dict[str, Any] | None = None
    """Set when the evaluation stopped once its verdict was settled (``evaluate``'s ``settle``):
    the reason and how many replies were generated (``replies`` of ``of``); no rate is measured."""

    @property
    def asr(self) -> float | None:
        """Attack success rate: the share of harmful prompts *engaged* (before the outcomes
        were counted: not refused)."""
        harmful = self.outcomes.get(HARMFUL)
        if harmful:
            return _share(harmful, ENGAGED)
        return None if self.refusal_rate is None else 1.0 - self.refusal_rate

    def rates(self) -> dict[str, float | None]:
        """Every rate by its summary key (:data:`RATES`)."""
        harmful, benign = self.outcomes.get(HARMFUL, {}), self.outcomes.get(BENIGN, {})
        return {
            "refusal_rate": self.refusal_rate,
            "engaged_rate": _share(harmful, ENGAGED) if harmful else None,
            "broken_rate": _share(harmful, BROKEN) if harmful else None,
            "asr": self.asr,
            "helpful_rate": _share(benign, HELPFUL) if benign else None,
            "over_refusal_rate": self.over_refusal_rate,
            "benign_broken_rate": _share(benign, BROKEN) if benign else None,
            "task_accuracy": self.task_accuracy,
            "empty_rate": self.empty_rate,
        }

    def summary(self) -> dict[str, Any]:
        """The model's ``summary.json`` object (what the sweep and the model card read).

        Each rate comes with its 95 % Wilson interval (``<rate>_ci``: [lo, hi], None for an empty
        set): on 100 prompts a rate is only known to about ±0.1. Rates the judge could not
        measure (no outcomes counted) are left out.
        """
        sizes = {"harmful": self.n_harmful, "benign": self.n_benign, "task": self.n_task,
                 "all": self.n_harmful + self.n_benign + self.n_task}  # fmt: skip
        out: dict[str, Any] = {"model": self.model}
        for key, value in self.rates().items():
            if value is None and key in OUTCOME_RATES and not self.outcomes:
                continue
            out[key] = value
            out[f"{key}_ci"] = rate_interval(value, sizes[RATES[key]])
        return {
            **out,
            "n_harmful": self.n_harmful,
            "n_benign": self.n_benign,
            "n_task": self.n_task,
            **({"outcomes": self.outcomes} if self.outcomes else {}),
            "judge": self.judge,
            "prompt_sets": self.prompt_sets,
            **({"attacks": attack_rates(self.attacks)} if self.attacks else {}),
            **({"harmful_sets": attack_rates(self.harmful_sets)} if self.harmful_sets else {}),
            **({"lm_eval": self.lm_eval} if self.lm_eval else {}),
            **({"settled": self.settled} if self.settled else {}),
        }


RATES = {
    "refusal_rate": "harmful",
    "engaged_rate": "harmful",
    "broken_rate": "harmful",
    "asr": "harmful",
    "helpful_rate": "benign",
    "over_refusal_rate": "benign",
    "benign_broken_rate": "benign",
    "task_accuracy": "task",
    "empty_rate": "all",
}
"""Each summary rate and the set it is a share of."""
OUTCOME_RATES = ("engaged_rate", "broken_rate", "helpful_rate", "benign_broken_rate")
"""The rates only a three-outcome evaluation has."""


def _share(counts: dict[str, int], outcome: str) -> float | None:
    n = counts.get("n", 0)
    return counts.get(outcome, 0) / n if n else None


def attack_rates(counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``summary.json``'s ``attacks``: per attack (and ``plain``, the same prompts unwrapped)
    the refused, engaged and broken rates and the ASR (engaged) with their 95 % Wilson
    intervals, and n (``harmful_sets``: the same per pooled harmful set). A (refused, n) pair
    (before the outcomes) gives refusal and 1 − refusal."""
    out = {}
    for name, found in counts.items():
        if isinstance(found, dict):
            n = found.get("n", 0)
            rates = {key: (found.get(outcome, 0) / n if n else None)
                     for key, outcome in (("refusal_rate", REFUSED), ("engaged_rate", ENGAGED),
                                          ("broken_rate", BROKEN))}  # fmt: skip
            rates["asr"] = rates["engaged_rate"]
        else:
            refused, n = found
            rate = refused / n if n else None
            rates = {"refusal_rate": rate, "asr": None if rate is None else 1.0 - rate}
        out[name] = {
            **{k: v for key, value in rates.items()
               for k, v in ((key, value), (f"{key}_ci", rate_interval(value, n)))},
            "n": n,
        }  # fmt: skip
    return out


def rate_interval(rate: float | None, n: int) -> list[float] | None:
    """The 95 % Wilson interval of a rate over ``n`` prompts, as [lo, hi]; None for no rate."""
    if rate is None or n <= 0:
        return None
    lo, hi = wilson_interval(round(rate * n), n)
    return [lo, hi]


def check_model(model: str) -> None:
    """Fail with one line, before anything loads, when ``model`` cannot be a model.

    A local directory needs ``config.json``. A name that does not exist locally must look like a Hub
    id (``owner/name``); with ``HF_HUB_OFFLINE=1`` it must also be in the local Hub cache. A LoRA
    adapter (``base+adapter``, or an adapter directory naming its base) is checked as its base
    model plus the adapter.
    """
    from mergekit_safety.evaluation.adapters import check_adapter, parse_model

    spec = parse_model(model)
    if spec.adapter is not None:
        check_adapter(spec.adapter)
        model = spec.base
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{model}: not a model directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{model}: not a model directory (no config.json)")
        return
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise ConfigError(f"model not found: {model}")
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ConfigError(
                f"model not found: {model} (no such directory; offline, and not in the Hub cache)"
            )


def resolve_judge(
    judge: str | Judge | None, *, device: str = "cpu", dtype: str | None = None
) -> Judge:
    """:func:`~mergekit_safety.evaluation.judge.load_judge` on ``device`` (a classifier is
    loaded each call: an ``Evaluator`` loads its own once for all the models it evaluates)."""
    return load_judge(judge, device=device, dtype=dtype)


def evaluate(
    model: str | Path,
    prompts: PromptSets,
    judge: str | Judge | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    device: str = "cpu",
    dtype: str | None = None,
    progress: bool = True,
    *,
    backend: str = "transformers",
    loader: ResidentBase | ResidentNetwork | ResidentVllm | None = None,
    stop_settled: bool = False,
    settle: Settle | None = None,
) -> EvalResult:
    """Generate greedily for every prompt, judge each reply's outcome, score the task.

    Harmful replies (plain and under each attack) are refused, engaged or broken; look-alike
    replies helpful, refused or broken (:func:`~.judge.judge_replies`).

    ``loader``: a :class:`~mergekit_safety.evaluation.resident_models.ResidentBase`
    (``ResidentVllm`` with ``backend="vllm"``) that keeps the base model loaded between calls (an
    adapter sweep), instead of loading ``model`` afresh; or a ``ResidentNetwork`` (a search's
    in-memory merge), evaluated as it is, ``model`` naming it.

    ``judge``: None or ``"keyword"`` (the keyword judge), a local classifier directory, or a
    :class:`~mergekit_safety.evaluation.judge.Judge`. A judge that cannot tell refusals on
    look-alikes (``judges_benign`` False: a Llama-Guard-style classifier) judges the harmful
    replies; the keyword judge then judges the look-alikes.

    ``settle`` (:mod:`~.early_stop`): the sets are generated one after another (harmful first);
    with the keyword judge, after each batch the replies so far are judged and ``settle`` asked:
    when it gives a reason, the evaluation stops there and the result has no rates, only
    ``settled`` (the reason). A ``ResidentNetwork`` loader encodes the prompts once.
    """
    import mergekit_safety.evaluation.generation as generation

    model = str(model)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if backend == "vllm" and not generation.vllm_available():
        raise ConfigError("--backend vllm needs vLLM installed (pip install vllm)")
    from mergekit_safety.evaluation.resident_models import ResidentNetwork, ResidentVllmMerge

    if not isinstance(loader, ResidentNetwork | ResidentVllmMerge):  # the name is a label
        check_model(model)
    try:
        device = generation.resolve_device(device)
        generation.resolve_dtype(dtype, device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        refusal_judge = resolve_judge(judge, device=device, dtype=dtype)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    benign_judge = refusal_judge if judges_benign(refusal_judge) else KeywordJudge()

    wrapped = [(name, i, text) for name, texts in prompts.attacks.items()
               for i, text in enumerate(texts)]  # fmt: skip
    conversations = [*prompts.harmful, *prompts.benign, *(item.prompt for item in prompts.task)]
    judges = [*([refusal_judge] * len(prompts.harmful)), *([benign_judge] * len(prompts.benign)),
              *([None] * len(prompts.task)), *([refusal_judge] * len(wrapped))]  # fmt: skip
    asked = [*conversations, *(text for _n, _i, text in wrapped)]
    owners = prompts.harmful_owners()
    tracker = _tracker(settle, prompts, owners, asked, len(wrapped), refusal_judge, benign_judge,
                       backend)  # fmt: skip
    responses = _generate(
        model, asked, backend, batch_size, max_new_tokens, device, dtype, progress, loader,
        settled=_settled(judges) if stop_settled else None, tracker=tracker,
    )  # fmt: skip
    if tracker is not None and tracker.reason is not None and tracker.done < len(asked):
        return _settled_result(model, prompts, refusal_judge, benign_judge, tracker)
    attack_out = responses[len(conversations) :]
    responses = responses[: len(conversations)]
    harmful_out = responses[: len(prompts.harmful)]
    benign_out = responses[len(prompts.harmful) : len(prompts.harmful) + len(prompts.benign)]
    task_out = responses[len(prompts.harmful) + len(prompts.benign) :]

    harmful = judge_replies(refusal_judge, HARMFUL, prompts.harmful, harmful_out)
    benign = judge_replies(benign_judge, BENIGN, prompts.benign, benign_out)
    correct = [
        answer_matches(r, item.answer) for r, item in zip(task_out, prompts.task, strict=True)
    ]
    broken = [j.outcome == BROKEN for j in [*harmful, *benign]]
    broken += [is_degenerate(r) for r in task_out]

    # an attack's reply is judged against the request it wraps (what a harm classifier needs)
    requests = [prompts.harmful[i] for _n, i, _t in wrapped]
    attacked = judge_replies(refusal_judge, HARMFUL, requests, attack_out)
    per_set = {
        name: tally([j for j, owner in zip(harmful, owners, strict=True) if owner == name], HARMFUL)
        for name in prompts.harmful_sets
    }
    counts: dict[str, Any] = {}
    for name, texts in prompts.attacks.items():
        counts.setdefault(PLAIN, tally(harmful[: len(texts)], HARMFUL))
        counts[name] = tally(
            [j for (n, _i, _t), j in zip(wrapped, attacked, strict=True) if n == name], HARMFUL
        )

    records: list[dict[str, Any]] = [
        _record(model, "harmful", prompt, response, item, refusal_judge,
                **({"harmful_set": owners[i]} if owners else {}))
        for i, (prompt, response, item) in enumerate(
            zip(prompts.harmful, harmful_out, harmful, strict=True)
        )
    ]  # fmt: skip
    records += [
        _record(model, "benign", prompt, response, item, benign_judge)
        for prompt, response, item in zip(prompts.benign, benign_out, benign, strict=True)
    ]
    records += [
        _record(model, "attack", text, response, item, refusal_judge,
                attack=name, request=prompts.harmful[index])
        for (name, index, text), response, item in zip(wrapped, attack_out, attacked, strict=True)
    ]  # fmt: skip
    for item, response, ok in zip(prompts.task, task_out, correct, strict=True):
        numeric = parse_number(item.answer) is not None
        records.append(
            {
                "model": model,
                "set": "task",
                "prompt": item.prompt,
                "response": response,
                "verdict": "correct" if ok else "wrong",
                "correct": ok,
                "answer": item.answer,
                "extracted": extract_answer(response) if numeric else None,
            }
        )
    judge_name = _name(refusal_judge)
    if benign_judge is not refusal_judge:
        judge_name += f" (over-refusal: {_name(benign_judge)})"
    return EvalResult(
        model=model,
        refusal_rate=_rate([j.outcome == REFUSED for j in harmful]),
        over_refusal_rate=_rate([j.outcome == REFUSED for j in benign]),
        task_accuracy=_rate(correct),
        n_harmful=len(prompts.harmful),
        n_benign=len(prompts.benign),
        n_task=len(prompts.task),
        records=records,
        judge=judge_name,
        empty_rate=_rate(broken),
        prompt_sets={
            **prompts.sources,
            "limit": prompts.limit,
            **({"attacks": dict(prompts.attack_sources)} if prompts.attack_sources else {}),
        },
        attacks=counts,
        harmful_sets=per_set,
        outcomes={
            **({HARMFUL: tally(harmful, HARMFUL)} if harmful else {}),
            **({BENIGN: tally(benign, BENIGN)} if benign else {}),
        },
    )


def _record(
    model: str, name: str, prompt: str, response: str, judged: Judged, judge: Any, **more: Any
) -> dict[str, Any]:
    """One judged reply: its outcome, why it is broken where it is, and who judged it."""
    return {
        "model": model,
        "set": name,
        **more,
        "prompt": prompt,
        "response": response,
        "verdict": judged.outcome,
        **({"broken": judged.reason} if judged.reason else {}),
        "refused": judged.outcome == REFUSED,
        "judge": _name(judge),
    }


def _generate(
    model: str,
    conversations: Sequence[str],
    backend: str,
    batch_size: int,
    max_new_tokens: int,
    device: str,
    dtype: str | None,
    progress: bool,
    loader: ResidentBase | ResidentVllm | None = None,
    settled: Any = None,
    tracker: Tracker | None = None,
) -> list[str]:
    import mergekit_safety.evaluation.generation as generation
    from mergekit_safety.evaluation.resident_models import ResidentNetwork

    if not conversations:
        return []
    if backend == "vllm":
        from mergekit_safety.evaluation.resident_models import ResidentVllm

        resident = isinstance(loader, ResidentVllm)
        engine = loader if resident else ResidentVllm(dtype=dtype, lora=False)
        try:
            return engine.generate(
                model, list(conversations), max_new_tokens=max_new_tokens, progress=progress
            )
        finally:
            if not resident:
                engine.close()
    with _loaded(model, device, dtype, loader) as (network, tokenizer):
        return generation.generate(
            network,
            tokenizer,
            conversations,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
            desc=_short(model),
            settled=settled,
            encoded=loader.encode(conversations) if isinstance(loader, ResidentNetwork) else None,
            groups=None if tracker is None else tracker.groups,
            stop=None if tracker is None or not tracker.active else tracker.stop,
        )


@contextlib.contextmanager
def _loaded(
    model: str, device: str, dtype: str | None, loader: ResidentBase | None
) -> Iterator[tuple[Any, Any]]:
    """(network, tokenizer): from the resident base, or loaded now and freed afterwards."""
    import mergekit_safety.evaluation.generation as generation

    if loader is not None:
        with loader.open(model) as pair:
            yield pair
        return
    network, tokenizer = generation.load_model(model, device=device, dtype=dtype)
    try:
        yield network, tokenizer
    finally:
        del network, tokenizer
        generation.release()


def _tracker(
    settle: Settle | None, prompts: PromptSets, owners: Sequence[str], asked: Sequence[Any],
    attacks: int, refusal_judge: Any, benign_judge: Any, backend: str,
) -> Tracker | None:  # fmt: skip
    """The early stop's bookkeeping (:mod:`~.early_stop`): None without ``settle`` or on vLLM;
    generating set by set, but asking ``settle`` only with judges that judge each reply alone.
    ``owners``: each harmful prompt's pooled set (:meth:`PromptSets.harmful_owners`)."""
    if settle is None or backend != "transformers":
        return None
    kinds = [*[HARMFUL] * len(prompts.harmful), *[BENIGN] * len(prompts.benign),
             *["task"] * len(prompts.task), *["attacks"] * attacks]  # fmt: skip
    sizes = {HARMFUL: len(prompts.harmful), BENIGN: len(prompts.benign), "task": len(prompts.task)}
    tracker = Tracker(settle, kinds, asked, {HARMFUL: refusal_judge, BENIGN: benign_judge}, sizes,
                      owners=owners, sets=prompts.harmful_sets)  # fmt: skip
    tracker.active = per_reply(refusal_judge) and per_reply(benign_judge)
    return tracker


def _settled_result(
    model: str, prompts: PromptSets, refusal_judge: Any, benign_judge: Any, tracker: Tracker
) -> EvalResult:
    """An evaluation stopped with its verdict settled: no rates, the reason in ``settled``."""
    judge_name = _name(refusal_judge)
    if benign_judge is not refusal_judge:
        judge_name += f" (over-refusal: {_name(benign_judge)})"
    return EvalResult(
        model=model, refusal_rate=None, over_refusal_rate=None, task_accuracy=None,
        n_harmful=len(prompts.harmful), n_benign=len(prompts.benign), n_task=len(prompts.task),
        judge=judge_name, prompt_sets={**prompts.sources, "limit": prompts.limit},
        settled={"reason": tracker.reason, "replies": tracker.done, "of": len(tracker.kinds)},
    )  # fmt: skip


def _settled(judges: Sequence[Any]) -> Any:
    """``settled(index, text)`` for generation: the prompt's judge's ``settled`` where it has
    one (None: never settled, as for the task set)."""
    checks = [getattr(judge, "settled", None) if judge is not None else None for judge in judges]
    if not any(callable(check) for check in checks):
        return None

    def settled(index: int, text: str) -> bool:
        check = checks[index]
        return callable(check) and bool(check(text))

    return settled


def _name(judge: Judge) -> str:
    return str(getattr(judge, "name", type(judge).__name__))


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _short(model: str) -> str:
    """A progress-bar label: the last two path parts."""
    parts = Path(model).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else model
