"""``mergekit-safety calibrate MODEL --prompts FILE --out DIR``: what ``safe_delta`` reads."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_safety.cli.common import config_errors, terminate_unwinds
from mergekit_safety.cli.options import DTYPE_CHOICES


@click.command("calibrate")
@click.argument("model")
@click.option(
    "--prompts",
    required=True,
    help="Safety prompts: .jsonl/.json/.csv with a prompt field (and optionally a response: the "
    "aligned model's safe reply, scored with it), or .txt, one prompt a line.",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="A new, empty directory."
)
@click.option("--column", help="The prompt field [default: prompt, else question, goal, ...].")
@click.option("--max-prompts", type=click.IntRange(min=1), help="Use the first N prompts.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Tokens kept per prompt.",
)
@click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda if any)."
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPE_CHOICES),
    help="Model dtype [default: float32 on CPU, the checkpoint's own on GPU].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate_command(
    model: str,
    prompts: str,
    out: str,
    column: str | None,
    max_prompts: int | None,
    batch_size: int,
    max_length: int,
    device: str,
    dtype: str | None,
    quiet: bool,
) -> None:
    """Run MODEL (the aligned model) on safety prompts; write each linear layer's XᵀX to --out.

    Streaming, in batches: memory is the model plus one in × in float32 sum per linear layer,
    whatever the number of prompts. The output is what the `safe_delta` merge method reads
    (`parameters: {calibration: DIR}`), one layer at a time.
    """
    with config_errors(), terminate_unwinds():
        from mergekit_safety.evaluation.calibration_pass import calibrate
        from mergekit_safety.evaluation.prompts import calibration_conversations
        from mergekit_safety.recipe.planning import check_device

        check_device(device)
        conversations = calibration_conversations(prompts, column=column)[:max_prompts]
        record = calibrate(
            model,
            conversations,
            Path(out),
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            progress=not quiet,
            source=prompts,
        )
        click.echo(
            f"wrote {out}: {len(record['modules'])} layers, {record['sequences']} sequences, "
            f"{record['tokens']} tokens ({record['seconds']:.1f} s)"
        )
