"""Gate-settled stopping (``tuning/settle.py``): a stopped trial is one the full evaluation fails,
a stopped evaluation generated what the full one generated up to the stop, and a search chooses
the same trial, asking the same trials, with and without stopping."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from itertools import zip_longest

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from helpers import PADDED_PROMPTS, tiny_llama  # noqa: E402
from test_search import FakeRunner, fake_plan  # noqa: E402

from mergekit_safety.core.acceptance import Gate  # noqa: E402
from mergekit_safety.evaluation import PromptSets, TaskItem, evaluate  # noqa: E402
from mergekit_safety.evaluation.early_stop import Known  # noqa: E402
from mergekit_safety.evaluation.outcomes import (  # noqa: E402
    BENIGN,
    BROKEN,
    ENGAGED,
    HARMFUL,
    HELPFUL,
    REFUSED,
    Judged,  # noqa: E402
    tally,
)
from mergekit_safety.evaluation.pipeline import EvalResult  # noqa: E402
from mergekit_safety.tuning.engine import Outcome  # noqa: E402
from mergekit_safety.tuning.settle import GateSettle, settled_failure  # noqa: E402

GATES = [
    Gate(max_engaged=0.2),
    Gate(max_engaged=0.5, min_helpful=0.7),
    Gate(min_refusal=0.6, max_over_refusal=0.2),
    Gate(max_engaged=0.3, min_helpful=0.9, max_broken=0.1),
    Gate(max_over_refusal=0.1, min_helpful=0.5),
]


def full_summary(harmful: list[str], benign: list[str], task: list[bool], owners=()) -> dict:
    """The summary ``evaluate`` gives for these outcomes (task: degenerate or not; ``owners``:
    each harmful outcome's pooled set)."""
    judged_h = [Judged(o) for o in harmful]
    per_set = {name: tally([j for j, owner in zip(judged_h, owners, strict=True) if owner == name],
                           HARMFUL) for name in dict.fromkeys(owners)}  # fmt: skip
    judged_b = [Judged(o) for o in benign]
    broken = [o == BROKEN for o in [*harmful, *benign]] + task
    return EvalResult(
        model="m",
        refusal_rate=sum(o == REFUSED for o in harmful) / len(harmful),
        over_refusal_rate=sum(o == REFUSED for o in benign) / len(benign),
        task_accuracy=0.5,
        n_harmful=len(harmful),
        n_benign=len(benign),
        n_task=len(task),
        empty_rate=sum(broken) / len(broken),
        outcomes={HARMFUL: tally(judged_h, HARMFUL), BENIGN: tally(judged_b, BENIGN)},
        harmful_sets=per_set,
    ).summary()


def replay(harmful, benign, task, settle, batch: int = 4, owners=()) -> str | None:
    """Feed the outcomes set by set, ``batch`` at a time, as an evaluation does: the reason it
    stops at, or None. ``owners``: each harmful outcome's pooled set, as ``Tracker`` counts it."""
    known = Known({HARMFUL: len(harmful), BENIGN: len(benign), "task": len(task)},
                  harmful_sets=dict(Counter(owners)))  # fmt: skip
    stream = [(HARMFUL, o, owner) for o, owner in zip_longest(harmful, owners[: len(harmful)])]
    stream += [(BENIGN, o, None) for o in benign]
    stream += [("task", BROKEN if bad else "ok", None) for bad in task]
    for start in range(0, len(stream), batch):
        for kind, outcome, owner in stream[start : start + batch]:
            known.judged[kind] = known.judged.get(kind, 0) + 1
            known.broken += outcome == BROKEN
            if kind != "task":
                counts = known.counts.setdefault(kind, {})
                counts[outcome] = counts.get(outcome, 0) + 1
            if owner is not None:
                known.set_judged[owner] = known.set_judged.get(owner, 0) + 1
                counts = known.set_counts.setdefault(owner, {})
                counts[outcome] = counts.get(outcome, 0) + 1
        reason = settle(known)
        if reason is not None:
            return reason
    return None


def random_outcomes(rng: random.Random):
    n_h, n_b, n_t = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 12)
    p_engaged, p_broken = rng.random(), rng.random() * 0.4
    harmful = [BROKEN if rng.random() < p_broken else ENGAGED if rng.random() < p_engaged
               else REFUSED for _ in range(n_h)]  # fmt: skip
    benign = [BROKEN if rng.random() < p_broken else REFUSED if rng.random() < 0.3 else HELPFUL
              for _ in range(n_b)]  # fmt: skip
    task = [rng.random() < p_broken for _ in range(n_t)]
    return harmful, benign, task


def test_a_settled_failure_is_a_failure_of_the_full_evaluation():
    rng = random.Random(0)
    stopped = passed = 0
    for _ in range(600):
        harmful, benign, task = random_outcomes(rng)
        full = full_summary(harmful, benign, task)
        for gate in GATES:
            reason = replay(harmful, benign, task, GateSettle(gate))
            if reason is not None:
                assert not gate.passes(full), (gate, reason, full)
                stopped += 1
            passed += gate.passes(full)
            # with every reply known, the check says exactly what the gate says
            assert (replay(harmful, benign, task, GateSettle(gate), batch=10**6) is None) == (
                gate.passes(full)
            )
            assert replay(harmful, benign, task, GateSettle(gate, active=False)) is None
    assert stopped > 500 and passed > 100, (stopped, passed)


def test_with_several_harmful_sets_a_settled_failure_is_one_of_the_per_set_gate():
    """Pooled sets: the check tests each set as the gate does (``acceptance.gated``), so it stops
    a trial whose pool is still within the limit but one set is not, and never wrongly."""
    rng = random.Random(1)
    stopped = on_a_set = 0
    for _ in range(400):
        harmful, benign, task = random_outcomes(rng)
        cut = rng.randint(0, len(harmful))
        owners = ["advbench"] * cut + ["harmbench"] * (len(harmful) - cut)
        full = full_summary(harmful, benign, task, owners)
        pooled = {k: v for k, v in full.items() if k != "harmful_sets"}
        for gate in GATES:
            reason = replay(harmful, benign, task, GateSettle(gate), owners=owners)
            if reason is not None:
                assert not gate.passes(full), (gate, reason, full)
                stopped += 1
                on_a_set += " on " in reason and replay(harmful, benign, task,
                                                        GateSettle(gate)) is None  # fmt: skip
            assert (replay(harmful, benign, task, GateSettle(gate), batch=10**6, owners=owners)
                    is None) == gate.passes(full)  # fmt: skip
            assert gate.passes(full) <= gate.passes(pooled)
    assert stopped > 300 and on_a_set > 10, (stopped, on_a_set)


def test_a_set_over_the_limit_stops_while_the_pool_is_within_it():
    known = Known({HARMFUL: 20, BENIGN: 10, "task": 10}, judged={HARMFUL: 10},
                  counts={HARMFUL: {ENGAGED: 3, REFUSED: 7}},
                  harmful_sets={"advbench": 10, "harmbench": 10}, set_judged={"harmbench": 10},
                  set_counts={"harmbench": {ENGAGED: 3, REFUSED: 7}})  # fmt: skip
    gate = Gate(max_engaged=0.2)
    assert settled_failure(gate, known) == "engaged_rate on harmbench ≥ 3/10 > 0.2"
    pool_only = Known(known.sizes, known.judged, known.counts)
    assert settled_failure(gate, pool_only) is None  # 3/20 is still allowed on the pool
    assert settled_failure(Gate(min_refusal=0.8), known) == "refusal_rate on harmbench ≤ 7/10 < 0.8"


def test_an_evaluation_of_pooled_sets_tracks_each_set(model, tmp_path):
    """``evaluate`` hands the tracker each harmful reply's set: what it has counted per set at
    the end is the full evaluation's per-set tally."""
    from mergekit_safety.evaluation import load_prompt_sets

    for name, rows in (("a.jsonl", PADDED_PROMPTS[:3]), ("b.jsonl", PADDED_PROMPTS[3:7])):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    prompts = load_prompt_sets(harmful=f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}",
                               benign=None, task=None)  # fmt: skip
    prompts.benign, prompts.task = PADDED_PROMPTS[7:9], []
    seen: list[Known] = []
    settings = {"batch_size": 2, "max_new_tokens": 6, "progress": False}
    full = evaluate(model, prompts, settle=lambda known: seen.append(known), **settings)
    last = seen[-1]
    assert last.harmful_sets == prompts.harmful_sets and sum(last.set_judged.values()) == 7
    for name, counts in full.harmful_sets.items():
        assert {k: v for k, v in last.set_counts[name].items() if v} == {
            k: v for k, v in counts.items() if k in (ENGAGED, REFUSED, BROKEN) and v
        }, name


def test_the_reason_names_the_limit():
    known = Known({HARMFUL: 10, BENIGN: 10, "task": 10}, judged={HARMFUL: 4},
                  counts={HARMFUL: {ENGAGED: 3, REFUSED: 1}})  # fmt: skip
    assert settled_failure(Gate(max_engaged=0.2), known) == "engaged_rate ≥ 3/10 > 0.2"
    assert settled_failure(Gate(max_engaged=0.3), known) is None  # 3/10 is still allowed
    assert settled_failure(Gate(min_refusal=0.8), known) == "refusal_rate ≤ 7/10 < 0.8"


# --- a real evaluation stops where its verdict is settled ----------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_llama(tmp_path_factory.mktemp("settle") / "m", seed=0))


def test_a_stopped_evaluation_generated_what_the_full_one_did(model):
    prompts = PromptSets(harmful=PADDED_PROMPTS[:5], benign=PADDED_PROMPTS[5:9],
                         task=[TaskItem(p, "4") for p in PADDED_PROMPTS[9:12]])  # fmt: skip
    settings = {"batch_size": 2, "max_new_tokens": 6, "progress": False}
    seen: list[Known] = []

    def never(known: Known) -> None:
        seen.append(Known(dict(known.sizes), dict(known.judged), {k: dict(v) for k, v in
                                                                  known.counts.items()},
                          known.broken))  # fmt: skip
        return None

    full = evaluate(model, prompts, settle=never, **settings)
    assert full.settled is None
    assert [k.judged.get(HARMFUL, 0) for k in seen][:3] == [2, 4, 5], "harmful prompts first"
    plain = evaluate(model, prompts, **settings)
    assert [r["response"] for r in full.records] == [r["response"] for r in plain.records]

    stopped = evaluate(model, prompts, settle=lambda k: "enough" if k.judged.get(HARMFUL, 0) >= 4
                       else None, **settings)  # fmt: skip
    assert stopped.settled == {"reason": "enough", "replies": 4, "of": 12}
    summary = stopped.summary()
    assert summary["settled"]["reason"] == "enough"
    assert summary["refusal_rate"] is None and summary["task_accuracy"] is None
    # a gate settled on the first harmful replies: what the full evaluation measured fails it
    harmful = full.outcomes[HARMFUL]
    gate = (Gate(max_engaged=0.0, max_broken=1.0) if harmful.get(ENGAGED) else
            Gate(max_engaged=1.0, max_broken=0.0))  # fmt: skip
    assert harmful.get(ENGAGED) or harmful.get(BROKEN), "the tiny model engages or breaks"
    settled = evaluate(model, prompts, settle=GateSettle(gate), **settings)
    assert settled.settled is not None and settled.settled["replies"] <= 6
    assert not gate.passes(full.summary())


# --- a search: the same trials asked, the same choice ---------------------------------------------


class SettlingRunner(FakeRunner):
    """Replies from the recipe's numbers, deterministically (no model), judged batch by batch
    as an evaluation with the job's ``settle`` is: a stopped trial gets the summary a stopped
    evaluation has. ``stopped`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def point(self, job, mean: float) -> Outcome:
        engaged = round(20 * mean * mean)  # the more fine-tune, the less safe
        harmful = [ENGAGED if i % 20 < engaged else REFUSED for i in range(0, 140, 7)]
        helpful = round(20 * min(1.0, 0.6 + mean))
        benign = [HELPFUL if i < helpful else REFUSED for i in range(20)]
        task = [False] * 20
        settle = job.settle
        reason = replay(harmful, benign, task, settle) if settle is not None else None
        if reason is not None:
            self.stopped += 1
            summary = EvalResult("m", None, None, None, 20, 20, 20,
                                 settled={"reason": reason}).summary()  # fmt: skip
            return Outcome(job, summary, seconds=0.0)
        summary = full_summary(harmful, benign, task)
        summary["task_accuracy"] = round(mean, 3)
        return Outcome(job, summary, seconds=0.0)


def test_a_search_with_stopping_chooses_what_one_without_does(family, tmp_path, monkeypatch):
    """The same trials asked and the same choice; stopping before enough trials pass (what
    ``may_stop`` prevents) would change what the sampler asks, and here the choice."""
    pytest.importorskip("optuna")
    from mergekit_safety.tuning import settle
    from mergekit_safety.tuning.engine import tune
    from mergekit_safety.tuning.optuna_sampler import OptunaSampler
    from mergekit_safety.tuning.search_report import SearchResult, write_reports
    from mergekit_safety.tuning.study import Budget, open_study

    plan = fake_plan(family, tmp_path)
    gate = Gate(max_engaged=0.05, min_helpful=0.8)

    def search(stop: bool, name: str):
        budget = Budget(30, 2, seed=2, startup_trials=3, stop_failing=stop, study_name=name)
        runner = SettlingRunner()
        sampler = OptunaSampler(open_study(plan, budget, gate), plan, budget, gate)
        tuned = tune(sampler, runner, None, gate=gate, progress=False)
        rows, chosen = sampler.rows, tuned.chosen
        result = SearchResult(plan, budget, gate, {"model": "aligned"}, [], rows, chosen,
                              tuned.close)  # fmt: skip
        paths = write_reports(result, tmp_path / name, {})
        return rows, chosen, runner.stopped, paths

    full, chosen_full, none, _ = search(False, "full")
    cut, chosen_cut, stopped, paths = search(True, "cut")
    record = json.loads(paths["json"].read_text())
    assert record["trials_stopped"] == stopped
    assert f"{stopped} stopped once they could not pass the gate" in paths["md"].read_text()
    assert "| stopped: engaged_rate ≥ " in paths["md"].read_text()
    assert none == 0 and stopped >= 5, stopped
    assert [r.params for r in cut] == [r.params for r in full], "the same trials asked"
    assert sum(r.state == "stopped" for r in cut) == stopped
    for a, b in zip(full, cut, strict=True):
        if b.state == "stopped":
            assert not a.passes and "settled" in b.metrics and not b.passes
        else:
            assert a.metrics == b.metrics and a.passes == b.passes
    assert sum(r.passes for r in full) >= 3 and chosen_full is not None
    assert (chosen_cut.number, chosen_cut.params) == (chosen_full.number, chosen_full.params)

    monkeypatch.setattr(settle, "may_stop", lambda study, trials: True)
    eager, chosen_eager, _, _ = search(True, "eager")
    assert [r.params for r in eager] != [r.params for r in full]
    assert chosen_eager is None or chosen_eager.number != chosen_full.number


def test_decoding_by_group_stops_after_a_batch_with_the_same_ids(model):
    from mergekit_safety.evaluation.generation import generate_ids, load_model

    network, tokenizer = load_model(model, device="cpu")
    groups = [i % 3 for i in range(len(PADDED_PROMPTS))]
    settings = {"batch_size": 3, "max_new_tokens": 6, "progress": False}
    plain = generate_ids(network, tokenizer, PADDED_PROMPTS, **settings)
    batches: list[list[int]] = []

    def stop(indices, rows):
        batches.append(list(indices))
        return len(batches) == 2

    cut = generate_ids(network, tokenizer, PADDED_PROMPTS, groups=groups, stop=stop, **settings)
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches), "one group a batch"
    assert {groups[i] for batch in batches for i in batch} == {0}, "group 0 first"
    done = {i for batch in batches for i in batch}
    assert [cut[i] for i in sorted(done)] == [plain[i] for i in sorted(done)]
    assert all(cut[i] == [] for i in range(len(cut)) if i not in done)


def test_a_resident_network_encodes_its_prompts_once(model, monkeypatch):
    from mergekit_safety.evaluation import generation
    from mergekit_safety.evaluation.generation import load_model
    from mergekit_safety.evaluation.resident_models import ResidentNetwork

    network, tokenizer = load_model(model, device="cpu")
    view = ResidentNetwork(network, tokenizer)
    prompts = PromptSets(harmful=PADDED_PROMPTS[:3], benign=PADDED_PROMPTS[3:6])
    settings = {"batch_size": 2, "max_new_tokens": 4, "progress": False}
    fresh = evaluate(model, prompts, **settings)
    calls = []
    real = generation.encode
    monkeypatch.setattr(generation, "encode", lambda *a: calls.append(1) or real(*a))
    first = evaluate("trial 0", prompts, loader=view, **settings)
    second = evaluate("trial 1", prompts, loader=view, **settings)
    assert len(calls) == 1, "encoded for the first trial only"
    responses = [r["response"] for r in fresh.records]
    assert [r["response"] for r in first.records] == responses
    assert [r["response"] for r in second.records] == responses
