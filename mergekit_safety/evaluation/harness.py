"""lm-evaluation-harness tasks beside the safety rates: ``eval --lm-eval TASK[,TASK]``.

Users who already measure their models do it with lm-eval; its numbers belong next to refusal and
over-refusal in ``summary.json`` and in the card's ``model-index``. The model runs through lm-eval's
own ``hf`` model (``vllm`` with ``--backend vllm``) with the same device and dtype as our
evaluation; an adapter (``base+adapter``) through its ``peft`` argument. Tasks are lm-eval's
registry plus any YAML tasks under ``include`` (a local task over a local JSONL file runs offline).
lm-eval is an optional extra: ``pip install lm-eval`` (``pip install -e '.[lm-eval]'`` in a clone).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from mergekit_safety.core.errors import ConfigError, install_hint
from mergekit_safety.evaluation.adapters import adapter_rank, parse_model

STDERR = "_stderr"
"""Suffix of a metric's standard error in our records (lm-eval writes ``acc_stderr,none``)."""


def parse_tasks(text: str | None) -> list[str]:
    """``"arc_easy, hellaswag"`` → ``["arc_easy", "hellaswag"]``; empty for None."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def check_tasks(tasks: Sequence[str], include: str | None = None) -> None:
    """One line, before any model loads, when lm-eval is missing or a task is unknown."""
    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"--lm-eval-include: {include} is not a directory")
    manager = _task_manager(include)
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        where = f" or under {include}" if include else " (--lm-eval-include DIR adds local tasks)"
        raise ConfigError(
            f"--lm-eval: unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"not in lm-eval's registry{where}"
        )


def run_tasks(
    model: str,
    tasks: Sequence[str],
    *,
    include: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 16,
    backend: str = "transformers",
    chat_template: bool = False,
    limit: int | None = None,
    network: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Run ``tasks`` on ``model``: ``{task: {metric: value, metric_stderr: value, "n": count}}``
    plus ``"_meta"`` (lm-eval's version, the task versions, how the model was run).

    ``network`` (with its ``tokenizer``): a model already in memory (a search's trial), run
    through lm-eval's ``hf`` model as it is; ``model`` then only names it.
    """
    import lm_eval
    from lm_eval import simple_evaluate

    spec = parse_model(model)
    args: dict[str, Any] = {"pretrained": spec.base, "dtype": dtype or _default_dtype(device)}
    if spec.adapter is not None and backend == "vllm":  # lm-eval's vllm model: one LoRA request
        from mergekit_safety.evaluation.generation import vllm_lora_rank

        args["lora_local_path"] = spec.adapter
        args["max_lora_rank"] = vllm_lora_rank(adapter_rank(spec.adapter))
    elif spec.adapter is not None:
        args["peft"] = spec.adapter
    if backend != "vllm":
        args["device"] = device
    runner: Any = "vllm" if backend == "vllm" else "hf"
    if network is not None:
        from lm_eval.models.huggingface import HFLM

        runner = HFLM(pretrained=network, tokenizer=tokenizer, batch_size=batch_size)
        args = {"pretrained": model, "in_memory": True}
    output = simple_evaluate(
        model=runner,
        model_args=None if network is not None else args,
        tasks=list(tasks),
        batch_size=batch_size,
        task_manager=_task_manager(include),
        apply_chat_template=chat_template,
        limit=limit,
        log_samples=False,
    )
    metrics: dict[str, Any] = {}
    counts = output.get("n-samples", {})
    for task, values in output["results"].items():
        metrics[task] = {**_metrics(values), "n": counts.get(task, {}).get("effective")}
    metrics["_meta"] = {
        "lm_eval": getattr(lm_eval, "__version__", "unknown"),
        "versions": output.get("versions", {}),
        "higher_is_better": output.get("higher_is_better", {}),
        "model_args": {k: v for k, v in args.items() if k != "device"},
        "chat_template": chat_template,
        "limit": limit,
    }
    return metrics


def task_metrics(lm_eval: dict[str, Any] | None) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr) for every metric recorded, in order; none for no record."""
    rows = []
    for task, values in (lm_eval or {}).items():
        if task.startswith("_") or not isinstance(values, dict):
            continue
        for name, value in values.items():
            if name == "n" or name.endswith(STDERR) or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{name}{STDERR}")
            rows.append((task, name, float(value), stderr if isinstance(stderr, float) else None))
    return rows


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``"acc,none"`` keys → ``acc`` (``acc/filter`` for a filter other than none)."""
    out = {}
    for key, value in values.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name = metric if filter_name == "none" else f"{metric}/{filter_name}"
        if name.endswith("_stderr") or "_stderr/" in name:
            base = name.replace("_stderr", "")
            out[f"{base}{STDERR}"] = float(value)
        else:
            out[name] = float(value)
    return out


def _default_dtype(device: str) -> str:
    return "float32" if device == "cpu" else "auto"


@lru_cache(maxsize=4)
def _task_manager(include: str | None) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            f"--lm-eval needs lm-evaluation-harness: {install_hint('lm-eval', 'lm-eval')}"
        ) from None
    return TaskManager(include_path=include) if include else TaskManager()
