"""LoRA adapter in → safe LoRA adapter out: every safety method, exactly, in adapter space.

``plan`` reads the recipe and adapters and refuses what has no exact adapter form; ``merge`` runs
each method per module on the factors, gated by the method's own ``decide``; ``write`` writes a
peft adapter. :func:`merge_recipe_to_adapter` runs the three.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_safety.adapter.plan import AdapterPlan, plan_adapter


def merge_recipe_to_adapter(
    recipe: str | os.PathLike, out: str | os.PathLike, *, device: str = "cpu"
) -> tuple[Path, list[dict]]:
    """Plan, merge and write; returns OUT and one record per module (as ``inspect``'s)."""
    from mergekit_safety.adapter.merge import merge_adapters
    from mergekit_safety.adapter.write import adapter_card, check_out, write_adapter

    check_out(out)
    plan = plan_adapter(str(recipe), device=device)
    merged = list(merge_adapters(plan, device=device))
    records = [
        {
            "tensor": f"{m.module}.weight",
            "rank": m.a.shape[0],
            "rho": m.decision.rho,
            "merge": m.decision.merge,
            "reason": m.decision.reason,
        }
        for m in merged
    ]
    count = sum(r["merge"] for r in records)
    summary = (
        f"{count} of {len(records)} adapted modules merged by `{plan.method}`; the rest keep "
        "the fine-tuned update."
    )
    recipe_text = Path(recipe).read_text(encoding="utf-8")
    first = next(iter(plan.adapters.values()))
    task_type = getattr(first.config, "task_type", None)
    path = write_adapter(
        out,
        merged,
        base_model=str(plan.aligned),
        task_type=str(getattr(task_type, "value", task_type)) if task_type else None,
        recipe_text=recipe_text,
        card=adapter_card(
            method=plan.method,
            base_model=str(plan.aligned),
            adapters=[str(model) for model in plan.adapters],
            recipe_text=recipe_text,
            summary=summary,
        ),
    )
    return path, records


__all__ = ["AdapterPlan", "merge_recipe_to_adapter", "plan_adapter"]
