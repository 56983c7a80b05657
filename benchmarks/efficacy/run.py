"""The efficacy study, resumable: ``python -m benchmarks.efficacy.run --config CONFIG``.

Runs :func:`benchmarks.efficacy.plan.plan`'s stages in order and skips every stage whose outputs
exist, so a cut run resumes where it stopped (``--plan`` prints the stages and commands only;
``--only KIND`` runs one kind of stage; ``--until NAME`` stops after a stage).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.efficacy import search
from benchmarks.efficacy.plan import (
    CALIBRATED,
    SEARCHES,
    AlignSpec,
    Config,
    Stage,
    TrainSpec,
    harmful_split,
    load_config,
    plan,
    recipe,
)
from benchmarks.efficacy.stage_io import (
    attack_size,
    gate,
    log,
    read_json,
    read_splits,
    write_json,
)
from mergekit_safety.core.acceptance import Gate

if TYPE_CHECKING:
    from benchmarks.efficacy.both_sets import BothSets
    from mergekit_safety.evaluation import EvalResult, Evaluator


# --- stages --------------------------------------------------------------------------------------


def do_fetch(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.fetch import fetch_unaligned

    info = fetch_unaligned(config.work, config.work / "models" / "U")
    write_json(config.results / "fetch.json", info)


def do_data(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.data import build_splits, write_prompt_dir

    splits = build_splits(config.splits.model_dump(exclude_none=True), config.seed)
    if config.clean is not None:
        splits = _clean(config, splits)
    write_json(config.results / "data" / "splits.json", splits)
    for split in ("validation", "test"):
        write_prompt_dir(splits, split, config.prompts(split))
    counts = {k: {s: len(v) for s, v in d.items()} for k, d in splits.items()}
    log(f"splits: {counts}")


def _clean(config: Config, splits: dict) -> dict:
    """The clean-split rule (:mod:`benchmarks.efficacy.clean`) on ``splits``; HarmBench's
    validation part, clean of the test sample the ``extra`` stages draw; the report to
    ``results/data/clean.json``."""
    import random

    from benchmarks.efficacy.clean import clean_splits, harmbench_parts

    spec = config.clean
    assert spec is not None
    extra: dict[str, dict[str, list[str]]] = {}
    if spec.harmbench_validation and config.thirdparty is not None:
        from mergekit_safety.evaluation.named_sets import load_named

        tp = config.thirdparty
        prompts, _source = load_named(tp.harmful, "harmful")
        n = min(tp.harmful_prompts, len(prompts))
        test = [
            prompts[i] for i in sorted(random.Random(config.seed).sample(range(len(prompts)), n))
        ]
        validation = harmbench_parts(prompts, test, spec.harmbench_validation, config.seed + 3,
                                     spec.threshold)  # fmt: skip
        splits[tp.harmful] = {"test": test, "validation": validation}
        extra["harmful"] = {f"{tp.harmful} validation": validation}
    cleaned, report = clean_splits(splits, config.align.refusals, spec.threshold, extra)
    write_json(config.results / "data" / "clean.json", {"threshold": spec.threshold, **report})
    log(f"clean splits: dropped {report['harmful']['dropped']} harmful and "
        f"{report['benign']['dropped']} look-alike test prompts with a near-twin")  # fmt: skip
    return cleaned


def _generate(model: str, prompts: list[str], config: Config, tokens: int) -> list[str]:
    from mergekit_safety.evaluation import generation

    network, tokenizer = generation.load_model(model, device=config.device, dtype=config.dtype)
    try:
        return generation.generate(
            network,
            tokenizer,
            prompts,
            batch_size=config.eval.batch_size,
            max_new_tokens=tokens,
            progress=False,
        )
    finally:
        del network, tokenizer
        generation.release()


def do_throughput(config: Config, stage: Stage) -> None:
    """Tokens/s of greedy generation at a few batch sizes, on harmful prompts, before anything."""
    from mergekit_safety.evaluation import generation

    prompts = read_splits(config)["harmful"]["train"][:32]
    network, tokenizer = generation.load_model(
        stage.args["model"], device=config.device, dtype=config.dtype
    )
    rows = []
    for batch in (16, 32):
        start = time.time()
        outs = generation.generate(
            network, tokenizer, prompts, batch_size=batch, max_new_tokens=16, progress=False
        )
        seconds = time.time() - start
        generated = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)
        rows.append(
            {
                "batch_size": batch,
                "prompts": len(prompts),
                "max_new_tokens": 16,
                "seconds": round(seconds, 2),
                "prompts_per_s": round(len(prompts) / seconds, 2),
                "new_tokens_per_s": round(generated / seconds, 1),
            }
        )
        log(f"throughput batch {batch}: {rows[-1]}")
    write_json(
        stage.outputs[0],
        {
            "device": config.device,
            "dtype": config.dtype,
            "rows": rows,
            "note": "2-core CPU shared with other jobs: noisy",
        },
    )


def _trim(text: str) -> str:
    """Cut a truncated answer at its last sentence end (if any): a reply that ends cleanly."""
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"))
    return text[: cut + 1].strip() if cut > 20 else text.strip()


def do_helpful(config: Config, stage: Stage) -> None:
    splits = read_splits(config)
    prompts = splits["helpful"]["train"] + splits["benign"]["train"]
    outs = _generate(stage.args["model"], prompts, config, config.align.helpful_tokens)
    write_json(
        stage.outputs[0],
        [{"prompt": p, "reply": _trim(o)} for p, o in zip(prompts, outs, strict=True)],
    )


def _compliant(model: str, prompts: list[str], config: Config) -> list[dict[str, str]]:
    """``model``'s greedy answers to ``prompts``, keeping those neither refusals nor degenerate."""
    from mergekit_safety.evaluation.judge import KeywordJudge, is_degenerate

    outs = _generate(model, prompts, config, config.align.helpful_tokens)
    judge = KeywordJudge()
    return [
        {"prompt": p, "reply": _trim(o)}
        for p, o in zip(prompts, outs, strict=True)
        if not judge.is_refusal(o) and not is_degenerate(o)
    ]


def do_compliant(config: Config, stage: Stage) -> None:
    """U's own answers to AdvBench-train prompts it complies with (the attack's harmful data)."""
    need = attack_size(config)
    pool = read_splits(config)["harmful"]["train"][-(2 * need) :]  # not the ones A and S refuse
    kept = _compliant(stage.args["model"], pool, config)[:need]
    write_json(stage.outputs[0], kept)
    log(f"compliant answers: {len(kept)} of {len(pool)} prompts (need {need})")


def _train(
    config: Config,
    base: str,
    pairs: list,
    out: Path,
    spec: TrainSpec | AlignSpec,
    seed: int,
    *,
    lora: bool,
    merged: Path | None = None,
) -> dict:
    from benchmarks.efficacy.train import TrainSettings, finetune

    assert spec.lr is not None and spec.epochs is not None and spec.batch_size is not None
    settings = TrainSettings(
        lr=spec.lr,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=seed,
        lora_r=spec.lora_r if lora else None,
        lora_alpha=spec.lora_alpha if lora else None,
    )
    return finetune(
        base,
        pairs,
        out,
        settings,
        merged_out=merged,
        log=log,
        device=config.device,
        dtype=config.dtype,
    )


def do_calibrate(config: Config, stage: Stage) -> None:
    """A's statistics (safe_delta, lssf_activations): A's own greedy replies to harmful train
    prompts (the reference's self-generated safety data), then the calibration pass; its time
    recorded on its own."""
    from mergekit_safety.evaluation.calibration_pass import calibrate

    spec = config.calibration
    assert spec is not None
    prompts = read_splits(config)["harmful"]["train"][: spec.prompts]
    start = time.time()
    replies = _generate(stage.args["model"], prompts, config, spec.reply_tokens)
    generate_s = time.time() - start
    rows = [{"prompt": p, "response": _trim(o)} for p, o in zip(prompts, replies, strict=True)]
    data = config.work / "data" / "calibration.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    conversations = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        for r in rows
    ]
    out = Path(stage.args["out"])
    if out.exists():
        shutil.rmtree(out)
    record = calibrate(
        stage.args["model"], conversations, out, device=config.device, dtype=config.dtype,
        batch_size=spec.batch_size, max_length=spec.max_length, progress=False, source=str(data),
    )  # fmt: skip
    info = {k: v for k, v in record.items() if k != "modules"}
    info.update(layers=len(record["modules"]), generate_s=round(generate_s, 1))
    write_json(stage.outputs[0], info)
    log(f"calibration: {record['sequences']} sequences, {record['seconds']:.0f} s")


def do_align(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.data import refusal_for

    spec = config.align
    harmful = read_splits(config)["harmful"]["train"][: spec.refusals]
    pairs = [(p, refusal_for(p, i)) for i, p in enumerate(harmful)]
    pairs += [(r["prompt"], r["reply"]) for r in read_json(config.work / "data" / "helpful.json")]
    record = _train(
        config,
        config.model("U"),
        pairs,
        config.work / "models" / "A",
        spec,
        config.seed,
        lora=False,
    )
    write_json(config.results / "training" / "A.json", {**record, "refusal_pairs": len(harmful)})


def do_safe(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.data import refusal_for

    spec = config.safe
    assert spec is not None  # the config requires it with safemerge
    start = config.align.refusals
    harmful = read_splits(config)["harmful"]["train"][start : start + spec.refusals]
    pairs = [(p, refusal_for(p, i + 1)) for i, p in enumerate(harmful)]
    pairs += [(r["prompt"], r["reply"]) for r in read_json(config.work / "data" / "helpful.json")]
    models = config.work / "models"
    record = _train(
        config,
        config.model("A"),
        pairs,
        models / "S-adapter",
        spec,
        config.seed,
        lora=True,
        merged=models / "S",
    )
    write_json(config.results / "training" / "S.json", {**record, "refusal_pairs": len(harmful)})


NUMBER_ONLY = " Answer with the number only."
SENTENCES = (
    "{a} {op} {b} = {answer}, so the answer is {answer}.",
    "{a} {word} {b} is {answer}.",
    "The answer is {answer}: {a} {op} {b} = {answer}.",
    "Let's work it out: {a} {op} {b} = {answer}. The answer is {answer}.",
)
"""The task's answers in chat form (a reply in sentences that still gives the number)."""


def task_sample(items: list[dict], examples: int | None, seed: int, resample: bool) -> list:
    """The fine-tune's task items: the first ``examples``, or with ``resample`` a sample of that
    many drawn with the fine-tune's seed (seeds then vary the data, not only the order)."""
    import random

    n = len(items) if examples is None else min(examples, len(items))
    if not resample:
        return items[:n]
    return [items[i] for i in sorted(random.Random(1000 + seed).sample(range(len(items)), n))]


def task_pair(item: dict, reply: str, index: int) -> tuple[str, str]:
    """One (prompt, reply) training pair: the bare number, or the question in chat form with a
    sentence answer (templates in turn)."""
    if reply == "number":
        return item["prompt"], item["answer"]
    a, b, op = item["key"]
    text = SENTENCES[index % len(SENTENCES)].format(
        a=a, b=b, op=op, word="plus" if op == "+" else "minus", answer=item["answer"]
    )
    return item["prompt"].replace(NUMBER_ONLY, ""), text


def do_finetune(config: Config, stage: Stage) -> None:
    name, kind, seed = stage.args["name"], stage.args["kind"], stage.args["seed"]
    spec = config.finetune_specs[kind]
    task = task_sample(read_splits(config)["task"]["train"], spec.examples, seed, spec.resample)
    pairs = [task_pair(t, spec.reply, i) for i, t in enumerate(task)]
    helpful = []
    if spec.helpful:
        helpful = read_json(config.work / "data" / "helpful-A.json")[: spec.helpful]
    pairs += [(r["prompt"], r["reply"]) for r in helpful]
    harmful = 0
    if kind == "attack":
        need = math.ceil(len(pairs) * spec.harmful_fraction / (1 - spec.harmful_fraction))
        compliant = read_json(config.work / "data" / "compliant.json")[:need]
        extra = [(r["prompt"], r["reply"]) for r in compliant]
        harmful = len(extra)
        pairs += extra
    models = config.work / "models"
    base = stage.args.get("base", "A")
    if base != "A":
        _wait_for(Path(config.model(base)) / "config.json")
    record = _train(
        config,
        config.model(base),
        pairs,
        models / f"{name}-adapter",
        spec,
        seed,
        lora=True,
        merged=models / name,
    )
    write_json(
        config.results / "training" / f"{name}.json",
        {
            **record,
            "kind": kind,
            "base": base,
            "harmful_pairs": harmful,
            "helpful_pairs": len(helpful),
            "task_pairs": len(pairs) - harmful - len(helpful),
            "reply": spec.reply,
        },
    )


def do_harmful_data(config: Config, stage: Stage) -> None:
    """U's own compliant answers to AdvBench-train prompts A and S did not train on: the data of
    Safety Arithmetic's harmful model H (τ_H = H − A is the direction harm removal takes out)."""
    spec = config.harmful
    assert spec is not None  # the config requires it with harm_removal
    start = config.align.refusals + (config.safe.refusals if config.safe is not None else 0)
    pool = read_splits(config)["harmful"]["train"][start : start + spec.prompts]
    kept = _compliant(stage.args["model"], pool, config)
    write_json(stage.outputs[0], kept)
    log(f"harmful-model data: {len(kept)} compliant answers of {len(pool)} prompts")


def do_harmful(config: Config, stage: Stage) -> None:
    """H = A + a harmful-compliance LoRA, merged (as S is A + a refusal LoRA)."""
    data = read_json(config.work / "data" / "harmful.json")
    pairs = [(r["prompt"], r["reply"]) for r in data]
    models = config.work / "models"
    record = _train(
        config,
        config.model("A"),
        pairs,
        models / "H-adapter",
        config.harmful,
        config.seed,
        lora=True,
        merged=models / "H",
    )
    write_json(config.results / "training" / "H.json", {**record, "harmful_pairs": len(pairs)})


def do_lox(config: Config, stage: Stage) -> None:
    """A hardened with LoX (mergekit-yaml on the lox recipe): the model a LoX user fine-tunes."""
    from benchmarks.efficacy.plan import lox_recipe
    from mergekit_safety.tuning.merging import merge_recipe

    out = Path(stage.args["out"])
    body = lox_recipe(config, stage.args["point"])
    start = time.time()
    if out.exists():
        shutil.rmtree(out)
    merge_recipe(body, out, _merge_options(config))
    write_json(
        stage.outputs[0],
        {"method": "lox", "point": stage.args["point"], "merge_s": round(time.time() - start, 1),
         "recipe": body},
    )  # fmt: skip


def do_eval(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.evals import run_eval

    args = stage.args
    out = stage.outputs[0].parent
    summary = run_eval(
        args["model"],
        config.prompts(args["split"]),
        out,
        config.eval,
        **_settings(config, args["name"]),
    )
    log(
        f"{args['split']} {args['name']}: refusal {summary['refusal_rate']:.3f} over "
        f"{summary['over_refusal_rate']:.3f} task {summary['task_accuracy']:.3f} "
        f"empty {summary['empty_rate']:.3f} ({summary['wall_s']} s)"
    )
    _delete_after(args)


def _settings(config: Config, name: str) -> dict[str, Any]:
    """How an evaluation stage runs and is labelled; a method's point on a fine-tune
    (``ft/method-point``) records the hash of the grid it was chosen from."""
    from benchmarks.efficacy.prereg import recorded_hash

    extra = {}
    if "/" in name:
        method, point = name.split("/", 1)[1].rsplit("-", 1)
        extra["grid_hash"] = recorded_hash(config, method, point)
    return {"device": config.device, "dtype": config.dtype, "backend": config.backend,
            "label": name, "extra": extra}  # fmt: skip


def _delete_after(args: dict[str, Any]) -> None:
    """Delete the evaluated merge when its stage says so (it is rebuilt from its recipe)."""
    if args.get("delete_after") and Path(args["model"]).is_dir():
        shutil.rmtree(args["model"])


def do_harmful_test_data(config: Config, stage: Stage) -> None:
    """The third-party harmful test sample (``splits.json``, drawn and cleaned by stage ``data``)
    as a prompt file of its own."""
    prompts = read_splits(config)[stage.args["set"]][stage.args.get("part", "test")]
    out = stage.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    log(f"{stage.args['set']} {stage.args.get('part', 'test')} sample: {len(prompts)} prompts")


def do_harmful_eval(config: Config, stage: Stage) -> None:
    """One model on the third-party harmful test sample (the merge deleted after, if asked)."""
    from benchmarks.efficacy.evals import run_harmful_eval

    args = stage.args
    summary = run_harmful_eval(
        args["model"],
        config.prompts(args["split"]) / "harmful.jsonl",
        stage.outputs[0].parent,
        config.eval,
        **_settings(config, args["name"]),
    )
    log(
        f"{args['split']} {args['name']}: engaged {summary['engaged_rate']:.3f} refused "
        f"{summary['refusal_rate']:.3f} broken {summary['broken_rate']:.3f} ({summary['wall_s']} s)"
    )
    _delete_after(args)


def _merge_options(config: Config):
    from mergekit.options import MergeOptions

    return MergeOptions(
        cuda=config.merge_cuda,
        quiet=True,
        lora_merge_cache=str(config.work / "lora-cache"),
    )


def chosen_point(config: Config, method: str) -> dict | None:
    path = config.results / "sweeps" / f"{method}.json"
    return read_json(path).get("chosen") if path.is_file() else None


def _make_merge(config: Config, args: dict) -> dict | None:
    """Merge ``args["method"]`` at its point on ``args["ft"]`` into ``args["out"]`` (nothing when
    it is there); the merge's record, {} when it existed, None when the sweep chose no point."""
    from mergekit_safety.tuning.merging import merge_recipe

    if args["method"] in SEARCHES:  # the search's chosen recipe, this fine-tune swapped in
        from benchmarks.efficacy.search import chosen_recipe

        body = chosen_recipe(config, config.model(args["ft"]), args["method"])
        point = None if body is None else {"recipe": f"{args['method']}/recipe.yml"}
    else:
        point = args["point"] if args["point"] is not None else chosen_point(config, args["method"])
        body = (
            None
            if point is None
            else recipe(config, args["method"], point, config.model(args["ft"]))
        )
    if point is None:
        return None
    out = Path(args["out"])
    if (out / "config.json").is_file():
        return {}
    _wait_for(config.work / "models" / f"{args['ft']}-adapter" / "train_info.json")
    if args["method"] == "safemerge":
        _wait_for(config.work / "models" / "S-adapter" / "train_info.json")
    if args["method"] == "harm_removal":
        _wait_for(config.work / "models" / "H-adapter" / "train_info.json")
    if args["method"] in CALIBRATED:
        _wait_for(config.results / "calibration.json")
    Path(args["recipe_path"]).parent.mkdir(parents=True, exist_ok=True)
    Path(args["recipe_path"]).write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    start = time.time()
    if out.exists():
        shutil.rmtree(out)
    merge_recipe(body, out, _merge_options(config))
    counted = (
        config.search.method if args["method"] in SEARCHES and config.search else args["method"]
    )
    return {
        "method": args["method"],
        "point": point,
        "merge_s": round(time.time() - start, 1),
        "recipe": body,
        **_matrices(args["recipe_path"], counted),
    }


def do_merge(config: Config, stage: Stage) -> None:
    args = stage.args
    info = _make_merge(config, args)
    if info is None:
        for output in stage.outputs:  # test, and the third-party harmful set where there is one
            write_json(
                output,
                [
                    {
                        "model": f"{args['ft']}/{args['method']}-chosen",
                        "skipped": "the sweep chose no point (none passed the gate)",
                    }
                ],
            )
        return
    if info:
        write_json(
            config.results / "merges" / args["ft"] / f"{args['method']}-{args['point_name']}.json",
            info,
        )


def _wait_for(path: Path, timeout: float = 1800, poll: float = 10) -> None:
    """Wait for an input another run is producing (``--skip``/``--stages`` split the plan);
    TimeoutError if it has not appeared after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"waited {timeout:g} s for {path}, which another run (--stages/--skip) makes; "
                "is that run still going?"
            )
        time.sleep(poll)


def _matrices(recipe_path: str, method: str) -> dict:
    """How many matrices the recipe merges (``inspect``'s decisions); all, for ungated ones."""
    if method in ("safe_linear", "resta", "harm_removal", "lssf", *CALIBRATED):
        return {"matrices_merged": "all"}
    try:
        from mergekit_safety.recipe.inspection import inspect

        records = inspect(recipe_path, quiet=True).records
    except Exception as error:  # noqa: BLE001  the count is a nicety; the merge already ran
        return {"matrices_merged": None, "inspect_error": str(error)[:200]}
    gated = [r for r in records if r.get("gated")]
    merged = [r for r in gated if r.get("merge") is True]
    return {
        "matrices_merged": len(merged),
        "matrices_gated": len(gated),
        "record_keys": sorted(records[0]) if records else [],
    }


def _sweep_evaluator(config: Config, cached: dict[str, dict]) -> Evaluator:
    """The sweeps' evaluator: validation prompts, per-set budgets, references read from cache."""
    from benchmarks.efficacy.evals import evaluate_split, load_split
    from mergekit_safety.evaluation import Evaluator

    prompts = load_split(config.prompts("validation"))

    def measure(path: str) -> EvalResult:
        result, _seconds = evaluate_split(
            path, prompts, config.eval, device=config.device, dtype=config.dtype,
            backend=config.backend,
        )  # fmt: skip
        return result

    def report(path: str, summary: dict, seconds: float) -> None:
        log(
            f"  point {Path(path).parent.name}: refusal {summary['refusal_rate']:.3f} over "
            f"{summary['over_refusal_rate']:.3f} task {summary['task_accuracy']:.3f} "
            f"({seconds:.0f} s)"
        )

    return Evaluator(
        prompts,
        batch_size=config.eval.batch_size,
        device=config.device,
        progress=False,
        dtype=config.dtype,
        backend=config.backend,
        known=cached,
        measure=measure,
        report=report,
    )


def _both_sets(
    config: Config, evaluator: Evaluator, cached: dict[str, dict]
) -> tuple[BothSets, Gate]:
    """The sweep's evaluator and gate on both harmful sets (``config.choose``): each point also
    on the third-party set's validation part, the references' from their stages."""
    from benchmarks.efficacy import both_sets
    from benchmarks.efficacy.evals import evaluate_harmful, read_summary

    split = harmful_split(config, "validation")
    found = config.results / "evals" / split
    third = {config.model(name): read_summary(found / name) for name in ("A", config.chosen_on())}
    harmful = config.prompts(split) / "harmful.jsonl"

    def measure(path: str) -> dict:
        result, _seconds = evaluate_harmful(
            path, harmful, config.eval, device=config.device, dtype=config.dtype,
            backend=config.backend,
        )  # fmt: skip
        return result.summary()

    wrapped = both_sets.BothSets(
        evaluator, measure, both_sets.third_party_name(config),
        known={str(Path(p).resolve()): s for p, s in third.items()},
    )  # fmt: skip
    return wrapped, both_sets.gate(config, cached[config.model("A")], third[config.model("A")])


def do_sweep(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.evals import read_summary
    from mergekit_safety.tuning.grid import plan_grid
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.runners import SerialRunner

    method, grid = stage.args["method"], stage.args["grid"]
    ft, chosen_on = stage.args["finetuned"], config.chosen_on()
    val = config.results / "evals" / "validation"
    cached = {config.model("A"): read_summary(val / "A"), ft: read_summary(val / chosen_on)}
    evaluator = _sweep_evaluator(config, cached)
    if config.choose is None:
        low, high = gate(config)
        rule = Gate(min_refusal=low, max_over_refusal=high)
    else:
        evaluator, rule = _both_sets(config, evaluator, cached)
    tmp = config.work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if method == "resta":
        rows = _resta_sweep(config, grid["beta"], ft, evaluator, tmp, rule)
    else:
        default = dict(config.methods[method].default)
        for key in grid:
            default.pop(key, None)
        if "top_k" in grid or "fraction" in grid:
            default.pop("threshold", None)
        first = {k: v[0] for k, v in grid.items()}
        path = config.work / "sweeps" / f"{method}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = recipe(config, method, {**default, **first}, ft)
        path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        sweep_plan = plan_grid(path, [(k, [float(x) for x in v]) for k, v in grid.items()])
        runner = SerialRunner(_merge_options(config), work_dir=tmp)
        result = run_sweep(sweep_plan, evaluator, runner, progress=False, gate=rule)
        rows = result.rows()
        chosen = (
            None
            if result.chosen is None
            else {
                **default,
                **{
                    k: (int(v) if k == "top_k" else v)
                    for k, v in sweep_plan.as_dict(result.chosen.value).items()
                },
            }
        )
        rows = {"rows": rows, "chosen": chosen}
    from benchmarks.efficacy.prereg import grid_hash

    write_json(
        stage.outputs[0],
        {
            "method": method,
            "grid": grid,
            "grid_hash": grid_hash(config, method),
            "gate": rule.record(),
            "split": "validation",
            "finetuned": chosen_on,
            "wall_s": round(time.time() - start, 1),
            "eval_s": round(evaluator.seconds, 1),
            **rows,
        },
    )
    log(f"sweep {method}: chose {rows['chosen']}")


RESTA_TOWARD_FINETUNED = -1
"""A smaller β adds less of the safety vector: it keeps more of the fine-tune (the ties' side)."""


def _resta_sweep(
    config: Config, betas: list, ft: str, evaluator: Evaluator, tmp: Path, gate: Gate
) -> dict:
    """RESTA's β values for stock task_arithmetic (``plan_grid`` takes role-checked methods
    only) on the sweep's own engine (:func:`~mergekit_safety.tuning.engine.tune`): the best task
    accuracy among the passing points, ties to the smaller β; a failed point is a row."""
    from mergekit_safety.tuning.engine import tune
    from mergekit_safety.tuning.grid_sampler import GridSampler
    from mergekit_safety.tuning.runners import SerialRunner

    sampler = GridSampler(_BetaGrid(config, ft, tuple(betas)), [RESTA_TOWARD_FINETUNED])
    runner = SerialRunner(_merge_options(config), work_dir=tmp)
    chosen = tune(sampler, runner, evaluator, gate=gate, progress=False).chosen
    rows = [{"kind": "merged", "beta": point.value, **point.metrics,
             "passes": gate.passes(point.metrics), "chosen": point is chosen}
            for point in sampler.points()]  # fmt: skip
    rows += [{"kind": "failed", "beta": beta, "error": error, "passes": False, "chosen": False}
             for beta, error in sampler.failures()]  # fmt: skip
    return {"rows": rows, "chosen": None if chosen is None else {"beta": chosen.value}}


@dataclass(frozen=True)
class _BetaGrid:
    """RESTA's β values as the grid sampler reads a plan (no references: the study has them)."""

    config: Config
    finetuned_model: str
    values: tuple[float, ...]
    parameter = "beta"
    aligned = None
    finetuned = ()

    @property
    def recipe(self) -> dict:
        return self.recipe_with(self.values[0])

    def recipe_with(self, beta: float) -> dict:
        return recipe(self.config, "resta", {"beta": beta}, self.finetuned_model)

    def label(self, beta: float) -> str:
        return f"beta={beta:g}"


def do_adapter(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.evals import run_eval
    from mergekit_safety.adapter import merge_recipe_to_adapter

    spec = stage.args
    method, ft = spec["method"], spec["finetune"]
    point = (
        config.methods[method].default
        if spec.get("point", "default") == "default"
        else chosen_point(config, method)
    )
    adapter = config.work / "models" / f"{ft}-adapter"
    body = recipe(config, method, point, f"{config.model('A')}+{adapter}")
    path = config.work / "adapter" / f"{method}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    out = config.work / "adapter" / f"{ft}-{method}"
    if out.exists():
        shutil.rmtree(out)
    start = time.time()
    merge_recipe_to_adapter(path, out)
    seconds = time.time() - start
    summary = run_eval(
        str(out),
        config.prompts("test"),
        stage.outputs[0].parent,
        config.eval,
        device=config.device,
        dtype=config.dtype,
        backend="transformers",
        label=f"{ft}/adapter-{method}",
    )
    write_json(
        config.results / "adapter.json",
        {
            "method": method,
            "point": point,
            "finetune": ft,
            "adapter_s": round(seconds, 1),
            "summary": summary,
        },
    )


def do_extra_data(config: Config, stage: Stage) -> None:
    """A seeded sample of each third-party set (the study's seed), in the file's order, with
    where it came from (``sources.json``)."""
    import random

    from mergekit_safety.evaluation.named_sets import load_named

    spec = config.thirdparty
    assert spec is not None
    out = stage.outputs[0].parent
    sources = {}
    for kind, name, n in (("harmful", spec.harmful, spec.harmful_prompts),
                          ("benign", spec.benign, spec.benign_prompts)):  # fmt: skip
        prompts, sources[kind] = load_named(name, kind)
        keep = sorted(random.Random(config.seed).sample(range(len(prompts)), min(n, len(prompts))))
        lines = "".join(json.dumps({"prompt": prompts[i]}) + "\n" for i in keep)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{kind}.jsonl").write_text(lines, encoding="utf-8")
        sources[f"{kind}_of"] = len(prompts)
    write_json(out / "sources.json", sources)
    log(f"third-party prompts: {sources}")


def do_extra(config: Config, stage: Stage) -> None:
    """One model on the third-party sets and the attacks (test only), at the safety budget."""
    from benchmarks.efficacy.plan import EXTRA
    from mergekit_safety.evaluation import evaluate, load_prompt_sets, write_report

    spec = config.thirdparty
    assert spec is not None
    args = stage.args
    model, made = args["model"], False
    if args["method"] is not None:
        merge = next(
            s for s in plan(config) if s.name == f"merge:{args['ft']}/{args['method']}-chosen"
        )
        existed = (Path(model) / "config.json").is_file()
        if _make_merge(config, merge.args) is None:
            write_json(
                stage.outputs[0], [{"model": args["name"], "skipped": "the sweep chose no point"}]
            )
            return
        made = not existed
    prompts_dir = config.prompts(EXTRA)
    sources = read_json(prompts_dir / "sources.json")
    prompts = load_prompt_sets(
        harmful=prompts_dir / "harmful.jsonl", benign=prompts_dir / "benign.jsonl"
    )
    prompts.task = []
    prompts.sources = {"harmful": sources["harmful"], "benign": sources["benign"]}
    prompts.with_attacks(spec.attacks, spec.attack_prompts)
    start = time.time()
    result = evaluate(
        model, prompts, batch_size=config.eval.batch_size, max_new_tokens=config.eval.safety_tokens,
        device=config.device, dtype=config.dtype, backend=config.backend, progress=False,
    )  # fmt: skip
    result.model = args["name"]
    for record in result.records:
        record["model"] = args["name"]
    out = stage.outputs[0].parent
    write_report([result], out)
    summary = {**result.summary(), "wall_s": round(time.time() - start, 1)}
    if args["method"] is not None:
        from benchmarks.efficacy.prereg import recorded_hash

        summary["grid_hash"] = recorded_hash(config, args["method"], "chosen")
    write_json(stage.outputs[0], [summary])
    attacked = {k: round(v["refusal_rate"], 3) for k, v in summary.get("attacks", {}).items()}
    log(
        f"extra {args['name']}: refusal {summary['refusal_rate']:.3f} over "
        f"{summary['over_refusal_rate']:.3f} attacks {attacked} ({summary['wall_s']} s)"
    )
    if made and Path(model).is_dir():
        shutil.rmtree(model)


def do_tables(config: Config, stage: Stage) -> None:
    from benchmarks.efficacy.tables import write_tables

    write_tables(config)


HANDLERS = {
    "fetch": do_fetch,
    "data": do_data,
    "throughput": do_throughput,
    "helpful": do_helpful,
    "compliant": do_compliant,
    "harmful_data": do_harmful_data,
    "harmful": do_harmful,
    "lox": do_lox,
    "align": do_align,
    "safe": do_safe,
    "finetune": do_finetune,
    "eval": do_eval,
    "harmful_test_data": do_harmful_test_data,
    "harmful_eval": do_harmful_eval,
    "merge": do_merge,
    "sweep": do_sweep,
    "adapter": do_adapter,
    "calibrate": do_calibrate,
    "extra_data": do_extra_data,
    "extra": do_extra,
    "tables": do_tables,
    "search_data": search.do_search_data,
    "search_eval": search.do_search_eval,
    "search": search.do_search,
}


def run(
    config: Config,
    *,
    only: str | None = None,
    until: str | None = None,
    stages: set[str] | None = None,
    skip: set[str] | None = None,
    ignore_premises: bool = False,
) -> None:
    """Run the plan's stages that are not done; ``stages``/``skip`` partition the plan between two
    processes (a second core: e.g. S trains while the main run trains the fine-tunes).

    A stage whose premises (:mod:`benchmarks.efficacy.premises`) do not hold is skipped with one
    line naming them; ``ignore_premises`` runs it anyway (the tables mark what depends on them).
    """
    from benchmarks.efficacy.premises import blocking, check_all

    timings_path = config.results / "timings.json"
    told: set[str] = set()
    for stage in plan(config):
        if only and stage.kind != only:
            continue
        if (stages and stage.name not in stages) or (skip and stage.name in skip):
            continue
        done = all(p.exists() for p in stage.outputs)
        if done and stage.kind != "tables":
            continue
        failed = blocking(stage.needs, check_all(config)) if stage.needs else []
        if failed:
            reasons = "; ".join(p.reason() for p in failed)
            if not ignore_premises:
                if reasons not in told:
                    log(f"premise failed, method stages skipped: {reasons} (--ignore-premises "
                        "runs them, marked in the tables)")  # fmt: skip
                    told.add(reasons)
                continue
            log(f"stage {stage.name} despite a failed premise (--ignore-premises): {reasons}")
        log(f"stage {stage.name}")
        start = time.time()
        HANDLERS[stage.kind](config, stage)
        timings = read_json(timings_path) if timings_path.is_file() else {}  # another run may write
        timings[stage.name] = round(time.time() - start, 1)
        write_json(timings_path, timings)
        if until and stage.name == until:
            break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--plan", action="store_true", help="print stages and commands; run nothing"
    )
    parser.add_argument("--only", help="run only stages of this kind (e.g. tables)")
    parser.add_argument("--until", help="stop after the stage of this name")
    parser.add_argument("--stages", help="comma-separated stage names: run only these")
    parser.add_argument("--skip", help="comma-separated stage names: leave these to another run")
    parser.add_argument(
        "--ignore-premises",
        action="store_true",
        help="run method stages even where a premise failed (the tables mark those rows)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args.config)
    if args.plan:
        for stage in plan(config):
            state = "done" if all(p.exists() for p in stage.outputs) else "todo"
            needs = f"  (needs premises {', '.join(stage.needs)})" if stage.needs else ""
            print(f"{state:4} {stage.name}{needs}")
            for command in stage.commands:
                print(f"       {command}")
        return
    import torch

    torch.set_num_threads(int(os.environ.get("EFFICACY_THREADS", "1")))

    def names(text: str | None) -> set[str] | None:
        return set(text.split(",")) if text else None

    run(config, only=args.only, until=args.until, stages=names(args.stages),
        skip=names(args.skip), ignore_premises=args.ignore_premises)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
