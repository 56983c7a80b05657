"""``mergekit-safety adapter RECIPE OUT``: LoRA adapters in, a safe LoRA adapter out."""

from __future__ import annotations

import click

from mergekit_safety.cli.common import config_errors
from mergekit_safety.cli.methods_help import MethodsCommand


@click.command("adapter", cls=MethodsCommand, methods="adapter")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--cuda", is_flag=True, help="Compute on the GPU, as mergekit-yaml --cuda does.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def adapter_command(recipe: str, out: str, cuda: bool, quiet: bool):
    """Merge a recipe whose fine-tuned (and safe) inputs are `aligned+adapter` into a peft LoRA
    adapter for the aligned model, written to OUT (new or empty).

    The same recipe as mergekit-yaml takes, and the same result: applying OUT to the aligned
    model equals the full merge up to dtype rounding. Full models (aligned, unaligned) are read
    one tensor at a time through mergekit's loader; only where a gate needs V.
    """
    from transformers.utils import logging as hf_logging

    from mergekit_safety.adapter import merge_recipe_to_adapter

    hf_logging.set_verbosity_error()  # mergekit's own deprecation notices would bury the result
    from mergekit_safety.recipe.planning import check_device

    with config_errors():
        check_device("cuda" if cuda else "cpu")
        path, records = merge_recipe_to_adapter(recipe, out, device="cuda" if cuda else "cpu")
    if not quiet:
        merged = sum(r["merge"] for r in records)
        click.echo(f"{merged} of {len(records)} adapted modules merged; wrote {path}")
