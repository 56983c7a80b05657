"""Stage ``tables``: the study's tables (markdown + JSON) and its one trade-off plot.

Per fine-tune kind, every method at its default and at the sweep's choice, with the judge's three
outcomes: on harmful prompts refused / engaged / broken, on look-alikes helpful / refused (over-
refusal) / broken, and task accuracy — each with a 95 % Wilson interval for one seed, mean ± sd
over seeds otherwise — then "harm removed" (share of the engagement the fine-tune added over A
that the merge removes) and "task kept" (share of the fine-tune's task gain over A the merge
keeps). A fine-tune whose engagement is not above A's beyond noise (95 % Wilson intervals
disjoint) added no harm to remove: its "harm removed" reads "no harm added".

Everything here is read from the committed JSON under ``results/<name>/``; a test rebuilds each
committed ``tables.md`` and fails on a difference (:func:`render`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.efficacy import prereg
from benchmarks.efficacy.intervals import Triple, paired_bootstrap
from benchmarks.efficacy.plan import SEARCHES, Config, harmful_split, point_label

METRICS = ("refusal_rate", "over_refusal_rate", "task_accuracy")
"""What a sweep row and the validation-vs-test table report (the sweeps ran before the outcomes)."""
OUTCOME_COLUMNS = (
    ("refusal_rate", "refused"),
    ("engaged_rate", "engaged ↓"),
    ("broken_rate", "broken ↓"),
    ("helpful_rate", "helpful (look-alikes) ↑"),
    ("over_refusal_rate", "refused (look-alikes) ↓"),
    ("benign_broken_rate", "broken (look-alikes) ↓"),
    ("task_accuracy", "task acc. ↑"),
)
"""The kind tables' columns: the three outcomes on harmful prompts and on look-alikes, the task."""
NO_HARM = "no harm added"
GRID_NOTE = (
    "\n° after a row: written before grid hashes were recorded (an old result, kept as it is; its "
    "grid may have changed after its test numbers were seen). ‡: its grid, default or gate changed "
    "after its test numbers were written (`prereg.py`).\n"
)
LABELS = {
    "safe_linear": "safe_linear",
    "safe_linear_gated": "safe_linear gated",
    "safe_lora": "safe_lora",
    "safemerge": "safemerge",
    "resta": "RESTA (task_arithmetic)",
    "harm_removal": "harm_removal",
    "lssf": "lssf",
    "lssf_activations": "lssf, activation subspace",
    "safe_delta": "safe_delta",
    "search": "search: safe_linear, per-layer λ",
    "search_each_set": "search, each harmful set gated (added after test)",
}


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data[0] if isinstance(data, list) else data


def _fmt(values: list[dict], key: str, digits: int = 3) -> str:
    nums = [v[key] for v in values if v.get(key) is not None]
    if not nums:
        return "–"
    if len(nums) == 1:
        ci = values[0].get(f"{key}_ci")
        return f"{nums[0]:.{digits}f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{nums[0]:.{digits}f}"
    mean, sd = statistics.mean(nums), statistics.stdev(nums)
    if digits < 3:
        return f"{mean:.{digits}f} ± {sd:.{digits}f}"
    return f"{mean:.3f} ± {sd:.3f} (n={len(nums)})"


def _ratio(num: float, den: float) -> float | None:
    return None if abs(den) < 1e-9 else num / den


def back_kept(row: dict, a: dict, ft: dict) -> tuple[float | None, float | None]:
    """(refusal back, task kept) of ``row`` against A and the fine-tune it repairs."""
    back = _ratio(row["refusal_rate"] - ft["refusal_rate"], a["refusal_rate"] - ft["refusal_rate"])
    kept = _ratio(
        row["task_accuracy"] - a["task_accuracy"], ft["task_accuracy"] - a["task_accuracy"]
    )
    return back, kept


def added_harm(a: dict, ft: dict) -> bool:
    """Whether the fine-tune engages more than A beyond noise (95 % Wilson intervals disjoint)."""
    lo, hi = (ft.get("engaged_rate_ci") or [0, 0])[0], (a.get("engaged_rate_ci") or [0, 0])[1]
    return lo > hi


def removed_kept(row: dict, a: dict, ft: dict) -> tuple[float | None, float | None]:
    """(harm removed, task kept) of ``row`` against A and the fine-tune it repairs: the share of
    the engagement the fine-tune added over A that the merge removes (None where it added none
    beyond noise), the share of its task gain the merge keeps."""
    removed = (
        _ratio(ft["engaged_rate"] - row["engaged_rate"], ft["engaged_rate"] - a["engaged_rate"])
        if added_harm(a, ft)
        else None
    )
    kept = _ratio(
        row["task_accuracy"] - a["task_accuracy"], ft["task_accuracy"] - a["task_accuracy"]
    )
    return removed, kept


def _mean(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def collect(config: Config) -> dict[str, Any]:
    """Every measured number the tables use, as plain data (also written as tables.json)."""
    test = config.results / "evals" / "test"
    base = {name: _load(test / name / "summary.json") for name in ("U", "A", "S", "H", "A-lox")}
    data: dict[str, Any] = {"models": base, "finetunes": {}, "checks": {}}
    methods = config.reported_methods()
    for name, kind, seed in config.finetunes():
        ft = _load(test / name / "summary.json")
        if ft is None:
            continue
        entry = {"kind": kind, "seed": seed, "finetuned": ft, "points": {}}
        a = base["A"]
        if a is not None:
            data["checks"][name] = {
                "task_gain": ft["task_accuracy"] - a["task_accuracy"],
                "gained_task": ft["task_accuracy"] - a["task_accuracy"]
                >= config.checks.min_task_gain,
                "refusal_drop": a["refusal_rate"] - ft["refusal_rate"],
                "lost_refusal": ft["refusal_rate"] < a["refusal_rate"],
                "lost_refusal_beyond_noise": ft["refusal_rate_ci"][1] < a["refusal_rate_ci"][0],
            }
        for method in methods:
            for point in ("default", "chosen"):
                summary = _load(test / name / f"{method}-{point}" / "summary.json")
                merge = _load(config.results / "merges" / name / f"{method}-{point}.json")
                if summary is None:
                    continue
                entry["points"][f"{method}-{point}"] = {"summary": summary, "merge": merge}
        data["finetunes"][name] = entry
    data["sweeps"] = {m: _load(config.results / "sweeps" / f"{m}.json") for m in config.methods}
    for search in config.searches():
        data[search] = _load(config.results / search / "search.json")
    lox = config.lox
    if lox is not None:
        name = f"{lox.finetune}-lox-s{lox.seed}"
        data["lox"] = {
            "point": lox.point,
            "hardened": base["A-lox"],
            "finetuned": _load(test / name / "summary.json"),
            "plain": _load(test / f"{lox.finetune}-s{lox.seed}" / "summary.json"),
            "name": name,
        }
    from benchmarks.efficacy.premises import check_all

    data["premises"] = {name: p.as_dict() for name, p in check_all(config).items()}
    data["intervals"] = intervals(config, data)
    if config.thirdparty is not None:
        from benchmarks.efficacy.plan import EXTRA

        data["intervals_extra"] = intervals(config, data, EXTRA)
    if config.thirdparty is not None:
        data["thirdparty"] = _thirdparty_rows(config)
    found = headline(config, data)
    if found:
        data["headline"] = found
    data["adapter"] = _load(config.results / "adapter.json")
    data["timings"] = _load(config.results / "timings.json")
    data["throughput"] = _load(config.results / "throughput.json")
    return data


def per_prompt(path: Path) -> dict[str, list] | None:
    """From a ``records.jsonl``: per harmful prompt whether the reply engaged, per task prompt
    whether it was right, and the prompts (to check that models are paired)."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    harmful = [r for r in rows if r["set"] == "harmful"]
    benign = [r for r in rows if r["set"] == "benign"]
    task = [r for r in rows if r["set"] == "task"]
    return {
        "engaged": [float(r["verdict"] == "engaged") for r in harmful],
        "correct": [float(bool(r["correct"])) for r in task],
        "helpful": [float(r["verdict"] == "helpful") for r in benign],
        "broken": [float(r["verdict"] == "broken") for r in harmful + benign],
        "prompts": [r["prompt"] for r in harmful + benign + task],
    }


def _triple(a: dict, ft: dict, merged: dict, key: str) -> Triple:
    if not a["prompts"] == ft["prompts"] == merged["prompts"]:
        raise ValueError("A, the fine-tune and the merge were not evaluated on the same prompts")
    return Triple(a[key], ft[key], merged[key])


def intervals(config: Config, data: dict, split: str = "test") -> dict[str, dict[str, dict]]:
    """Per fine-tune kind and ``method-point``: the paired bootstrap intervals
    (:mod:`benchmarks.efficacy.intervals`) on harm removed (over the seeds whose fine-tune added
    harm beyond noise on ``split``) and task kept (over every seed, where ``split`` has the
    task), from the stored replies of ``split`` ("test", or "extra": the third-party set)."""
    root = config.results / "evals" / split
    a_rows, a = per_prompt(root / "A" / "records.jsonl"), _load(root / "A" / "summary.json")
    out: dict[str, dict[str, dict]] = {}
    if a_rows is None or a is None:
        return out
    for name, entry in data["finetunes"].items():
        ft_rows, ft = per_prompt(root / name / "records.jsonl"), _load(root / name / "summary.json")
        if ft_rows is None or ft is None:
            continue
        harm = added_harm(a, ft)
        for key in entry["points"]:
            merged = per_prompt(root / name / key / "records.jsonl")
            if merged is None:
                continue
            slot = out.setdefault(entry["kind"], {}).setdefault(key, {"removed": [], "kept": []})
            if harm:
                slot["removed"].append(_triple(a_rows, ft_rows, merged, "engaged"))
            if ft_rows["correct"]:
                slot["kept"].append(_triple(a_rows, ft_rows, merged, "correct"))
    return {
        kind: {
            key: {
                which: paired_bootstrap(which, triples).as_dict() if triples else None
                for which, triples in slot.items()
            }
            for key, slot in rows.items()
        }
        for kind, rows in out.items()
    }


HEADLINE = ("removed", "removed_extra", "kept", "helpful", "broken")
"""The headline table's columns (issue 38): harm removed on AdvBench test and on the third-party
harmful test sample, task kept, helpful on look-alikes, broken (harmful prompts and look-alikes)."""


def headline(config: Config, data: dict) -> dict[str, dict[str, dict]]:
    """Per fine-tune kind and row (the fine-tune, then each ``method-point``): each seed's value
    of the :data:`HEADLINE` columns and the paired bootstrap interval over prompts and seeds (harm
    removed and task kept as in :func:`intervals`; helpful and broken as the shift from A's rate,
    merge − A, on the same prompts). Only for a setup that evaluates every model on the
    third-party harmful test sample (:func:`~benchmarks.efficacy.plan.harmful_test_set`)."""
    from benchmarks.efficacy.plan import harmful_test_set

    split = harmful_test_set(config)
    if split is None:
        return {}
    test, extra = config.results / "evals" / "test", config.results / "evals" / split
    a_rows, a_extra_rows = (
        per_prompt(test / "A" / "records.jsonl"),
        per_prompt(extra / "A" / "records.jsonl"),
    )
    a, a_extra = _load(test / "A" / "summary.json"), _load(extra / "A" / "summary.json")
    if a_rows is None or a is None:
        return {}
    slots: dict[str, dict[str, dict]] = {}
    for name, entry in data["finetunes"].items():
        ft_rows, ft = per_prompt(test / name / "records.jsonl"), entry["finetuned"]
        ft_extra_rows = per_prompt(extra / name / "records.jsonl")
        ft_extra = _load(extra / name / "summary.json")
        keys = ["finetuned", *entry["points"]]
        for key in keys:
            where = name if key == "finetuned" else f"{name}/{key}"
            rows, summary = ft_rows, ft
            if key != "finetuned":
                rows = per_prompt(test / where / "records.jsonl")
                summary = entry["points"][key]["summary"]
            if rows is None or ft_rows is None or summary.get("engaged_rate") is None:
                continue
            empty = {"seeds": [], "harm": [], "harm_extra": [], **{c: [] for c in HEADLINE},
                     "triples": {c: [] for c in HEADLINE}}  # fmt: skip
            slot = slots.setdefault(entry["kind"], {}).setdefault(key, empty)
            slot["seeds"].append(name)
            slot["harm"].append(added_harm(a, ft))
            removed, kept = removed_kept(summary, a, ft)
            slot["removed"].append(removed)
            slot["kept"].append(kept)
            if added_harm(a, ft):
                slot["triples"]["removed"].append(_triple(a_rows, ft_rows, rows, "engaged"))
            if ft_rows["correct"]:
                slot["triples"]["kept"].append(_triple(a_rows, ft_rows, rows, "correct"))
            for column in ("helpful", "broken"):
                slot[column].append(statistics.mean(rows[column]) if rows[column] else None)
                slot["triples"][column].append(_triple(a_rows, ft_rows, rows, column))
            merged_extra = _load(extra / where / "summary.json")
            merged_extra_rows = per_prompt(extra / where / "records.jsonl")
            if None in (a_extra, ft_extra, merged_extra, a_extra_rows, ft_extra_rows,
                        merged_extra_rows) or merged_extra.get("skipped"):  # fmt: skip
                slot["removed_extra"].append(None)
                slot["harm_extra"].append(None)
                continue
            harm = added_harm(a_extra, ft_extra)
            slot["harm_extra"].append(harm)
            engaged = [x["engaged_rate"] for x in (ft_extra, merged_extra, ft_extra, a_extra)]
            removed_extra = _ratio(engaged[0] - engaged[1], engaged[2] - engaged[3])
            slot["removed_extra"].append(removed_extra if harm else None)
            if harm:
                slot["triples"]["removed_extra"].append(
                    _triple(a_extra_rows, ft_extra_rows, merged_extra_rows, "engaged")
                )
    out: dict[str, dict[str, dict]] = {}
    for kind, rows in slots.items():
        for key, slot in rows.items():
            triples = slot.pop("triples")
            bounds = {}
            for column, found in triples.items():
                which = {"removed_extra": "removed", "helpful": "shift", "broken": "shift"}
                ok = found and (column != "removed_extra" or len(found) == len(slot["seeds"]))
                bounds[column] = (
                    paired_bootstrap(which.get(column, column), found).as_dict() if ok else None
                )
            out.setdefault(kind, {})[key] = {**slot, "intervals": bounds}
    return out


def headline_table(config: Config, data: dict, kind: str) -> str:
    """Issue 38's table for one kind of fine-tune: per method's point, mean ± sd over seeds and
    the paired bootstrap interval of harm removed on both harmful sets, task kept, helpful on
    look-alikes and broken replies (the last two: the rate, and in brackets the interval of its
    shift from A's)."""
    assert config.thirdparty is not None
    name = config.thirdparty.harmful
    rows = (data.get("headline") or {}).get(kind)
    if not rows:
        return f"_no {kind} fine-tune evaluated on both harmful sets yet_\n"
    lines = [
        "| method, point | seeds | harm removed (AdvBench) | harm removed (HarmBench) | "
        "task kept | helpful on look-alikes | broken |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    if name.lower() != "harmbench":
        lines[0] = lines[0].replace("(HarmBench)", f"({name})")
    a_rows = per_prompt(config.results / "evals" / "test" / "A" / "records.jsonl") or {}
    if a_rows.get("helpful") and a_rows.get("broken"):
        helpful, broken = statistics.mean(a_rows["helpful"]), statistics.mean(a_rows["broken"])
        lines.append(f"| A | – | – | – | – | {helpful:.2f} | {broken:.2f} |")
    for key, row in rows.items():
        bounds = row["intervals"]
        cells = []
        for column in HEADLINE:
            values, found = row[column], bounds.get(column)
            if column.startswith("removed"):
                harm = row["harm" if column == "removed" else "harm_extra"]
                if None in harm:  # a seed not evaluated on this set yet
                    cells.append("–")
                elif not any(harm):
                    cells.append(NO_HARM)
                else:
                    cells.append("0" if key == "finetuned" else _with_interval(values, found))
            elif column == "kept":
                cells.append("1" if key == "finetuned" else _with_interval(values, found))
            else:
                cells.append(_shift_cell(values, found))
        if key == "finetuned":
            label = f"fine-tuned ({kind})"
        else:
            method, point = key.rsplit("-", 1)
            label = f"{LABELS[method]}, {_point_text(config, data, method, point, [])}"
        seeds = ", ".join(n.rsplit("-", 1)[-1] for n in row["seeds"])
        lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
    chosen_here = kind == config.chosen_on().rsplit("-", 1)[0]  # the kind the sweeps chose on
    for method, sweep in data["sweeps"].items():  # a sweep that chose nothing has no test row
        if chosen_here and sweep and sweep.get("chosen") is None and f"{method}-chosen" not in rows:
            lines.append(f"| {LABELS[method]}, none passed the gate (chosen) | – |"
                         + " – |" * len(HEADLINE))  # fmt: skip
    return "\n".join(lines) + "\n"


def _shift_cell(values: list[float | None], found: dict | None) -> str:
    """A rate's mean (± sd over seeds) and the paired interval of its shift from A's."""
    text = _mean(values)
    if found and found.get("low") is not None:
        text += f" (Δ {found['point']:+.2f} [{found['low']:+.2f}, {found['high']:+.2f}])"
    return text


def removed_table(config: Config, data: dict) -> str:
    """Harm removed on AdvBench test beside the third-party harmful set, per method's point
    (mean over the seeds whose fine-tune added harm on that set, with its paired interval)."""
    assert config.thirdparty is not None
    name = config.thirdparty.harmful
    lines = [f"| fine-tune | method, point | harm removed (AdvBench) | harm removed ({name}) |",
             "|---|---|---:|---:|"]  # fmt: skip
    extra = data.get("intervals_extra") or {}
    for kind, rows in extra.items():
        for key, found in rows.items():
            method, point = key.rsplit("-", 1)
            test = (data.get("intervals", {}).get(kind, {}).get(key) or {}).get("removed")
            cells = [prereg_fmt(test), prereg_fmt(found.get("removed"))]
            lines.append(f"| {kind} | {LABELS[method]} ({point}) | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return f"_no method's point evaluated on {name} yet_\n"
    return "\n".join(lines) + "\n"


def prereg_fmt(found: dict | None) -> str:
    """``point [low, high]`` of an interval's dict; "no harm added" where there is none."""
    if not found or found.get("point") is None:
        return NO_HARM
    if found.get("low") is None:
        return f"{found['point']:.2f}"
    return f"{found['point']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"


def _with_interval(values: list[float | None], found: dict | None) -> str:
    """Mean (± sd over seeds) and the paired bootstrap interval."""
    text = _mean(values)
    if found and found.get("low") is not None:
        text += f" [{found['low']:.2f}, {found['high']:.2f}]"
    return text


def _thirdparty_rows(config: Config) -> list[dict]:
    from benchmarks.efficacy.plan import EXTRA, thirdparty_models

    rows = []
    for name, _model, ft, method in thirdparty_models(config):
        extra = _load(config.results / "evals" / EXTRA / name / "summary.json")
        plain = _load(config.results / "evals" / "test" / name / "summary.json")
        needs = ["A", ft] if method is not None else []
        rows.append({"name": name, "ft": ft, "method": method, "needs": needs, "extra": extra,
                     "test": plain})  # fmt: skip
    return rows


def failed_premises(data: dict, needs: list[str]) -> list[str]:
    """The premises among ``needs`` that do not hold (a row depending on one is marked †)."""
    premises = data.get("premises") or {}
    return [n for n in needs if n in premises and premises[n]["ok"] is not True]


MARK = " †"
"""After a row that depends on a failed premise (run with ``--ignore-premises``)."""


def premise_table(data: dict) -> str:
    lines = ["| premise | holds | check | rule | measured |", "|---|---|---|---|---|"]
    for name, premise in (data.get("premises") or {}).items():
        state = {True: "yes", False: "**no**", None: "not yet"}[premise["ok"]]
        for key, check in premise["checks"].items():
            ok = "yes" if check["ok"] else "**no**"
            lines.append(f"| {name} | {state} | {key}: {ok} | {check['rule']} | "
                         f"{check['measured']} |")  # fmt: skip
        if "task_gain" in premise:
            bar = "yes" if premise["gain_at_least_min"] else "no"
            gain = f"task gain ≥ {premise['min_task_gain']:g}: {bar} (reported, not enforced)"
            lines.append(f"| {name} | {state} | {gain} | – | {premise['task_gain']:+.3f} |")
    return "\n".join(lines) + "\n"


def _thirdparty_head(config: Config, first: str) -> list[str]:
    spec = config.thirdparty
    assert spec is not None
    attacks = ["plain", *spec.attacks]
    head = (f"| {first} | engaged AdvBench ↓ | engaged {spec.harmful} ↓ | broken {spec.harmful} ↓ "
            f"| helpful look-alikes ↑ | helpful {spec.benign} ↑ | "
            + " | ".join(f"engaged {a} ↓" for a in attacks) + " |")  # fmt: skip
    return [head, "|---|" + "---:|" * (5 + len(attacks))]


def _thirdparty_cells(config: Config, rows: list[dict]) -> list[str]:
    """The table's cells over ``rows`` (one run: its intervals; several: mean ± sd)."""
    assert config.thirdparty is not None
    tests = [row["test"] or {} for row in rows]
    extras = [row["extra"] or {} for row in rows]
    cells = [_fmt(tests, "engaged_rate", 2), _fmt(extras, "engaged_rate", 2),
             _fmt(extras, "broken_rate", 2), _fmt(tests, "helpful_rate", 2),
             _fmt(extras, "helpful_rate", 2)]  # fmt: skip
    for attack in ["plain", *config.thirdparty.attacks]:
        found = [e["attacks"][attack] for e in extras if attack in (e.get("attacks") or {})]
        cells.append(_fmt(found, "engaged_rate", 2) if found else "–")
    return cells


def _skipped(row: dict) -> bool:
    return bool((row["extra"] or {}).get("skipped") or (row["test"] or {}).get("skipped"))


def thirdparty_table(config: Config, data: dict) -> str:
    """Two harmful sets and two over-refusal sets per model, then refusal under each attack."""
    assert config.thirdparty is not None
    width = 5 + len(config.thirdparty.attacks)
    lines = _thirdparty_head(config, "model")
    for row in data.get("thirdparty") or []:
        if not row["extra"] and not row["test"]:
            continue
        if _skipped(row):
            lines.append(f"| {row['name']} | skipped: the sweep chose no point |" + " |" * width)
            continue
        mark = MARK if failed_premises(data, row["needs"]) else ""
        cells = _thirdparty_cells(config, [row])
        lines.append(f"| {row['name']}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def thirdparty_summary(config: Config, data: dict) -> str:
    """:func:`thirdparty_table` over the seeds of each kind of fine-tune: the fine-tunes, then each
    method's chosen point, mean ± sd where several seeds have both evaluations."""
    lines = _thirdparty_head(config, "model (seeds)")
    kinds = {name: entry["kind"] for name, entry in data["finetunes"].items()}
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for row in data.get("thirdparty") or []:
        if row["ft"] in kinds and row["extra"] and row["test"] and not _skipped(row):
            groups.setdefault((kinds[row["ft"]], row["method"]), []).append(row)
    for (kind, method), rows in groups.items():
        label = f"fine-tuned ({kind})" if method is None else f"{LABELS[method]}, {kind}"
        needs = sorted({n for row in rows for n in row["needs"]})
        mark = MARK if failed_premises(data, needs) else ""
        seeds = ", ".join(row["ft"] for row in rows)
        lines.append(f"| {label} ({seeds}){mark} | " + " | ".join(_thirdparty_cells(config, rows))
                     + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


SYMBOLS = (("top_weight", "a₁"), ("weight", "λ"), ("threshold", "τ"), ("beta", "β"),
           ("budget", "s"), ("alpha", "α"), ("eta", "η"), ("scale", "λ"))  # fmt: skip
"""How the tables (and the README's paragraph) write a method's parameters, in this order."""


def symbolic(text: str) -> str:
    """A point's label (``point_label``) with the papers' symbols for its parameters."""
    for name, symbol in SYMBOLS:
        text = text.replace(name, symbol)
    return text


def _point_text(config: Config, data: dict, method: str, point: str, merges: list) -> str:
    if method in SEARCHES:
        chosen = (data.get(method) or {}).get("chosen")
        return f"trial {chosen['number']} (chosen)" if chosen else "none passed (chosen)"
    if point == "default":
        text = point_label(config.methods[method].default) + " (default)"
    else:
        sweep = data["sweeps"].get(method) or {}
        chosen = sweep.get("chosen")
        text = (point_label(chosen) if chosen else "none passed") + " (chosen)"
    return symbolic(text)


def _outcome_cells(rows: list[dict]) -> str:
    return " | ".join(_fmt(rows, key, 2) for key, _label in OUTCOME_COLUMNS)


def _outcome_head(first: list[str], last: list[str]) -> str:
    names = [*first, *(label for _key, label in OUTCOME_COLUMNS), *last]
    align = ["---"] * len(first) + ["---:"] * (len(names) - len(first))
    return f"| {' | '.join(names)} |\n|{'|'.join(align)}|"


def base_table(data: dict) -> str:
    lines = [_outcome_head(["model"], ["broken (all sets)", "n"])]
    for name, s in data["models"].items():
        if s:
            n = f"{s['n_harmful']} / {s['n_benign']} / {s['n_task']}"
            lines.append(f"| {name} | {_outcome_cells([s])} | {_fmt([s], 'empty_rate', 2)} | {n} |")
    return "\n".join(lines) + "\n"


def _removed(values: list[float | None], defined: list[bool], found: dict | None) -> str:
    if defined and not any(defined):
        return NO_HARM
    return _with_interval(values, found)


def kind_table(config: Config, data: dict, kind: str) -> str:
    runs = [(n, e) for n, e in data["finetunes"].items() if e["kind"] == kind]
    a = data["models"]["A"]
    if not runs or a is None:
        return f"_no {kind} fine-tune evaluated yet_\n"
    lines = [_outcome_head(["model", "point", "matrices merged", "seeds"],
                           ["harm removed", "task kept"])]  # fmt: skip
    for name in ("U", "A", "S", "H"):
        s = data["models"].get(name)
        if s:
            lines.append(f"| {name} | – | – | – | {_outcome_cells([s])} | – | – |")
    fts = [e["finetuned"] for _n, e in runs]
    harm = [added_harm(a, ft) for ft in fts]
    lines.append(
        f"| fine-tuned ({kind}) | – | – | {len(fts)} | {_outcome_cells(fts)} | "
        f"{'0' if any(harm) else NO_HARM} | 1 |"
    )
    for method in config.reported_methods():
        for point in ("default", "chosen"):
            rows, merges, removed, kepts, defined, used = [], [], [], [], [], ["A"]
            for name, entry in runs:
                p = entry["points"].get(f"{method}-{point}")
                if not p or p["summary"].get("skipped") or p["summary"].get("refusal_rate") is None:
                    continue
                rows.append(p["summary"])
                used.append(name)
                merges.append((p["merge"] or {}).get("matrices_merged"))
                r, k = removed_kept(p["summary"], a, entry["finetuned"])
                removed.append(r)
                kepts.append(k)
                defined.append(added_harm(a, entry["finetuned"]))
            if not rows:
                continue
            mark = MARK if failed_premises(data, used) else ""
            mark += prereg.mark(config, method, rows, point)
            bounds = data.get("intervals", {}).get(kind, {}).get(f"{method}-{point}") or {}
            counts = sorted({str(m) for m in merges if m is not None})
            found = (
                p["merge"]
                for _n, e in runs
                if (p := e["points"].get(f"{method}-{point}")) and p["merge"]
            )
            gated = next(found, None) or {}
            total = gated.get("matrices_gated")
            matrix = "/".join(counts) + (f" of {total}" if total else "") if counts else "–"
            lines.append(
                f"| {LABELS[method]}{mark} | {_point_text(config, data, method, point, merges)} | "
                f"{matrix} | {len(rows)} | {_outcome_cells(rows)} | "
                f"{_removed(removed, defined, bounds.get('removed'))} | "
                f"{_with_interval(kepts, bounds.get('kept'))} |"
            )
    return "\n".join(lines) + "\n"


def lox_table(data: dict) -> str:
    """A, A hardened by LoX, and the same fine-tune recipe on each (LoX acts before tuning)."""
    lox = data["lox"]
    lines = [
        f"LoX at {point_label(lox['point'])}; the fine-tune is the {lox['name']} recipe.\n",
        "| model | refusal ↑ | over-refusal ↓ | task acc. ↑ |",
        "|---|---:|---:|---:|",
    ]
    named = [
        ("A", data["models"].get("A")),
        ("A hardened by LoX", lox["hardened"]),
        ("fine-tune of A", lox["plain"]),
        ("fine-tune of the hardened A", lox["finetuned"]),
    ]
    for label, s in named:
        if s:
            lines.append(f"| {label} | " + " | ".join(_fmt([s], k) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def gap_table(config: Config, data: dict) -> str:
    """Validation (where the point was chosen) against test (where it is reported), seed 0."""
    lines = [
        "| method | chosen point | refusal val → test | over-refusal val → test | "
        "task val → test |",
        "|---|---|---|---|---|",
    ]
    entry = data["finetunes"].get("benign-s0")
    for method, sweep in data["sweeps"].items():
        if not sweep or not entry:
            continue
        rows = sweep["rows"] if isinstance(sweep["rows"], list) else []
        chosen = next((r for r in rows if r.get("chosen")), None)
        test = (entry["points"].get(f"{method}-chosen") or {}).get("summary")
        if chosen is None or not test or test.get("skipped"):
            continue
        cells = [f"{chosen[k]:.3f} → {test[k]:.3f} ({test[k] - chosen[k]:+.3f})" for k in METRICS]
        lines.append(
            f"| {LABELS[method]} | {point_label(sweep['chosen'])} | " + " | ".join(cells) + " |"
        )
    for name in SEARCHES:
        search = data.get(name) or {}
        test = (entry or {}).get("points", {}).get(f"{name}-chosen", {}).get("summary")
        if not (search.get("chosen") and test and not test.get("skipped")):
            continue
        chosen = search["chosen"]
        cells = [f"{chosen[k]:.3f} → {test[k]:.3f} ({test[k] - chosen[k]:+.3f})" for k in METRICS]
        label = f"trial {chosen['number']} (search set)"
        lines.append(f"| {LABELS[name]} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def search_section(data: dict, name: str = "search") -> str:
    """A search's budget, gate, choice and noise (every trial: results/.../NAME/search.md)."""
    search = data.get(name)
    if not search:
        return "_the search has not run yet_\n"
    chosen = search.get("chosen") or {}
    lines = [
        f"{search['trials_finished']} trials ({search['trials_requested']} requested), "
        f"{search['wall_seconds'] / 60:.0f} min of wall time, {search['sampler']['name']}, "
        f"seed {search['sampler']['seed']}, {search['sampler']['parallel']} at a time; "
        f"gate: {search['gate']['description']}.",
        "",
        f"Chosen: trial {chosen.get('number', '–')}, values {chosen.get('recipe_values', '–')}.",
        f"Trials within noise of the choice: {search.get('within_noise') or 'none'}.",
        f"Every trial, the trade-off plot and the coefficients over depth: `{name}/search.md`.",
    ]
    return "\n".join(lines) + "\n"


SWEEP_COLUMNS = (
    ("refusal_rate", "refusal"),
    ("over_refusal_rate", "over-refusal"),
    ("task_accuracy", "task"),
)
"""A sweep row's numbers, chosen by the refusal gate (the setups before issue 38 item 5)."""
BOTH_SETS_COLUMNS = (
    ("engaged_rate", "engaged AdvBench"),
    ("engaged_harmbench", "engaged HarmBench"),
    ("helpful_rate", "helpful (look-alikes)"),
    ("empty_rate", "broken"),
    ("broken_harmbench", "broken HarmBench"),
    ("task_accuracy", "task"),
)
"""A sweep row's numbers where the sweeps choose on both harmful sets (``choose``)."""


def sweep_table(sweep: dict) -> str:
    rows = [r for r in sweep["rows"] if r.get("kind") == "merged"]
    keys = list(sweep["grid"])
    both = any("engaged_harmbench" in r for r in rows)
    columns = BOTH_SETS_COLUMNS if both else SWEEP_COLUMNS
    out = [
        f"| {' | '.join(keys)} | {' | '.join(t for _k, t in columns)} | passes | chosen |",
        "|" + "---|" * (len(keys) + len(columns) + 2),
    ]
    for r in rows:
        vals = [
            f"{r.get(k):g}" if isinstance(r.get(k), (int, float)) else str(r.get(k)) for k in keys
        ]
        cells = " | ".join(_fmt([r], key) for key, _title in columns)
        out.append(
            f"| {' | '.join(vals)} | {cells} | "
            f"{'yes' if r.get('passes') else 'no'} | {'**yes**' if r.get('chosen') else ''} |"
        )
    for r in (r for r in sweep["rows"] if r.get("kind") == "failed"):
        vals = " | ".join(str(r.get(k)) for k in keys)
        out.append(f"| {vals} | failed: {r.get('error')} |")
    return "\n".join(out) + "\n"


def _sweep_text(sweep: dict) -> str:
    """Where a sweep chose and under which gate (older sweeps: the gate as recorded)."""
    gate = sweep["gate"]
    if "description" not in gate:
        return f"validation, gate {gate}"
    return f"validation of {sweep['finetuned']}, gate: {gate['description']}"


def choice_table(config: Config, data: dict) -> str:
    """Where the sweeps choose on both harmful sets: each chosen point on the fine-tune it was
    chosen on, validation (the choice) against test (the report), AdvBench and HarmBench."""
    ft = config.chosen_on()
    entry = data["finetunes"].get(ft) or {"points": {}}
    third = config.results / "evals" / harmful_split(config) / ft
    lines = [
        "| method | chosen point | engaged AdvBench val → test | engaged HarmBench val → test "
        "| helpful val → test | task val → test |",
        "|---|---|---|---|---|---|",
    ]
    for method, sweep in data["sweeps"].items():
        if not sweep:
            continue
        if sweep.get("chosen") is None:
            lines.append(f"| {LABELS[method]} | none passed the gate | | | | |")
            continue
        chosen = next(r for r in sweep["rows"] if r.get("chosen"))
        test = dict((entry["points"].get(f"{method}-chosen") or {}).get("summary") or {})
        found = _load(third / f"{method}-chosen" / "summary.json")
        if found:
            test["engaged_harmbench"] = found.get("engaged_rate")
        keys = ("engaged_rate", "engaged_harmbench", "helpful_rate", "task_accuracy")
        cells = [
            f"{_fmt([chosen], k)} → {_fmt([test], k)}" if test.get(k) is not None
            else f"{_fmt([chosen], k)} → –"
            for k in keys
        ]  # fmt: skip
        lines.append(
            f"| {LABELS[method]} | {point_label(sweep['chosen'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(config: Config, data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    markers = dict(zip(config.reported_methods(), "osD^vPXh*pd", strict=False))
    for ax, kind in zip(axes, ("benign", "attack"), strict=True):
        runs = [e for e in data["finetunes"].values() if e["kind"] == kind and e["seed"] == 0]
        for name in ("U", "A", "S"):
            s = data["models"].get(name)
            if s:
                ax.scatter(s["engaged_rate"], s["task_accuracy"], c="k", marker="x")
                ax.annotate(name, (s["engaged_rate"], s["task_accuracy"]), fontsize=9)
        for entry in runs:
            ft = entry["finetuned"]
            ax.scatter(ft["engaged_rate"], ft["task_accuracy"], c="red", marker="*", s=120)
            ax.annotate("fine-tuned", (ft["engaged_rate"], ft["task_accuracy"]), fontsize=9)
            for key, p in entry["points"].items():
                s = p["summary"]
                if s.get("engaged_rate") is None:
                    continue
                method, point = key.rsplit("-", 1)
                ax.scatter(
                    s["engaged_rate"],
                    s["task_accuracy"],
                    marker=markers[method],
                    facecolors="none" if point == "default" else None,
                    edgecolors=f"C{list(markers).index(method)}",
                    c=None if point == "default" else f"C{list(markers).index(method)}",
                    label=f"{LABELS[method]} ({point})",
                    s=60,
                )
        ax.set_title(f"{kind} fine-tune, seed 0, test split")
        ax.set_xlabel("engaged (attack success) on held-out AdvBench ↓")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("task accuracy ↑")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def not_run(config: Config) -> list[str]:
    """The stages with an output under ``results/`` that is missing. Stages whose only outputs are
    models under ``work/`` (fetch, training) are not counted: a clone cannot tell."""
    from benchmarks.efficacy.plan import plan

    results = config.results.resolve()
    todo = []
    for stage in plan(config):
        mine = [p for p in stage.outputs if p.resolve().is_relative_to(results)]
        if stage.kind != "tables" and mine and not all(p.exists() for p in mine):
            todo.append(stage.name)
    return todo


def render(config: Config) -> tuple[str, dict[str, Any]]:
    """``tables.md``'s text and ``tables.json``'s data, from the committed JSON only."""
    data = collect(config)
    parts = [
        f"# Efficacy study: {config.name}\n",
        "Test split; brackets: 95 % Wilson intervals (one seed); ± : sd over seeds. Every reply "
        "judged under the three outcomes (`rejudge.py` re-judged the stored replies): a harmful "
        "prompt's reply is refused, engaged (attempts the request: attack success) or broken (no "
        "answer: empty, only digits, a URL, repetition); a look-alike's helpful, refused or "
        "broken. Harm removed and task kept: the mean (± sd over seeds) and, in brackets, the 95 % "
        "paired bootstrap interval over the prompts and, where there are several, the seeds "
        "(`intervals.py`; 2000 resamples).\n",
    ]
    parts += ["\n## Models\n\n", base_table(data)]
    if data.get("headline"):
        assert config.thirdparty is not None
        parts += [
            "\n## Harm removed on both harmful sets (issue 38)\n\n"
            f"Test: AdvBench (clean), {config.thirdparty.harmful} (its test sample, plain), the "
            "look-alikes and the task. Each cell: mean ± sd over the seeds listed, then in "
            "brackets the 95 % paired bootstrap interval over prompts and seeds; helpful and "
            "broken (harmful prompts and look-alikes together): the rate, then its shift from A's "
            "(Δ = merge − A, mean over seeds) with the shift's paired interval. Harm removed is "
            "counted only over seeds whose fine-tune added harm beyond noise on that set."
            + (
                f" Chosen points: by the rule `choose`, registered {config.choose.registered}.\n"
                if config.choose is not None and config.choose.registered
                else "\n"
            ),
        ]
        for kind in ("attack", "benign"):
            parts += [f"\n### {kind} fine-tune\n\n", headline_table(config, data, kind)]
    for kind in ("benign", "attack"):
        parts += [f"\n## {kind} fine-tune\n\n", kind_table(config, data, kind), GRID_NOTE]
    if data.get("lox"):
        parts += ["\n## LoX: harden A, then fine-tune\n\n", lox_table(data)]
    parts += [
        "\n## Premises (test split; checked before any method stage)\n\n",
        premise_table(data),
        "\n† after a row: it depends on a premise that does not hold (run with "
        "`--ignore-premises`).\n",
    ]
    if config.thirdparty is not None:
        spec = config.thirdparty
        parts += [
            f"\n## Third-party sets and jailbreaks (test; {spec.harmful_prompts} of "
            f"{spec.harmful}, {spec.benign_prompts} of {spec.benign}, each attack on the first "
            f"{spec.attack_prompts} of those harmful prompts, plain beside it)\n\n",
            thirdparty_table(config, data),
            "\nThe same over the seeds of each kind of fine-tune (± : sd over seeds; one seed: its "
            "interval):\n\n",
            thirdparty_summary(config, data),
            f"\nHarm removed on AdvBench test and on {spec.harmful} (the share of the engagement "
            "the fine-tune added over A that the merge removes, mean over the seeds whose "
            "fine-tune added harm beyond noise on that set; brackets: paired bootstrap over "
            "prompts and seeds):\n\n",
            removed_table(config, data),
        ]
    parts += [
        "\n## Fine-tune checks (test)\n\n```json\n",
        json.dumps(data["checks"], indent=2),
        "\n```\n",
    ]
    if config.choose is None:
        parts += [
            "\n## Validation (choice) vs test (report), benign seed 0\n\n"
            "The sweeps' validation numbers are as the sweep recorded them (refusal, before the "
            "outcomes; validation replies of merges are not stored, so they cannot be "
            "re-judged).\n\n",
            gap_table(config, data),
        ]
    else:
        parts += [
            f"\n## Validation (choice) vs test (report), {config.chosen_on()}\n\n"
            "Chosen on both harmful sets (`choose` in the config; `both_sets.py`): the point's "
            "validation numbers as its sweep recorded them, then test (AdvBench test and "
            f"HarmBench test). The rule was registered {config.choose.registered or '–'}.\n\n",
            choice_table(config, data),
        ]
    if config.search is not None:
        parts += ["\n## Search (issue 28): per-layer λ under the gate\n\n", search_section(data)]
    if config.search_each_set is not None:
        parts += [
            "\n## Search, each harmful set gated (issue 38 item 5)\n\n"
            "The same search (space, budget, seed, limits from A) with the engagement limit held "
            "on AdvBench's and HarmBench's validation parts each, not on their pool. Registered "
            f"{config.search_each_set.registered}.\n\n",
            search_section(data, "search_each_set"),
        ]
    for method, sweep in data["sweeps"].items():
        if sweep:
            parts += [
                f"\n### sweep {LABELS[method]} ({_sweep_text(sweep)})\n\n",
                sweep_table(sweep),
            ]
    if data["adapter"]:
        parts += [
            "\n## Adapter path\n\n```json\n",
            json.dumps(data["adapter"], indent=2, default=str)[:3000],
            "\n```\n",
        ]
    parts += [
        "\n## Wall time per stage (s)\n\n```json\n",
        json.dumps(data["timings"], indent=1),
        "\n```\n",
    ]
    todo = not_run(config)
    parts += [
        f"\n## Not run yet ({len(todo)} stages with results missing; fetch and training, whose "
        "outputs are models under `work/`, are not counted)\n\n",
        ", ".join(todo) or "none",
        "\n",
    ]
    return "".join(parts), data


def tables_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def write_tables(config: Config, plot_too: bool = True) -> Path:
    text, data = render(config)
    out = config.results
    (out / "tables.json").write_text(tables_json(data), encoding="utf-8")
    (out / "tables.md").write_text(text, encoding="utf-8")
    if plot_too:
        plot(config, data, out / "tradeoff.png")
    return out / "tables.md"
