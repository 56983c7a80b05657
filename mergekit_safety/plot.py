"""The sweep's Pareto plot: task accuracy against refusal rate, one labelled point per model.

Both axes are "higher is better", so the points no other point beats on both axes (the Pareto
front) are the only sensible choices; the gate line shows which of them are safe enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergekit_safety.sweep import describe_gate, metric

STYLE = {
    "aligned": {"marker": "s", "color": "tab:green", "label": "aligned (base_model)"},
    "finetuned": {"marker": "D", "color": "tab:red", "label": "fine-tuned"},
    "merged": {"marker": "o", "color": "tab:blue", "label": "merged"},
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point matches or beats on both axes (maximising both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    min_refusal: float | None = None,
    max_over_refusal: float | None = None,
    title: str = "",
) -> Path:
    """Draw ``rows`` (``SweepResult.rows()``) to a PNG; rows without both metrics are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is there on a server
    import matplotlib.pyplot as plt

    drawn = [
        (row, metric(row, "task_accuracy"), metric(row, "refusal_rate"))
        for row in rows
        if metric(row, "task_accuracy") is not None and metric(row, "refusal_rate") is not None
    ]
    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=120)
    seen: set[str] = set()
    merged = 0
    for row, x, y in drawn:
        style = STYLE.get(row.get("kind", "merged"), STYLE["merged"])
        hollow = row.get("kind") == "merged" and row.get("passes") is False
        label = style["label"] if row.get("kind") not in seen else None
        seen.add(row.get("kind", "merged"))
        ax.scatter(
            [x],
            [y],
            marker=style["marker"],
            s=60,
            zorder=3,
            edgecolors=style["color"],
            facecolors="none" if hollow else style["color"],
            label=label,
        )
        text = {"aligned": "aligned", "finetuned": "fine-tuned"}.get(row.get("kind"), None)
        text = text or str(row.get("model", ""))
        over = metric(row, "over_refusal_rate")
        if max_over_refusal is not None and over is not None:
            text += f" (over-refusal {over:.2f})"  # the other gate axis, not drawn
        if row.get("kind") in ("aligned", "finetuned"):  # left of the point, merges to the right
            offset, align = (-8, 6), "right"
        else:  # alternate above/below, so neighbouring values' labels do not collide
            offset, align = (6, 5 if merged % 2 else -11), "left"
            merged += 1
        ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
        if row.get("chosen"):
            ax.scatter(
                [x],
                [y],
                marker="*",
                s=320,
                color="gold",
                edgecolors="black",
                zorder=4,
                label="chosen",
            )

    front = sorted((drawn[i][1], drawn[i][2]) for i in pareto_front([(x, y) for _r, x, y in drawn]))
    if front:
        ax.plot(
            *zip(*front, strict=True),
            color="black",
            linewidth=1,
            linestyle="-",
            zorder=2,
            label="Pareto front",
        )
        ax.scatter(
            *zip(*front, strict=True),
            s=180,
            facecolors="none",
            edgecolors="black",
            linewidths=1,
            zorder=2,
        )
    if min_refusal is not None:
        ax.axhline(
            min_refusal,
            color="tab:orange",
            linestyle="--",
            zorder=1,
            label=f"gate: refusal rate >= {min_refusal:g}",
        )
        ax.axhspan(-0.05, min_refusal, color="tab:orange", alpha=0.08, zorder=0)
    if any(row.get("kind") == "merged" and row.get("passes") is False for row, _x, _y in drawn):
        gate = describe_gate(min_refusal, max_over_refusal)
        ax.plot(
            [],
            [],
            marker="o",
            linestyle="none",
            markerfacecolor="none",
            markeredgecolor=STYLE["merged"]["color"],
            label=f"hollow: fails the gate ({gate})",
        )
    left_out = len(rows) - len(drawn)
    ax.set_xlabel("task accuracy (higher is better)")
    ax.set_ylabel("refusal rate on harmful prompts (higher is safer)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)
    if left_out:
        title += f"\n({left_out} model(s) without task accuracy or refusal rate not drawn)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
