"""``mergekit-safety demo build``: rebuild the small trained demo models (``--out recipes/demo``
replaces the committed ones)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.group("demo")
def demo_group() -> None:
    """The demo models: four small trained Llamas that tell the safety-merge story."""


@demo_group.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo",
    show_default=True,
    help="Directory for unaligned/, aligned/, finetuned/, safe/, harmful/, their adapters and "
    "prompts/ (recipes/demo: the committed models, with --overwrite).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the demo models --out already holds (only those)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Base training seed.")
@click.option(
    "--steps-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply every stage's step count (e.g. 0.01 for a smoke test).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch threads; the weights are reproducible for a fixed value.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_command(
    out: str, overwrite: bool, seed: int, steps_scale: float, threads: int, quiet: bool
) -> None:
    """Train unaligned -> aligned -> finetuned (LoRA, subtraction) and safe (LoRA, refusals).

    Deterministic on CPU: the defaults rebuild the committed recipes/demo bit for bit (on the
    same torch build and CPU type) in about 10 minutes. Writes each model's build_info.json with
    the seed, schedule, data sizes and the sha256 of its weights, and the held-out prompt sets
    to OUT/prompts. Built in a staging directory beside OUT and moved in at the end: Ctrl-C
    leaves OUT as it was.
    """
    from mergekit_safety.cli.common import config_errors, terminate_unwinds
    from mergekit_safety.core.outputs import check_writable, staged
    from mergekit_safety.demo.build import DemoSpec, build_demo, built_entries

    spec = DemoSpec(seed=seed, threads=threads).scaled(steps_scale)
    there = [name for name in built_entries(spec) if (Path(out) / name).exists()]
    if there and not overwrite:
        raise click.BadParameter(
            f"{out} already holds {', '.join(there[:3])}{', ...' if len(there) > 3 else ''}; "
            "choose a new directory or pass --overwrite to replace them",
            param_hint="--out",
        )
    started = time.perf_counter()
    with config_errors(), terminate_unwinds():
        check_writable(out, "--out")
        with staged(Path(out), merge=True) as staging:
            summary = build_demo(staging, spec, progress=not quiet)
    for name, info in summary["models"].items():
        digest = info["sha256"]["model.safetensors"][:12]
        click.echo(
            f"{name:10s} steps {info['stage']['steps']:5d}  loss {info['final_loss']:.4f}  "
            f"{info['seconds']:6.1f} s  sha256 {digest}"
        )
    click.echo(f"prompts    {json.dumps(summary['prompts'])}")
    click.echo(f"Built {out} in {time.perf_counter() - started:.0f} s")
