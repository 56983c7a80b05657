"""What ``top_k`` costs: the first ρ pass against the merge it precedes, in one process.

    python -m benchmarks.selection               # 64M-parameter bf16 Llama, rank-8 fine-tune
    python -m benchmarks.selection --layers 8    # a bigger one

For each gated method: the merge with an explicit τ (``threshold``, set to the τ that ``top_k``
resolves to, so both merge the same matrices), the same merge with ``top_k`` (first pass + merge,
through mergekit's ``run_merge`` as ``mergekit-yaml`` runs it), and the first pass alone
(``inspection.score_config``; outside a sweep no ρ pass is kept). One thread, the best of
``--repeats``; the models come from ``benchmarks.checkpoints`` (rank-8 fine-tune).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import torch

from benchmarks.checkpoints import Size, build


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--hidden", type=int, default=1024, show_default=True)
@click.option("--layers", type=int, default=4, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the checkpoints here.")
def main(hidden: int, layers: int, repeats: int, top_k: int, workdir: str | None) -> None:
    torch.set_num_threads(1)
    import mergekit.merge_methods  # noqa: F401  (the .pth hook registers our methods)
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergekit_safety.core.selection import Selection, resolve
    from mergekit_safety.recipe import inspection

    size = Size(hidden=hidden, intermediate=hidden * 11 // 4, layers=layers, heads=16,
                kv_heads=8, vocab=8192)  # fmt: skip
    root = Path(workdir or tempfile.mkdtemp(prefix="selection-bench-"))
    paths = build(root / "family", size, torch.bfloat16, quiet=True)
    options = MergeOptions(quiet=True, copy_tokenizer=False)
    results = {"parameters": size.parameters(), "top_k": top_k, "threads": 1}
    safe = [{"model": str(paths["safe"]), "parameters": {"role": "safe"}}]
    for method, extra in (("safe_linear", []), ("safemerge", safe), ("safe_lora", [])):
        recipe = {
            "merge_method": method,
            "base_model": str(paths["aligned"]),
            "models": [
                {"model": str(paths["ft_r8"])},
                {"model": str(paths["unaligned"]), "parameters": {"role": "unaligned"}},
                *extra,
            ],
            "dtype": "bfloat16",
        }

        def merge(parameters: dict, recipe: dict = recipe, method: str = method) -> float:
            config = MergeConfiguration.model_validate({**recipe, "parameters": parameters})
            start = time.perf_counter()
            run_merge(config, str(root / f"out-{method}"), options=options)
            return time.perf_counter() - start

        def first_pass(recipe: dict = recipe) -> float:
            config = MergeConfiguration.model_validate(recipe)
            start = time.perf_counter()
            inspection.score_config(config, options, gated_only=True, require_unaligned=True)
            return time.perf_counter() - start

        records = inspection.score_config(MergeConfiguration.model_validate(recipe), options,
                                          gated_only=True, require_unaligned=True)  # fmt: skip
        scores = {r["tensor"]: r["rho"] for r in records if r["gated"]}
        tau = resolve(Selection(top_k=top_k), scores).threshold
        merge({"threshold": tau})  # warm the page cache
        explicit = min(merge({"threshold": tau}) for _ in range(repeats))
        selected = min(merge({"top_k": top_k}) for _ in range(repeats))
        scoring = min(first_pass() for _ in range(repeats))
        results[method] = {
            "threshold": tau,
            "merge_threshold_s": round(explicit, 3),
            "merge_top_k_s": round(selected, 3),
            "first_pass_s": round(scoring, 3),
            "first_pass_over_merge": round(scoring / explicit, 3),
            "top_k_over_threshold": round(selected / explicit, 3),
        }
        click.echo(f"{method}: {json.dumps(results[method])}")
    (root / "selection.json").write_text(json.dumps(results, indent=2) + "\n")
    click.echo(f"Wrote {root / 'selection.json'}")


if __name__ == "__main__":
    main()
