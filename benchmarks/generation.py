"""Tokens/s of batched (left-padded) vs one-prompt-at-a-time greedy generation, in one run.

Both modes go through ``mergekit_safety.evaluation.generation.generate_ids``, the code
``mergekit-safety eval`` runs, on the same prompts; the token ids they produce are compared (they
must be identical), and tokens/s counts the tokens each prompt really gets (up to its end of
sequence), so the ratio is a ratio of wall-clock times for the same output. The modes are timed
interleaved, one batch's worth of prompts at a time, so a busy shared machine slows both alike.

Without ``--model``, a small random Llama is built in a temporary directory (a word-level tokenizer
over the prompts' words, with a chat template) and end-of-sequence is ignored, so every prompt gets
exactly ``--max-new-tokens`` tokens (a random model would otherwise stop at random places).

    python -m benchmarks.generation                       # the built model, Markdown table
    python -m benchmarks.generation --model recipes/demo/aligned \\
        --prompts recipes/demo/prompts/harmful.jsonl --json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% else %}<assistant> {{ m['content'] }} </s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_model(path: Path, prompts: list[str], hidden: int, layers: int) -> Path:
    """A random Llama, ``hidden`` wide and ``layers`` deep, with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>"]
    splitter = pre_tokenizers.Whitespace()
    words = {w for p in prompts for w, _span in splitter.pre_tokenize_str(p)}
    vocab = {token: i for i, token in enumerate(special + sorted(words - set(special)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = splitter
    core.add_special_tokens(special)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64 or 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def matmul_gflops(device: str, dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """The machine's dense rate: the best of ``repeats`` square ``size`` matmuls, GFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)"


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        "| mode | prompts | new tokens | seconds | tokens/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines[0] += " model GFLOP/s | share of matmul rate |"
    lines[1] += "---:|---:|"
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['prompts']} | {row['new_tokens']} | {row['seconds']:.2f} | "
            f"{row['tokens_per_s']:.1f} | {row['speedup']:.2f}× | {row['model_gflops']:.2f} | "
            f"{row['share_of_matmul']:.1%} |"
        )
    lines.append("")
    lines.append(
        f"Matmul rate: {report['matmul_gflops']:.1f} GFLOP/s ({report['dtype']} "
        f"{report['matmul_size']}² × {report['matmul_size']}², best of 5, before and after "
        "generation); model GFLOP/s = tokens/s × 2 × parameters (the weight matmuls of one "
        "decoding step, attention over the cache left out)."
    )
    lines.append(
        f"Model: {report['model']} ({report['parameters'] / 1e6:.1f} M parameters, "
        f"{report['dtype']}, {report['device']}); max new tokens {report['max_new_tokens']}"
        f"{' (end of sequence ignored)' if report['ignore_eos'] else ''}; identical outputs: "
        f"{'yes' if report['identical'] else 'NO'}. Machine: {report['machine']}; load average "
        f"{report['load_average'][0]:.1f} before, {report['load_average'][1]:.1f} after."
    )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    type=click.Path(file_okay=False, exists=True),
    help="A local model directory [default: build a small random Llama].",
)
@click.option(
    "--prompts", "prompts_file", help="A prompt file (.jsonl/.txt/.csv) [default: built-in sets]."
)
@click.option("--n-prompts", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--ignore-eos/--stop-at-eos",
    default=None,
    help="Generate exactly --max-new-tokens per prompt [default: only for the built model].",
)
@click.option("--hidden", type=click.IntRange(min=64), default=512, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the Markdown table.")
def main(
    model: str | None,
    prompts_file: str | None,
    n_prompts: int,
    batch_size: int,
    max_new_tokens: int,
    ignore_eos: bool | None,
    hidden: int,
    layers: int,
    device: str,
    dtype: str | None,
    as_json: bool,
) -> None:
    """Measure batched vs one-prompt-at-a-time generation throughput on one model."""
    from mergekit_safety.errors import ConfigError
    from mergekit_safety.evaluation import load_prompt_sets
    from mergekit_safety.evaluation.generation import generate_ids, load_model, resolve_device

    try:
        device = resolve_device(device)
        sets = load_prompt_sets(harmful=prompts_file)
    except (ValueError, ConfigError) as error:
        raise click.ClickException(str(error)) from None
    prompts = sets.harmful + ([] if prompts_file else sets.benign + [t.prompt for t in sets.task])
    prompts = (prompts * (n_prompts // max(1, len(prompts)) + 1))[:n_prompts]
    ignore_eos = model is None if ignore_eos is None else ignore_eos

    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            path = build_model(Path(scratch) / "bench", prompts, hidden, layers)
            label = f"random Llama, hidden {hidden}, {layers} layers (built)"
        else:
            path, label = Path(model), model
        network, tokenizer = load_model(str(path), device=device, dtype=dtype)
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": max_new_tokens if ignore_eos else None,
            "progress": False,
        }
        generate_ids(network, tokenizer, prompts[:2], batch_size=2, **kwargs)  # warm-up
        load_before = os.getloadavg()[0]
        weight_dtype = next(network.parameters()).dtype
        rate = matmul_gflops(device, weight_dtype)
        alone, batched, alone_s, batched_s = [], [], 0.0, 0.0
        # Interleaved, one batch's worth of prompts at a time, alternating which mode goes
        # first: a load change on a shared machine then hits both modes alike.
        for index, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = prompts[start : start + batch_size]
            for mode in (0, 1) if index % 2 == 0 else (1, 0):
                size = 1 if mode == 0 else batch_size
                rows, seconds = timed(
                    lambda c=chunk, b=size: generate_ids(
                        network, tokenizer, c, batch_size=b, **kwargs
                    )
                )
                if mode == 0:
                    alone, alone_s = alone + rows, alone_s + seconds
                else:
                    batched, batched_s = batched + rows, batched_s + seconds
        load_after = os.getloadavg()[0]
        rate = max(rate, matmul_gflops(device, weight_dtype))
        parameters = sum(p.numel() for p in network.parameters())
        used_dtype = str(next(network.parameters()).dtype).removeprefix("torch.")

    tokens = sum(len(row) for row in alone)
    base = tokens / alone_s
    rows = [
        {"mode": "one prompt at a time", "batch_size": 1, "seconds": alone_s},
        {
            "mode": f"batched ({batch_size} per batch)",
            "batch_size": batch_size,
            "seconds": batched_s,
        },
    ]
    for row in rows:
        row.update(prompts=len(prompts), new_tokens=tokens, tokens_per_s=tokens / row["seconds"])
        row["speedup"] = row["tokens_per_s"] / base
        row["model_gflops"] = row["tokens_per_s"] * 2 * parameters / 1e9
        row["share_of_matmul"] = row["model_gflops"] / rate
    report = {
        "model": label,
        "parameters": parameters,
        "dtype": used_dtype,
        "device": device,
        "max_new_tokens": max_new_tokens,
        "ignore_eos": ignore_eos,
        "identical": alone == batched,
        "ratio": batched_s and alone_s / batched_s,
        "matmul_gflops": rate,
        "matmul_size": 1024,
        "machine": machine(),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "rows": rows,
    }
    click.echo(json.dumps(report, indent=2) if as_json else markdown(report))


if __name__ == "__main__":
    main()
