"""One command: build a checkpoint family, time every merge method, write a Markdown + JSON report.

    python -m benchmarks.merge                 # ≈0.5B bf16 Llama, 3 repeats
    python -m benchmarks.merge --size small    # a quick run

Each merge runs through ``mergekit-yaml`` (``inspect`` through ``mergekit-safety``) in a fresh
subprocess with the same options; repeats are interleaved (the job order rotates) so load from
other processes spreads over all jobs alike. Ratios are of minima over the repeats, against
the stock method over the same models (see ``benchmarks/jobs.py``).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import click
import torch
from tqdm import tqdm

from benchmarks import checkpoints, kernels, report
from benchmarks.jobs import Job, plan


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--size",
    type=click.Choice(list(checkpoints.SIZES)),
    default="default",
    show_default=True,
    help="small ≈7M, default ≈0.5B, large ≈1.3B parameters.",
)
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float32"]),
    default="bfloat16",
    show_default=True,
    help="Checkpoint and recipe dtype.",
)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--finetunes",
    default="full,r8,r64",
    show_default=True,
    help="Fine-tunes to merge: full (full-rank update), r8, r64 (merged LoRAs).",
)
@click.option(
    "--all-on-full/--safe-lora-on-full",
    default=False,
    show_default=True,
    help="Run every gated method on the full-rank fine-tune, not only safe_lora.",
)
@click.option(
    "--stock-per-finetune/--stock-once",
    default=False,
    show_default=True,
    help="Run task_arithmetic with each fine-tune listed, not once for all.",
)
@click.option(
    "--inspect-on",
    default="r8",
    show_default=True,
    help="Fine-tunes to run `mergekit-safety inspect` on (comma-separated).",
)
@click.option(
    "--kernels/--no-kernels",
    "run_kernels",
    default=True,
    show_default=True,
    help="Dense-path GFLOP/s and the rounding-tolerance ρ study.",
)
@click.option(
    "--gemm-shapes", default=None, help="OUTxIN,... for the GFLOP/s study [default: by size]."
)
@click.option(
    "--sample-layers",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Layers scored in the ρ study.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()) / "mergekit-safety-bench",
    show_default=True,
    help="Checkpoints (kept and reused), recipes and scratch outputs.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Report path (.md; a .json beside it) [default: WORKDIR/report-SIZE.md].",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Torch threads, for the merges (OMP_NUM_THREADS) and in-process kernels alike. 1: on a "
    "shared 2-core machine, 2-thread OpenMP regions stall whenever one core is taken.",
)
@click.option(
    "--only",
    default="",
    help="Comma-separated job keys to run (e.g. linear,safe_linear or safemerge/r64), with the "
    "stock jobs they are compared with [default: every job].",
)
@click.option(
    "--calibration-prompts",
    type=click.IntRange(0),
    default=128,
    show_default=True,
    help="Sequences for safe_delta's calibration pass (timed on its own); 0: no safe_delta.",
)
@click.option(
    "--calibration-length",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Tokens per calibration sequence (random ids: the cost, not the statistics, matters).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(size, dtype, repeats, finetunes, all_on_full, stock_per_finetune, inspect_on,
         run_kernels, gemm_shapes, sample_layers, workdir, output, threads, only,
         calibration_prompts, calibration_length, quiet):  # fmt: skip
    """Time every safety method and inspect against stock mergekit methods; safe_delta's
    calibration pass on its own."""
    spec = checkpoints.SIZES[size]
    names = [f.strip() for f in finetunes.split(",") if f.strip()]
    unknown = set(names) - set(checkpoints.FINETUNES)
    if unknown:
        raise click.BadParameter(f"unknown fine-tunes {sorted(unknown)}", param_hint="--finetunes")
    root = workdir / f"{size}-{dtype}"
    torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    machine = describe_machine()
    paths = checkpoints.family_paths(root)
    statistics = root / "calibration" if calibration_prompts else None
    jobs = plan(
        paths,
        dtype,
        names,
        stock_per_finetune=stock_per_finetune,
        all_on_full=all_on_full,
        inspect_on=tuple(f.strip() for f in inspect_on.split(",")),
        calibration=statistics,
    )
    if only:
        jobs = select(jobs, {k.strip() for k in only.split(",") if k.strip()})  # before heavy work
    click.echo(f"building {spec.parameters() / 1e6:.0f}M-parameter checkpoints in {root}", err=True)
    checkpoints.build(root, spec, getattr(torch, dtype), quiet=quiet)
    warm_page_cache(paths.values())
    calibration = None
    if statistics is not None:
        calibration = time_calibration(
            paths["aligned"], statistics, calibration_prompts, calibration_length, repeats, env
        )
    for index in tqdm(range(repeats * len(jobs)), desc="merges", disable=quiet):
        repeat, slot = divmod(index, len(jobs))
        jobs[(slot + repeat) % len(jobs)].run(workdir, env)  # rotate the order each repeat

    result = {
        "machine": {**machine, "load_after": os.getloadavg()},
        "size": {"name": size, **vars(spec), "parameters": spec.parameters(), "dtype": dtype},
        "repeats": repeats,
        "merges": summarize(jobs),
    }
    if calibration is not None:
        result["calibration"] = calibration
    if run_kernels:
        shapes = parse_shapes(gemm_shapes) if gemm_shapes else default_shapes(size)
        result["dense"] = kernels.dense_efficiency(shapes, repeats, quiet)
        layers = kernels.sampled_layers(spec, sample_layers)
        result["rounding"] = kernels.rounding_study(root, spec, layers, names, quiet)
        ranks = sorted({r for r in map(checkpoints.FINETUNES.get, names) if r is not None})
        result["floor"] = kernels.lowrank_floor(spec, ranks, repeats)
    output = output or workdir / f"report-{size}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    output.write_text(report.markdown(result))
    click.echo(output.read_text())
    click.echo(f"written: {output} and {output.with_suffix('.json')}", err=True)


CALIBRATE = """
import sys, time, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from mergekit_safety.evaluation.calibration_pass import accumulate, batches_of, write
model_dir, out, prompts, length = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
g = torch.Generator().manual_seed(0)
vocab = model.config.vocab_size
rows = [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(prompts)]
sums = accumulate(model, batches_of(rows, 0, 8), progress=False)
write(out, sums, rows=rows, seconds=time.perf_counter() - start, model=model_dir, dtype="float32")
"""
"""The calibration pass as ``calibrate`` runs it (load, batches of 8, hooks, write), on random
token ids: the benchmark checkpoints have no tokenizer, and the cost does not depend on the ids."""


def time_calibration(
    aligned: Path, out: Path, prompts: int, length: int, repeats: int, env: dict[str, str]
) -> dict:
    """Time the calibration pass in a fresh process ``repeats`` times; keep the last output."""
    import shutil
    import sys

    from benchmarks.measure import measure

    samples = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        command = [
            sys.executable,
            "-c",
            CALIBRATE,
            str(aligned),
            str(out),
            str(prompts),
            str(length),
        ]
        samples.append(measure(command, env=env))
    return {
        "prompts": prompts,
        "tokens_per_prompt": length,
        "wall_s": min(s.wall for s in samples),
        "cpu_s": min(s.cpu for s in samples),
        "rss_bytes": min(s.rss for s in samples),
        "walls": [s.wall for s in samples],
        "statistics_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
    }


def select(jobs: list[Job], keys: set[str]) -> list[Job]:
    """The jobs named, in plan order, with the stock jobs their ratios are taken against."""
    unknown = keys - {j.key for j in jobs}
    if unknown:
        known = ", ".join(j.key for j in jobs)
        raise click.BadParameter(f"unknown {sorted(unknown)}; known: {known}", param_hint="--only")
    wanted = keys | {j.reference for j in jobs if j.key in keys and j.reference}
    return [j for j in jobs if j.key in wanted]


def summarize(jobs: list[Job]) -> list[dict]:
    """Minima over the rounds (a shared machine only ever adds time), ratios of minima."""
    best = {
        j.key: (
            min(s.wall for s in j.samples),
            min(s.cpu for s in j.samples),
            min(s.rss for s in j.samples),
        )
        for j in jobs
    }
    rows = []
    for j in jobs:
        wall, cpu, rss = best[j.key]
        row = {
            "key": j.key, "method": j.method, "finetune": j.finetune, "inputs": j.inputs,
            "wall_s": wall, "cpu_s": cpu, "rss_bytes": rss, "reference": j.reference,
            "walls": [s.wall for s in j.samples], "cpus": [s.cpu for s in j.samples],
            "rsses": [s.rss for s in j.samples],
            "target_wall": j.target_wall, "target_rss": j.target_rss,
        }  # fmt: skip
        if j.reference in best:
            ref_wall, ref_cpu, ref_rss = best[j.reference]
            row["wall_ratio"], row["cpu_ratio"] = wall / ref_wall, cpu / ref_cpu
            row["rss_ratio"] = rss / ref_rss
        rows.append(row)
    return rows


def describe_machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mergekit": version("mergekit"),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }


def warm_page_cache(paths) -> None:
    """Read every checkpoint once so the first timed merge does not pay for the disk."""
    for path in paths:
        with open(Path(path) / "model.safetensors", "rb") as handle:
            while handle.read(1 << 24):
                pass


def default_shapes(size: str) -> list[tuple[int, int]]:
    if size == "small":
        return [(1024, 1024), (1024, 2816)]
    return [(2048, 2048), (2048, 5504), (4096, 4096)]


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",")]


if __name__ == "__main__":
    main()
