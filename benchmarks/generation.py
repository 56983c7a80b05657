"""Tokens/s of greedy generation, one prompt at a time and batched (left-padded) through
transformers' ``generate`` and through our own decoding loop, against the memory roofline and the
matmul rate measured in the same run.

Every mode goes through ``mergekit_safety.evaluation.generation.generate_ids``, the code
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
    python -m benchmarks.generation --model benchmarks/efficacy/work/smollm2/models/U \\
        --ignore-eos --no-alone --batch-size 16 --batch-size 32 --json
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


def memory_gbps(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """The machine's read bandwidth: the best of ``repeats`` sums over a ``megabytes`` float32
    tensor (far larger than any cache), GB/s."""
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        x.sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        "| mode | decoder | batch | prompts | new tokens | seconds | tokens/s | speed-up "
        "| memory roofline tokens/s | share of memory roofline | share of matmul rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['decoder']} | {row['batch_size']} | {row['prompts']} | "
            f"{row['new_tokens']} | {row['seconds']:.2f} | {row['tokens_per_s']:.1f} | "
            f"{row['speedup']:.2f}× | {row['memory_roofline_tokens_per_s']:.0f} | "
            f"{row['share_of_memory_roofline']:.1%} | {row['share_of_matmul']:.1%} |"
        )
    lines.append("")
    lines.append(
        f"Matmul rate: {report['matmul_gflops']:.1f} GFLOP/s ({report['dtype']} "
        f"{report['matmul_size']}² × {report['matmul_size']}², best of 5, before and after); "
        f"memory bandwidth: {report['memory_gbps']:.1f} GB/s (sum over 512 MB, best of 5, "
        f"before and after). A decoding step reads {report['weight_bytes'] / 1e9:.3f} GB of "
        "weights: the memory roofline is bandwidth ÷ that × batch tokens/s; the share of the "
        "matmul rate is tokens/s × 2 × parameters ÷ the matmul rate. Both count the new tokens "
        "only: the prompts' prefill is in the seconds, not in the tokens."
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
@click.option(
    "--batch-size",
    "batch_sizes",
    type=click.IntRange(min=2),
    multiple=True,
    default=(16,),
    show_default=True,
    help="Repeat for several batch sizes.",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--ignore-eos/--stop-at-eos",
    default=None,
    help="Generate exactly --max-new-tokens per prompt [default: only for the built model].",
)
@click.option(
    "--alone/--no-alone",
    default=True,
    show_default=True,
    help="Also time one prompt at a time (transformers' generate).",
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
    batch_sizes: tuple[int, ...],
    max_new_tokens: int,
    ignore_eos: bool | None,
    alone: bool,
    hidden: int,
    layers: int,
    device: str,
    dtype: str | None,
    as_json: bool,
) -> None:
    """Measure greedy generation throughput on one model: one prompt at a time, and batched
    through transformers' ``generate`` (before) and our own decoding loop (after), against the
    memory roofline and the matmul rate measured in the same run."""
    from mergekit_safety.core.errors import ConfigError
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
    modes = [("one prompt at a time", "generate", 1)] if alone else []
    modes += [(f"batched ({b} per batch)", d, b) for b in batch_sizes
              for d in ("generate", "loop")]  # fmt: skip

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
        for _mode, decoder, _size in modes[:2]:  # warm-up
            generate_ids(network, tokenizer, prompts[:2], batch_size=2, decoder=decoder, **kwargs)
        load_before = os.getloadavg()[0]
        weight_dtype = next(network.parameters()).dtype
        rate = matmul_gflops(device, weight_dtype)
        bandwidth = memory_gbps(device)
        outputs: list[list[list[int]]] = [[] for _ in modes]
        seconds = [0.0 for _ in modes]
        # Interleaved, one chunk of prompts (the largest batch) at a time, rotating which mode
        # goes first: a load change on a shared machine then hits every mode alike.
        chunk_size = max(batch_sizes)
        for index, start in enumerate(range(0, len(prompts), chunk_size)):
            chunk = prompts[start : start + chunk_size]
            turn = index % len(modes)
            for m in [*range(turn, len(modes)), *range(turn)]:
                _mode, decoder, size = modes[m]
                rows, took = timed(
                    lambda c=chunk, b=size, d=decoder: generate_ids(
                        network, tokenizer, c, batch_size=b, decoder=d, **kwargs
                    )
                )
                outputs[m] += rows
                seconds[m] += took
        load_after = os.getloadavg()[0]
        rate = max(rate, matmul_gflops(device, weight_dtype))
        bandwidth = max(bandwidth, memory_gbps(device))
        parameters = sum(p.numel() for p in network.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
        used_dtype = str(next(network.parameters()).dtype).removeprefix("torch.")

    tokens = sum(len(row) for row in outputs[0])
    rows = []
    for (mode, decoder, size), took in zip(modes, seconds, strict=True):
        row: dict[str, Any] = {"mode": mode, "decoder": decoder, "batch_size": size}
        row.update(prompts=len(prompts), new_tokens=tokens, seconds=took)
        row["tokens_per_s"] = tokens / took
        row["speedup"] = row["tokens_per_s"] / (tokens / seconds[0])
        row["model_gflops"] = row["tokens_per_s"] * 2 * parameters / 1e9
        row["share_of_matmul"] = row["model_gflops"] / rate
        row["memory_roofline_tokens_per_s"] = bandwidth * 1e9 / weight_bytes * size
        row["share_of_memory_roofline"] = row["tokens_per_s"] / row["memory_roofline_tokens_per_s"]
        rows.append(row)
    report = {
        "model": label,
        "parameters": parameters,
        "weight_bytes": weight_bytes,
        "dtype": used_dtype,
        "device": device,
        "max_new_tokens": max_new_tokens,
        "ignore_eos": ignore_eos,
        "identical": all(out == outputs[0] for out in outputs),
        "ratio": seconds[-1] and seconds[0] / seconds[-1],
        "matmul_gflops": rate,
        "matmul_size": 1024,
        "memory_gbps": bandwidth,
        "compute_roofline_tokens_per_s": rate * 1e9 / (2 * parameters),
        "machine": machine(),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "rows": rows,
    }
    click.echo(json.dumps(report, indent=2) if as_json else markdown(report))


if __name__ == "__main__":
    main()
