"""The option groups the commands share, each collapsed into one typed argument and validated
once, where the flags are read: ``evaluation`` (:class:`~mergekit_safety.evaluation.settings.
EvalSettings`), ``gate`` (:class:`~mergekit_safety.core.acceptance.Gate`), ``merging`` (mergekit's
``MergeOptions``) and ``ray`` (:class:`RaySettings`, or None without ``--ray``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

Command = Callable[..., Any]

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What ``--dtype`` takes in ``eval``, ``sweep``, ``search`` and ``calibrate``."""

JUDGE_HELP = (
    "Who judges the replies. keyword (default): refusal phrases. A classifier: wildguard "
    "(allenai/wildguard, 7B; also judges the look-alikes), llama-guard-3-1b | llama-guard-3-8b "
    "(meta-llama/Llama-Guard-3-1B/-8B, gated), harmbench (cais/HarmBench-Llama-2-13b-cls, 13B); "
    "or any Hub id or local model directory, its format read from its name or chat template; "
    "FORMAT:SOURCE names the format (wildguard, llama-guard, harmbench, classifier). Llama Guard "
    "and HarmBench judge only the harmful prompts; the keyword judge then judges the look-alikes. "
    "The classifier loads once, on the evaluation device; with HF_HUB_OFFLINE=1 a Hub model must "
    "already be downloaded."
)
"""``--judge``'s help, the same in ``eval``, ``sweep`` and ``search``."""


def _stack(command: Command, options: list[Callable[[Command], Command]]) -> Command:
    for option in reversed(options):
        command = option(command)
    return command


def _collapse(
    command: Command, into: str, names: tuple[str, ...], build: Callable[..., Any]
) -> Command:
    """A command that takes ``into`` = ``build(**those flags)`` in place of the flags ``names``
    (``build`` also sees the command's other arguments, read-only, as ``others``)."""

    @functools.wraps(command)
    def collapsed(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in names}
        kwargs[into] = build(**flags, others=kwargs)
        return command(*args, **kwargs)

    return collapsed


# --- evaluation ---------------------------------------------------------------------------------

EVALUATION_FLAGS = (
    "harmful", "benign", "task", "prompts_dir", "split", "column", "limit", "attacks",
    "attack_limit", "judge", "batch_size", "max_new_tokens", "device", "dtype", "backend",
    "lm_eval_tasks", "lm_eval_include", "lm_eval_chat_template", "lm_eval_limit",
)  # fmt: skip


def evaluation_options(*, device_help: str, auto_device: bool) -> Callable[[Command], Command]:
    """The prompt sets, jailbreaks, judge, generation and lm-eval flags of ``eval``, ``sweep``
    and ``search``, handed to the command as one ``evaluation`` argument. ``auto_device``:
    ``--device`` defaults to ``auto`` (cuda if any); else to cuda with ``--cuda``, else cpu.
    ``--quiet`` (the command's own flag) turns the evaluation's bars off."""

    def decorate(command: Command) -> Command:
        def build(others: dict[str, Any], **flags: Any) -> Any:
            return _evaluation(flags, others, auto_device)

        return _stack(_collapse(command, "evaluation", EVALUATION_FLAGS, build), [
            click.option("--harmful", metavar="SET[,SET]",
                         help="Harmful prompts: a .txt/.jsonl/.csv/.json file, a "
                         "third-party set (harmbench, donotanswer, donotanswer-harmful, "
                         "wsr-harmful) or a Hub dataset id [default: built-in]. Several, "
                         "comma-separated, are pooled and each also reported on its own."),
            click.option("--benign", help="Benign look-alike prompts, for helpfulness and "
                         "over-refusal: a file or a third-party set (rho-overrefusal, rho-edgy80, "
                         "rho-expanded70, wsr-benign) [default: built-in]."),
            click.option("--task", help="Task prompts with answers (.jsonl/.csv/.json), for "
                         "accuracy [default: built-in]."),
            click.option("--prompts", "prompts_dir", metavar="DIR", help="Directory holding "
                         "harmful.jsonl, benign.jsonl and task.jsonl (.txt/.csv/.json also)."),
            click.option("--split", default="train", show_default=True,
                         help="Split of a Hub dataset."),
            click.option("--column", help="The prompt field or column [default: prompt, else "
                         "question, goal, ...]."),
            click.option("--limit", type=click.IntRange(min=1),
                         help="Use the first N prompts of each set."),
            click.option("--attacks", metavar="NAME[,NAME]", help="Also ask each harmful prompt "
                         "wrapped in these jailbreaks: prefix_injection, refusal_suppression, "
                         "style_injection, aim, evil_confidant, few_shot, base64, "
                         "pyrit:<template> (templates read from the installed pyrit)."),
            click.option("--attack-limit", type=click.IntRange(min=1),
                         help="Wrap only the first N harmful prompts [default: all]."),
            click.option("--judge", default="keyword", show_default=True, metavar="JUDGE",
                         help=JUDGE_HELP),
            click.option("--batch-size", type=click.IntRange(min=1), default=16,
                         show_default=True),
            click.option("--max-new-tokens", type=click.IntRange(min=1), default=64,
                         show_default=True),
            click.option("--device", help=device_help),
            click.option("--dtype", type=click.Choice(DTYPE_CHOICES), help="Model dtype "
                         "[default: float32 on CPU, the checkpoint's own on GPU]."),
            click.option("--backend", type=click.Choice(["transformers", "vllm"]),
                         default="transformers", show_default=True,
                         help="Generation backend; vllm needs vLLM installed."),
            click.option("--lm-eval", "lm_eval_tasks", metavar="TASK[,TASK]", help="Also run "
                         "these lm-evaluation-harness tasks on each model (pip install lm-eval): "
                         "metrics go to summary.json and the card's model-index."),
            click.option("--lm-eval-include", type=click.Path(file_okay=False), help="A "
                         "directory of lm-eval task YAMLs (e.g. a task over a local JSONL file)."),
            click.option("--lm-eval-chat-template", is_flag=True, help="Apply the chat template "
                         "in lm-eval's prompts [default: off, as lm-eval]."),
            click.option("--lm-eval-limit", type=click.IntRange(min=1),
                         help="Use the first N documents of each task."),
        ])  # fmt: skip

    return decorate


def _evaluation(flags: dict[str, Any], others: dict[str, Any], auto_device: bool) -> Any:
    from mergekit_safety.core.errors import ConfigError
    from mergekit_safety.evaluation import harness
    from mergekit_safety.evaluation.settings import EvalSettings, LmEvalSettings, PromptSources

    prompt_keys = ("harmful", "benign", "task", "prompts_dir", "limit", "split", "column",
                   "attacks", "attack_limit")  # fmt: skip
    try:
        prompts = PromptSources(**{key: flags[key] for key in prompt_keys})
    except ConfigError as error:  # checked once, where the sources are built
        raise click.UsageError(str(error)) from None
    if flags["backend"] == "vllm":
        from mergekit_safety.evaluation.generation import vllm_available

        if not vllm_available():
            raise click.BadParameter("vllm is not installed (pip install vllm)",
                                     param_hint="--backend")  # fmt: skip
    tasks = harness.parse_tasks(flags["lm_eval_tasks"])
    if flags["lm_eval_include"] and not tasks:
        raise click.BadParameter("names no task to run: add --lm-eval TASK",
                                 param_hint="--lm-eval-include")  # fmt: skip
    device = flags["device"]
    if auto_device:
        from mergekit_safety.evaluation.generation import resolve_device

        try:
            device = resolve_device(device or "auto")
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--device") from None
    else:
        merging = others.get("merging")  # whichever of the two groups was read first
        cuda = others.get("cuda") or getattr(merging, "cuda", False)
        device = device or ("cuda" if cuda else "cpu")
    lm_eval = None
    if tasks:
        lm_eval = LmEvalSettings(
            tuple(tasks),
            flags["lm_eval_include"],
            flags["lm_eval_chat_template"],
            flags["lm_eval_limit"],
        )
    return EvalSettings(
        prompts=prompts,
        judge=flags["judge"],
        batch_size=flags["batch_size"],
        max_new_tokens=flags["max_new_tokens"],
        device=device,
        dtype=flags["dtype"],
        backend=flags["backend"],
        lm_eval=lm_eval,
        progress=not others.get("quiet", False),
    )


# --- the gate -----------------------------------------------------------------------------------

GATE_FLAGS = ("max_engaged", "min_helpful", "min_refusal", "max_over_refusal", "max_broken",
              "objective")  # fmt: skip


def gate_options(command: Command) -> Command:
    """The gate a choice is made under (``sweep``, ``search``, ``card``) and ``--objective``,
    handed to the command as one :class:`~mergekit_safety.core.acceptance.Gate` argument,
    ``gate``."""
    from mergekit_safety.core.acceptance import MAX_EMPTY, MIN_HELPFUL, Gate

    def build(others: dict[str, Any], **flags: Any) -> Gate:
        return Gate(**flags)

    return _stack(_collapse(command, "gate", GATE_FLAGS, build), [
        click.option("--max-engaged", type=click.FloatRange(0, 1),
                     help="Gate: the most attack success allowed (harmful prompts the reply "
                     "engages with; refused and broken replies are not), on each --harmful set."),
        click.option("--min-helpful", type=click.FloatRange(0, 1), default=MIN_HELPFUL,
                     show_default=True,
                     help="Gate: the least share of benign look-alikes answered (a broken or "
                     "over-refusing model fails)."),
        click.option("--min-refusal", type=click.FloatRange(0, 1),
                     help="Gate: the least refusal rate allowed (broken replies are no refusals), "
                     "on each --harmful set."),
        click.option("--max-over-refusal", type=click.FloatRange(0, 1),
                     help="Gate: the most over-refusal rate (benign prompts refused) allowed."),
        click.option("--max-broken", type=click.FloatRange(0, 1), default=MAX_EMPTY,
                     show_default=True,
                     help="Gate: the most broken replies (empty, digits, a URL, repetition) "
                     "allowed, over all prompt sets."),
        click.option("--objective", default="task_accuracy", show_default=True,
                     metavar="task_accuracy|lm_eval:TASK:METRIC",
                     help="What the choice maximizes among the passing points: the task "
                     "prompts' accuracy, or a higher-is-better metric of a --lm-eval task "
                     "(e.g. lm_eval:arc_easy:acc)."),
    ])  # fmt: skip


def check_objective(objective: str, tasks: list[str]) -> None:
    """--objective names task_accuracy or a metric of a task --lm-eval runs, higher-is-better."""
    from mergekit_safety.core.acceptance import OBJECTIVE, parse_lm_eval_key

    if objective == OBJECTIVE:
        return
    try:
        found = parse_lm_eval_key(objective)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--objective") from None
    if found is None:
        raise click.BadParameter(
            f"expected task_accuracy or lm_eval:TASK:METRIC; got {objective!r}",
            param_hint="--objective",
        )
    if found[0] not in tasks:
        raise click.BadParameter(
            f"{found[0]} is not among the --lm-eval tasks ({', '.join(tasks) or 'none given'})",
            param_hint="--objective",
        )


def needs_gate(gate: Any, flag: str, why: str = "needs a safety gate") -> None:
    """``flag`` (a sweep's ``--out``, a search) chooses: it needs a safety limit."""
    if not gate.active:
        raise click.BadParameter(
            f"{why}: give --max-engaged (or --min-refusal) and/or --max-over-refusal",
            param_hint=flag,
        )


# --- a search's trials -------------------------------------------------------------------------

BUDGET_FLAGS = ("trials", "parallel", "seed", "startup_trials", "storage", "study_name",
                "stop_failing")  # fmt: skip


def budget_options(command: Command) -> Command:
    """How many trials, how many at a time, the seed and where the study lives (``search``),
    handed to the command as one :class:`~mergekit_safety.tuning.study.Budget`, ``budget``
    (``study_name`` empty when not given: the command names it after the recipe)."""

    def build(others: dict[str, Any], study_name: str | None, **flags: Any) -> Any:
        from mergekit_safety.tuning.study import Budget

        return Budget(**flags, study_name=study_name or "")

    return _stack(_collapse(command, "budget", BUDGET_FLAGS, build), [
        click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
                     help="The trial budget in all: a rerun on the same --storage continues "
                     "to it."),
        click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Trials asked and evaluated at a time (Ray actors with --ray)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="The sampler's seed."),
        click.option("--startup-trials", type=click.IntRange(min=1), default=10,
                     show_default=True, help="Random trials before TPE models the results."),
        click.option("--storage", metavar="URL", help="Optuna storage, e.g. "
                     "sqlite:///search.db: a stopped search continues there [default: in "
                     "memory]."),
        click.option("--study-name",
                     help="The study in --storage [default: search-<recipe name>]."),
        click.option("--stop-failing/--no-stop-failing", default=True, show_default=True,
                     help="A trial stops evaluating once it cannot pass the gate whatever its "
                     "remaining replies (harmful prompts first; the keyword judge), recorded as "
                     "stopped (pruned); only once enough trials pass that Optuna's sampler "
                     "proposes the same trials: the choice is the same (docs/speed.md)."),
    ])  # fmt: skip


# --- merging ------------------------------------------------------------------------------------

MERGE_FLAGS = ("cuda", "lazy_unpickle", "trust_remote_code", "random_seed", "lora_merge_cache",
               "low_cpu_memory")  # fmt: skip


def merge_options(command: Command) -> Command:
    """mergekit-yaml's options for the merges a choice runs (``sweep``, ``search``), handed to
    the command as mergekit's ``MergeOptions``, ``merging``: quiet (one bar for the whole
    choice instead of mergekit's bars for every merge)."""

    def build(others: dict[str, Any], **flags: Any) -> Any:
        from mergekit.options import MergeOptions

        return MergeOptions(**flags, quiet=True)

    return _stack(_collapse(command, "merging", MERGE_FLAGS, build), [
        click.option("--cuda", is_flag=True,
                     help="Merge on the GPU, as mergekit-yaml --cuda does."),
        click.option("--lazy-unpickle", is_flag=True,
                     help="mergekit's lazy unpickler (less memory)."),
        click.option("--low-cpu-memory", is_flag=True,
                     help="Keep merge results on the accelerator."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Trust remote code in model repos."),
        click.option("--random-seed", type=int, help="Seed for randomised merge methods."),
        click.option("--lora-merge-cache", type=click.Path(file_okay=False),
                     help="Keep LoRA-merged inputs here [default: in the work dir, removed "
                     "after]."),
    ])  # fmt: skip


# --- Ray ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaySettings:
    """``--ray [ADDRESS]`` and ``--ray-workers``: where points or trials run."""

    address: str
    workers: int | None = None


def ray_options(what: str) -> Callable[[Command], Command]:
    """``--ray [ADDRESS]`` and ``--ray-workers`` as one ``ray`` argument (None without
    ``--ray``), Ray's installation checked now; ``what`` starts the help (what runs on Ray)."""

    def build(others: dict[str, Any], ray_address: str | None, ray_workers: int | None) -> Any:
        check_ray(ray_address, ray_workers)
        return None if ray_address is None else RaySettings(ray_address, ray_workers)

    def decorate(command: Command) -> Command:
        collapsed = _collapse(command, "ray", ("ray_address", "ray_workers"), build)
        return _stack(collapsed, [
            click.option(
                "--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
                callback=lambda _ctx, _param, value: _ray_address(value),
                help=f"{what} (pip install 'ray[client]'): one CPU each, one GPU each "
                "with --cuda. Alone (or `local`): a cluster on this machine for the run; else an "
                "existing cluster's address (`auto`, ray://HOST:10001). Put it after RECIPE.",
            ),
            click.option("--ray-workers", type=click.IntRange(min=1),
                         help="CPUs of the local cluster --ray starts [default: all of them]."),
        ])  # fmt: skip

    return decorate


def _ray_address(address: str | None) -> str | None:
    """--ray before RECIPE takes the recipe as its address: say so, not "Missing argument";
    an empty address (``--ray ""``, an unset variable) is no address: say so, not run serially."""
    if address is not None and not address.strip():
        raise click.BadParameter(
            "an empty address; give a cluster's address (auto, ray://HOST:10001), `local`, or "
            "--ray alone for a cluster on this machine",
            param_hint="--ray",
        )
    if address is not None and address.endswith((".yml", ".yaml")):
        raise click.BadParameter(
            f"took {address!r} as the cluster address; put --ray after RECIPE or write --ray local",
            param_hint="--ray",
        )
    return address


def check_ray(address: str | None, workers: int | None) -> None:
    """--ray-workers sizes a cluster this command starts; an existing one has its own. Ray must
    be installed (checked now, before any model is evaluated)."""
    if workers is not None and address != "local":
        raise click.BadParameter(
            "sizes the local cluster that --ray starts; an existing cluster has its own",
            param_hint="--ray-workers",
        )
    if address is not None:
        from mergekit_safety.cli.common import config_errors
        from mergekit_safety.tuning.ray_cluster import check_ray_installed

        with config_errors():
            check_ray_installed(address)
