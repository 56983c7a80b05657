"""What every subcommand shares: turning a user mistake into click's one-line error."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from mergekit_safety.user_errors import explain, run_cleanups, show_traceback
from mergekit_safety.user_errors import terminate_unwinds as terminate_unwinds  # for the commands

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What ``--dtype`` takes in ``eval`` and ``sweep``."""


def lm_eval_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--lm-eval``, ``--lm-eval-include``, ``--lm-eval-chat-template``, ``--lm-eval-limit``:
    lm-evaluation-harness tasks, the same in ``eval`` and ``sweep``."""
    options = [
        click.option(
            "--lm-eval",
            "lm_eval_tasks",
            metavar="TASK[,TASK]",
            help="Also run these lm-evaluation-harness tasks on each model (pip install lm-eval): "
            "metrics go to summary.json and the card's model-index.",
        ),
        click.option(
            "--lm-eval-include",
            type=click.Path(file_okay=False),
            help="A directory of lm-eval task YAMLs (e.g. a task over a local JSONL file).",
        ),
        click.option(
            "--lm-eval-chat-template",
            is_flag=True,
            help="Apply the chat template in lm-eval's prompts [default: off, as lm-eval].",
        ),
        click.option(
            "--lm-eval-limit",
            type=click.IntRange(min=1),
            help="Use the first N documents of each task.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Report a user mistake as ``Error: <message>`` with exit status 1, the way click does.

    What counts is :func:`mergekit_safety.user_errors.explain`'s list (our ConfigError, also wrapped
    by pydantic, and mergekit's own checks); a bug keeps its traceback, and ``--verbose`` or
    ``MERGEKIT_SAFETY_TRACEBACK=1`` shows the traceback for a mistake too. Either way, what a
    failed merge had written is removed first.
    """
    try:
        yield
    except click.ClickException:
        raise
    except BaseException as error:
        run_cleanups()
        message = None if show_traceback() else explain(error)
        if message is None:
            raise
        raise click.ClickException(message) from None


def _stack(command: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


NOTHING_PASSES = 3
"""Exit status when a sweep or search ran but nothing passes the gate (1: an error, 2: usage)."""


def merge_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """mergekit-yaml's options for the merges a choice runs (``sweep``, ``search``)."""
    return _stack(command, [
        click.option("--cuda", is_flag=True,
                     help="Merge on the GPU, as mergekit-yaml --cuda does."),
        click.option("--lazy-unpickle", is_flag=True,
                     help="mergekit's lazy unpickler (less memory)."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Trust remote code in model repos."),
        click.option("--random-seed", type=int, help="Seed for randomised merge methods."),
        click.option("--lora-merge-cache", type=click.Path(file_okay=False),
                     help="Keep LoRA-merged inputs here [default: in the work dir, removed "
                     "after]."),
    ])  # fmt: skip


def merge_options_from(
    *,
    cuda: bool,
    lazy_unpickle: bool,
    trust_remote_code: bool,
    random_seed: int | None,
    lora_merge_cache: str | None,
    **more: Any,
) -> Any:
    """mergekit's ``MergeOptions`` from :func:`merge_options`' flags (and ``more`` of its
    fields), quiet: one bar for the whole choice instead of mergekit's bars for every merge."""
    from mergekit.options import MergeOptions

    return MergeOptions(
        cuda=cuda,
        lazy_unpickle=lazy_unpickle,
        trust_remote_code=trust_remote_code,
        random_seed=random_seed,
        lora_merge_cache=lora_merge_cache,
        quiet=True,
        **more,
    )


GATE_FLAGS = ("max_engaged", "min_helpful", "min_refusal", "max_over_refusal", "max_broken")


def gate_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The gate a choice is made under (``sweep``, ``search``) and ``--objective``, handed to
    the command as one :class:`~mergekit_safety.acceptance.Gate` argument, ``gate``."""
    from mergekit_safety.acceptance import MAX_EMPTY, MIN_HELPFUL, Gate

    @functools.wraps(command)
    def with_gate(*args: Any, **kwargs: Any) -> Any:
        fields = {name: kwargs.pop(name) for name in GATE_FLAGS}
        kwargs["gate"] = Gate(**fields, objective=kwargs.pop("objective"))
        return command(*args, **kwargs)

    return _stack(with_gate, [
        click.option("--max-engaged", type=click.FloatRange(0, 1),
                     help="Gate: the most attack success allowed (harmful prompts the reply "
                     "engages with; refused and broken replies are not)."),
        click.option("--min-helpful", type=click.FloatRange(0, 1), default=MIN_HELPFUL,
                     show_default=True,
                     help="Gate: the least share of benign look-alikes answered (a broken or "
                     "over-refusing model fails)."),
        click.option("--min-refusal", type=click.FloatRange(0, 1),
                     help="Gate: the least refusal rate allowed (broken replies are no refusals)."),
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
    from mergekit_safety.acceptance import OBJECTIVE, parse_lm_eval_key

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


def prompt_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The prompt sets and generation settings of an evaluation (``sweep``, ``search``)."""
    return _stack(command, [
        click.option("--harmful", help="Harmful prompts: a file or a third-party set "
                     "(harmbench, ...) [default: built-in]."),
        click.option("--benign", help="Benign prompts, for over-refusal: a file or a third-party "
                     "set (rho-overrefusal, ...) [default: built-in]."),
        click.option("--task", help="Task prompts file, for task accuracy [default: built-in]."),
        click.option("--prompts", "prompts_dir", help="Directory holding the prompt sets."),
        click.option("--limit", type=click.IntRange(min=1),
                     help="Use the first N prompts of each set."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=64,
                     show_default=True),
        click.option("--device", help="Evaluation device [default: cuda with --cuda, else cpu]."),
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES),
                     help="Evaluation dtype, as for `mergekit-safety eval` [default: float32 on "
                     "CPU, the checkpoint's own on GPU]."),
        click.option("--judge", metavar="JUDGE", help=JUDGE_HELP),
    ])  # fmt: skip


def check_outputs(*, out: Path | None = None, report: Path | None = None,
                  storage: str | None = None) -> None:  # fmt: skip
    """Where a sweep or search will write takes files (its folder made for a sqlite
    ``--storage``, as for ``--out``): checked before any model is evaluated, not after."""
    from mergekit_safety.outputs import check_writable

    for label, where in (("--out", out), ("--report", report)):
        if where is not None:
            check_writable(where, label)
    if storage is not None:
        from mergekit_safety.search.study import prepare_storage

        prepare_storage(storage)


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


def ray_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--ray [ADDRESS]`` and ``--ray-workers``; ``what`` starts the help (what runs on Ray)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _stack(command, [
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
        from mergekit_safety.sweep.distributed import check_ray_installed

        with config_errors():
            check_ray_installed(address)
