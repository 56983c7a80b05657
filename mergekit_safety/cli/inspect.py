"""``mergekit-safety inspect RECIPE``: per 2-D weight, ρ and what the recipe's method would do."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mergekit_safety.cli.common import config_errors
from mergekit_safety.cli.methods_help import MethodsCommand


@click.command("inspect", cls=MethodsCommand, methods="all")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record per weight.")
@click.option("--cuda", is_flag=True, help="Compute on the GPU, as mergekit-yaml --cuda does.")
@click.option("--all-tensors", is_flag=True, help="List 1-D and embedding tensors too.")
@click.option(
    "--top-k",
    type=int,
    help="Merge the K gateable matrices with the lowest rho (replaces the recipe's threshold).",
)
@click.option(
    "--fraction",
    type=float,
    help="Merge this fraction of the gateable matrices, lowest rho first (K = ceil(F * N)).",
)
@click.option(
    "--write-recipe",
    type=click.Path(dir_okay=False),
    help="Write the recipe with the resolved threshold and, in a comment, the chosen matrices.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Draw rho per matrix by layer and module type, the threshold and the merged matrices.",
)
@click.option(
    "--lora-merge-cache",
    type=click.Path(file_okay=False),
    help="Keep `base+adapter` inputs merged here, keyed by content [default: a temporary "
    "directory, removed after].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect_command(
    recipe: str,
    as_json: bool,
    cuda: bool,
    all_tensors: bool,
    top_k: int | None,
    fraction: float | None,
    write_recipe: str | None,
    plot: str | None,
    lora_merge_cache: str | None,
    quiet: bool,
):
    """Show each weight's alignment score ρ and the merge decision, without writing a model.

    Loads tensors lazily through mergekit's own planner and executor, one weight at a time.
    With --top-k or --fraction (or a recipe that sets top_k/fraction), the selection is turned
    into the threshold that merges exactly those matrices; --write-recipe saves it.
    """
    from mergekit_safety.core.selection import parse_selection
    from mergekit_safety.recipe.inspection import inspect
    from mergekit_safety.recipe.planning import check_device

    with config_errors():
        check_device("cuda" if cuda else "cpu")
        selection = parse_selection(top_k, fraction)
        found = inspect(
            recipe,
            device="cuda" if cuda else "cpu",
            quiet=quiet,
            selection=selection,
            lora_merge_cache=lora_merge_cache,
        )
        if write_recipe is not None and found.resolved is None:
            raise click.UsageError("--write-recipe needs --top-k or --fraction (or a recipe "
                                   "that sets top_k or fraction)")  # fmt: skip
    rows = [r.as_dict() for r in found.records if all_tensors or r.gated]
    if write_recipe is not None:
        text = resolved_recipe(recipe, found.resolved, found.recipe)
        Path(write_recipe).write_text(text, encoding="utf-8")
    if plot is not None:
        from mergekit_safety.publish.plot import plot_rho

        plot_rho(found.records, Path(plot), threshold=effective_threshold(found),
                 title=f"{found.method}: {Path(recipe).name}")  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_table(rows, unmerged_weights(found.method)))
        if found.resolved is not None:
            click.echo(found.resolved.summary())
    for path, what in ((write_recipe, "recipe"), (plot, "plot")):
        if path is not None:
            click.echo(f"Wrote the {what} to {path}", err=True)


def effective_threshold(found) -> float | None:
    """τ as the merge would use it: resolved from a selection, else the recipe's or the default."""
    if found.resolved is not None:
        return found.resolved.threshold
    from mergekit import merge_methods

    value = (found.recipe.get("parameters") or {}).get("threshold")
    if isinstance(value, int | float):
        return float(value)
    spec = {p.name: p for p in merge_methods.get(found.method).spec.parameters}
    return spec["threshold"].default if "threshold" in spec else None


def resolved_recipe(recipe: str, resolved, written: dict) -> str:
    """The recipe (``written``, as read from ``recipe``) with ``threshold: τ`` in place of any
    selection, the choice in comments."""
    import yaml

    from mergekit_safety.recipe.walk import resolve_selection

    data = resolve_selection(written, resolved.threshold)
    last = resolved.chosen[-1][1]
    after = "" if resolved.next_rho is None else f" and {resolved.next_rho:.6g} (the next)"
    lines = [
        f"# Written by `mergekit-safety inspect` from {recipe} with {resolved.selection.label()}:",
        f"# threshold {resolved.threshold:g} lies between rho {last:.6g} (rank "
        f"{len(resolved.chosen)}){after}, so it merges",
        f"# these {len(resolved.chosen)} of {resolved.available} ranked matrices, lowest rho "
        "first (the rest keep the fine-tuned weights):",
        *(f"#   {name}  rho {rho:.6g}" for name, rho in resolved.chosen),
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


def unmerged_weights(method: str) -> str:
    """What a tensor the method does not merge holds: the fine-tuned weights, or (safe_delta,
    which edits the aligned model) the aligned ones."""
    from mergekit import merge_methods

    keeps = getattr(merge_methods.get(method), "unmerged", "finetuned")
    return f"the {'aligned' if keeps == 'aligned' else 'fine-tuned'} weights"


def format_table(rows: list[dict], unmerged: str = "the fine-tuned weights") -> str:
    """A fixed-width table with a one-line summary of how many matrices are merged."""
    width = max([len("tensor")] + [len(r["tensor"]) for r in rows])
    lines = [f"{'tensor':<{width}}  {'shape':>13}  {'rho':>8}  decision  reason"]
    for r in rows:
        rho = "-" if r["rho"] is None else f"{r['rho']:.4f}"
        shape = "x".join(map(str, r["shape"]))
        verdict = "merge" if r["merge"] else "keep"
        lines.append(f"{r['tensor']:<{width}}  {shape:>13}  {rho:>8}  {verdict:<8}  {r['reason']}")
    merged = sum(r["merge"] for r in rows)
    lines.append(f"{merged} of {len(rows)} tensors merged; the rest keep {unmerged}")
    return "\n".join(lines)
