"""``sweep --adapter`` with the aligned model loaded once, against loading it for every model.

Two sweeps, each run by both paths in fresh processes (``benchmarks/measure.py``: wall time and
the child's peak RSS), interleaved round by round, minima over rounds:

* ``demo``: ``recipes/adapter_safe_linear_gated.yml`` (the demo's 0.5M-parameter Llama and its
  rank-8 adapter), a λ grid;
* ``large``: a random Llama of ≥ 100M parameters (hidden 1024, the ≈0.5B model's MLP width, the
  demo's tokenizer) with a random rank-8 LoRA on every linear layer, plain ``safe_linear``.

Both paths run the same ``run_sweep`` (an ``OnDisk(adapter=True)`` runner) with the CLI's
evaluator; only its ``loader`` differs (``ResidentBase`` or none). Their sweep rows must be
identical, and the run says so.

    python -m benchmarks.adapter_sweep main --rounds 3
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import click
import torch

from benchmarks.measure import measure

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo"
LARGE = {"hidden": 1024, "intermediate": 2816, "layers": 9, "heads": 16, "kv_heads": 8}


def build_large(root: Path) -> Path:
    """aligned (random, float32) and a random rank-8 LoRA on it; the recipe; kept if present."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    recipe = root / "large.yml"
    if recipe.is_file():
        return recipe
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "aligned")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=LARGE["hidden"],
        intermediate_size=LARGE["intermediate"],
        num_hidden_layers=LARGE["layers"],
        num_attention_heads=LARGE["heads"],
        num_key_value_heads=LARGE["kv_heads"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "aligned")
    tokenizer.save_pretrained(root / "aligned")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    lora.save_pretrained(root / "adapter")
    body = {
        "merge_method": "safe_linear",
        "base_model": str(root / "aligned"),
        "models": [
            {"model": f"{root / 'aligned'}+{root / 'adapter'}", "parameters": {"weight": 0.7}}
        ],
        "dtype": "float32",
    }
    recipe.write_text(json.dumps(body), encoding="utf-8")  # JSON is YAML
    return recipe


def parameters(model: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118


@click.group()
def cli() -> None:
    pass


@cli.command()
@click.option("--recipe", required=True)
@click.option("--weights", required=True, help="comma-separated λ values")
@click.option("--mode", type=click.Choice(["resident", "reload"]), required=True)
@click.option("--limit", type=int, required=True)
@click.option("--tokens", type=int, required=True)
@click.option("--rows", "rows_path", required=True)
def child(recipe, weights, mode, limit, tokens, rows_path) -> None:
    """One sweep, as `mergekit-safety sweep --adapter` runs it; its rows to ROWS."""
    from mergekit.options import MergeOptions

    from mergekit_safety.evaluation.resident_models import ResidentBase
    from mergekit_safety.evaluation.settings import EvalSettings, PromptSources
    from mergekit_safety.tuning.grid import plan_sweep
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.runners import OnDisk, SerialRunner

    loading = _time_loading()
    loader = ResidentBase() if mode == "resident" else None
    settings = EvalSettings(PromptSources(limit=limit), max_new_tokens=tokens, progress=False,
                            dtype="float32")  # fmt: skip
    evaluator = settings.build(loader=loader)
    plan = plan_sweep(recipe, "weight", [float(w) for w in weights.split(",")])
    runner = SerialRunner(MergeOptions(quiet=True), OnDisk(adapter=True))
    result = run_sweep(plan, evaluator, runner, progress=False)
    Path(rows_path).write_text(json.dumps(result.rows(), indent=1), encoding="utf-8")
    Path(f"{rows_path}.load.json").write_text(json.dumps(loading), encoding="utf-8")


def _time_loading() -> dict[str, float]:
    """Wrap the evaluator's model loading: seconds spent getting each model ready and freeing it,
    the part of the sweep the resident base removes (the rest is generation and merging)."""
    import contextlib

    from mergekit_safety.evaluation import pipeline

    totals = {"load_s": 0.0, "models": 0}
    inner = pipeline._loaded

    @contextlib.contextmanager
    def timed(*args, **kwargs):
        start = time.perf_counter()
        manager = inner(*args, **kwargs)
        pair = manager.__enter__()
        totals["load_s"] += time.perf_counter() - start
        totals["models"] += 1
        try:
            yield pair
        finally:
            start = time.perf_counter()
            manager.__exit__(None, None, None)
            totals["load_s"] += time.perf_counter() - start

    pipeline._loaded = timed
    return totals


@cli.command()
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--limit", type=int, default=4, show_default=True, help="prompts per set")
@click.option("--tokens", type=int, default=8, show_default=True, help="max new tokens")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads per child")
@click.option("--workdir", type=click.Path(), default="/tmp/mergekit-safety-adapter-sweep")
@click.option("--out", type=click.Path(), default=str(ROOT / "benchmarks" / "adapter_sweep.json"))
def main(rounds, limit, tokens, threads, workdir, out) -> None:
    """Both paths on both sweeps, interleaved; minima; JSON to OUT."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = {
        "demo": (ROOT / "recipes" / "adapter_safe_linear_gated.yml", "0.3,0.5,0.7,0.9"),
        "large": (build_large(work), "0.3,0.5,0.7,0.9"),
    }
    sizes = {"demo": parameters(DEMO / "aligned"), "large": parameters(work / "aligned")}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    samples: dict[str, dict[str, list]] = {c: {"resident": [], "reload": []} for c in cases}
    rows: dict[str, dict[str, str]] = {c: {} for c in cases}
    for index in range(rounds):
        for case, (recipe, weights) in cases.items():
            modes = ["resident", "reload"] if index % 2 == 0 else ["reload", "resident"]
            for mode in modes:
                rows_path = work / f"{case}-{mode}.json"
                command = [sys.executable, "-m", "benchmarks.adapter_sweep", "child",
                           "--recipe", str(recipe), "--weights", weights, "--mode", mode,
                           "--limit", str(limit), "--tokens", str(tokens),
                           "--rows", str(rows_path)]  # fmt: skip
                sample = measure(command, env=env)
                loading = json.loads(Path(f"{rows_path}.load.json").read_text(encoding="utf-8"))
                samples[case][mode].append(
                    {
                        "wall": sample.wall,
                        "cpu": sample.cpu,
                        "rss": sample.rss,
                        "load": loading["load_s"],
                    }
                )
                rows[case][mode] = rows_path.read_text(encoding="utf-8")
                click.echo(f"round {index} {case:5} {mode:8} {sample.wall:7.2f} s wall "
                           f"{sample.cpu:7.2f} s cpu {loading['load_s']:6.2f} s loading "
                           f"{sample.rss / 2**20:7.0f} MiB")  # fmt: skip
    report = {"rounds": rounds, "limit": limit, "max_new_tokens": tokens, "cases": {}}
    for case in cases:
        best = {
            mode: {
                "wall_s": round(min(s["wall"] for s in runs), 2),
                "cpu_s": round(min(s["cpu"] for s in runs), 2),
                "loading_s": round(min(s["load"] for s in runs), 2),
                "peak_rss_mib": round(min(s["rss"] for s in runs) / 2**20),
            }
            for mode, runs in samples[case].items()
        }
        resident, reload = best["resident"], best["reload"]
        report["cases"][case] = {
            "parameters": sizes[case],
            "points": len(cases[case][1].split(",")),
            **best,
            "wall_ratio": round(resident["wall_s"] / reload["wall_s"], 3),
            "cpu_ratio": round(resident["cpu_s"] / reload["cpu_s"], 3),
            "rss_ratio": round(resident["peak_rss_mib"] / reload["peak_rss_mib"], 3),
            "identical_rows": rows[case]["resident"] == rows[case]["reload"],
            "samples": samples[case],
        }
    report["machine"] = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads_per_child": threads,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for case, data in report["cases"].items():
        click.echo(f"{case}: wall ×{data['wall_ratio']}, cpu ×{data['cpu_ratio']}, "
                   f"loading {data['resident']['loading_s']} s vs {data['reload']['loading_s']} s, "
                   f"peak RSS ×{data['rss_ratio']}, "
                   f"identical rows: {data['identical_rows']}")  # fmt: skip


if __name__ == "__main__":
    cli()
