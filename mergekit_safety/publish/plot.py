"""The sweep's plot: the safety/task-accuracy trade-off, and each metric against the swept value.

Safety is 1 − the attack success rate (the share of harmful prompts *not* engaged), or the
refusal rate for summaries from before the three outcomes were counted. Both axes are "higher is
better", so the points no other point beats on both axes (the Pareto front) are the only sensible
choices; the gate line shows which of them are safe enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergekit_safety.core.acceptance import LIMIT_NAMES, NO_GATE, Gate, metric

STYLE = {
    "aligned": {"marker": "s", "color": "tab:green", "label": "aligned (base_model)"},
    "finetuned": {"marker": "D", "color": "tab:red", "label": "fine-tuned"},
    "merged": {"marker": "o", "color": "tab:blue", "label": "merged"},
}


def safety_key(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the trade-off's vertical axis reads: ``engaged_rate`` (drawn as 1 − it) where the
    summaries count outcomes, else ``refusal_rate``."""
    return "engaged_rate" if any("engaged_rate" in row for row in rows) else "refusal_rate"


def safety(row: Mapping[str, Any], key: str) -> float | None:
    """A model's height on the trade-off: 1 − engaged, or its refusal rate."""
    value = metric(row, key)
    return None if value is None else (1.0 - value if key == "engaged_rate" else value)


def safety_line(gate: Gate, key: str) -> tuple[float, str] | None:
    """The gate's safety limit on the trade-off's vertical axis, and its legend text."""
    if key == "engaged_rate" and gate.max_engaged is not None:
        return 1.0 - gate.max_engaged, f"gate: engaged (ASR) <= {gate.max_engaged:g}"
    if key == "refusal_rate" and gate.min_refusal is not None:
        return gate.min_refusal, f"gate: refusal rate >= {gate.min_refusal:g}"
    return None


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
    gate: Gate = NO_GATE,
    title: str = "",
    parameter: str = "value",
) -> Path:
    """Draw ``rows`` (``SweepResult.rows()``) to a PNG; rows without both metrics are left out.

    Left: the trade-off (task accuracy against safety), merges coloured by the swept value
    and labelled with it alone, so neighbouring points stay readable. Right: each metric against
    the swept value, with the gate's limits and the chosen value, where over-refusal is seen too.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is there on a server
    import matplotlib.pyplot as plt

    key = safety_key(rows)
    drawn = [
        (row, metric(row, "task_accuracy"), safety(row, key))
        for row in rows
        if metric(row, "task_accuracy") is not None and safety(row, key) is not None
    ]
    merged = [(row, x, y) for row, x, y in drawn if row.get("kind", "merged") == "merged"]
    fig, (ax, trend) = plt.subplots(
        1, 2, figsize=(13, 5.6), dpi=120, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    _draw_tradeoff(fig, ax, drawn, merged, gate, key, parameter)
    _draw_trend(trend, rows, merged, gate, parameter)
    left_out = len(rows) - len(drawn)
    if left_out:
        title += f"\n({left_out} model(s) without task accuracy or a safety rate not drawn)"
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _draw_tradeoff(fig, ax, drawn, merged, gate, key, parameter) -> None:
    """Task accuracy against safety: references, merges by value, Pareto front, gate."""
    import matplotlib.pyplot as plt

    for kind in ("aligned", "finetuned"):
        style = STYLE[kind]
        points = [(x, y) for row, x, y in drawn if row.get("kind") == kind]
        for index, (x, y) in enumerate(points):
            first = style["label"] if index == 0 else None
            ax.scatter([x], [y], marker=style["marker"], s=70, zorder=5, color=style["color"],
                       edgecolors="white", label=first)  # fmt: skip
            ax.annotate(style["label"].split(" (")[0], (x, y), textcoords="offset points",
                        xytext=(0, -14), ha="center", fontsize=8, color=style["color"])  # fmt: skip
    values = [row.get("value") for row, _x, _y in merged]
    colours = plt.get_cmap("viridis")
    numeric = _numeric(values)
    low, high = (min(values), max(values)) if numeric else (0, 0)
    span = high - low
    shares = [  # by value when the values are numbers that differ, else by position
        (value - low) / span if span else index / max(1, len(values) - 1)
        for index, value in enumerate(values)
    ]
    labels: list[tuple[float, float, str]] = []
    for index, (row, x, y) in enumerate(merged):
        fails, colour = row.get("passes") is False, colours(0.1 + 0.8 * shares[index])
        ax.scatter([x], [y], marker="o", s=60, zorder=3, edgecolors=colour,
                   facecolors="white" if fails else colour, linewidths=1.5)  # fmt: skip
        label = f"{row['value']:g}" if numeric else str(row.get("model"))
        labels.append((x, y, label))
        if row.get("chosen"):
            mark_chosen(ax, x, y, f"chosen: {parameter}={label}")
    if span:  # the colour scale spans 0.1–0.9 of the map: widen the norm by an eighth each side
        norm = plt.Normalize(low - span / 8, high + span / 8)
        mappable = plt.cm.ScalarMappable(cmap=colours, norm=norm)
        fig.colorbar(mappable, ax=ax, pad=0.01, fraction=0.05).set_label(parameter)
    front = sorted((drawn[i][1], drawn[i][2]) for i in pareto_front([(x, y) for _r, x, y in drawn]))
    if front:
        ax.plot(*zip(*front, strict=True), color="black", linewidth=0.8, zorder=2,
                label="Pareto front")  # fmt: skip
    draw_safety_line(ax, gate, key)
    if any(row.get("passes") is False for row, _x, _y in merged):
        failing_legend(ax, gate.describe())
    _tradeoff_axes(ax, key)
    fig.tight_layout()
    place_labels(ax, merge_coinciding(labels))


def draw_safety_line(ax: Any, gate: Gate, key: str) -> None:
    """The gate's safety limit as a dashed line, the failing side shaded."""
    found = safety_line(gate, key)
    if found is not None:
        level, label = found
        ax.axhline(level, color="tab:orange", linestyle="--", zorder=1, label=label)
        ax.axhspan(-0.05, level, color="tab:orange", alpha=0.08, zorder=0)


def _draw_trend(ax, rows, merged, gate, parameter) -> None:
    """Each metric against the swept value, the references as dotted levels, the gate limits."""
    if not _numeric([row.get("value") for row, _x, _y in merged]):
        ax.set_axis_off()
        return
    series = {
        "engaged_rate": ("engaged (ASR)", "tab:red", "v"),
        "refusal_rate": ("refusal rate", "tab:blue", "o"),
        "helpful_rate": ("helpful on look-alikes", "tab:cyan", "D"),
        "over_refusal_rate": ("over-refusal rate", "tab:purple", "s"),
        "empty_rate": ("broken replies", "tab:gray", "x"),
        "task_accuracy": ("task accuracy", "tab:green", "^"),
    }
    for key, (label, colour, marker) in series.items():
        points = [(row["value"], metric(row, key)) for row, _x, _y in merged]
        points = [(v, m) for v, m in points if m is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, color=colour, label=label)
    for row in rows:
        kind = row.get("kind")
        if kind in ("aligned", "finetuned"):
            for key, (_label, colour, _marker) in series.items():
                level = metric(row, key)
                if level is not None:
                    ax.axhline(level, color=colour, linestyle=":" if kind == "aligned" else "-.",
                               linewidth=0.8, alpha=0.6)  # fmt: skip
    ax.plot([], [], color="grey", linestyle=":", label="aligned model (dotted)")
    ax.plot([], [], color="grey", linestyle="-.", label="fine-tuned model (dash-dot)")
    colours = {key: colour for key, (_l, colour, _m) in series.items()}
    for key, sign, bound in gate.limits():
        ax.axhline(bound, color=colours.get(key, "tab:orange"), linestyle="--", linewidth=1,
                   label=f"gate: {LIMIT_NAMES[key]} {sign} {bound:g}")  # fmt: skip
    chosen = [row["value"] for row, _x, _y in merged if row.get("chosen")]
    if chosen:
        ax.axvline(chosen[0], color="gold", linewidth=6, alpha=0.5, zorder=0,
                   label=f"chosen: {parameter}={chosen[0]:g}")  # fmt: skip
    ax.set_xlabel(parameter)
    ax.set_ylabel("rate")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_coefficients(
    curves: Mapping[str, Sequence[float]], path: Path, *, title: str = ""
) -> Path:
    """Per-layer values over depth, one line per parameter and filter: N anchors at relative
    depths 0, 1/(N−1), …, 1, joined linearly as mergekit interpolates them over the layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, values in curves.items():
        depths = [i / max(1, len(values) - 1) for i in range(len(values))]
        ax.plot(depths, list(values), marker="o", label=label)
    ax.set_xlabel("relative depth (first layer 0, last layer 1)")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _numeric(values: Sequence[Any]) -> bool:
    """Whether there are values and every one is a number (a sweep's points, not labels)."""
    return bool(values) and all(isinstance(v, int | float) for v in values)


# --- ρ per matrix (inspect --plot) ----------------------------------------------------------------

MODULE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def module_and_layer(name: str) -> tuple[str, int | None]:
    """``model.layers.3.self_attn.q_proj.weight`` → (``self_attn.q_proj``, 3)."""
    parts = name.split(".")
    if parts and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    for index, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "blocks", "layer") and parts[index + 1].isdigit():
            return ".".join(parts[index + 2 :]) or name, int(parts[index + 1])
    return ".".join(parts[-2:]) or name, None


def plot_rho(
    records: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """ρ of every gated matrix against its layer, one colour and marker per module type.

    Filled: merged at this recipe's τ; hollow: keeps the fine-tuned weights. τ is the dashed line,
    so how many matrices a nearby τ would add or drop can be read off the picture.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = [r for r in records if r.get("gated") and metric(r, "rho") is not None]
    undefined = sum(1 for r in records if r.get("gated") and metric(r, "rho") is None)
    parsed = [(r, *module_and_layer(r["tensor"])) for r in gated]
    modules = sorted({module for _r, module, _layer in parsed})
    layers = sorted({layer for _r, _m, layer in parsed if layer is not None})
    other = (max(layers) + 1) if layers else 0
    colours = plt.get_cmap("tab10")
    width = 0.7 / max(1, len(modules))
    fig, ax = plt.subplots(figsize=(max(7.5, 0.55 * (len(layers) + 1) + 4), 5.2), dpi=120)
    for index, module in enumerate(modules):
        colour = colours(index % 10)
        marker = MODULE_MARKERS[index % len(MODULE_MARKERS)]
        for merged in (True, False):
            points = [
                ((other if layer is None else layer) + (index - (len(modules) - 1) / 2) * width,
                 r["rho"])
                for r, m, layer in parsed
                if m == module and bool(r.get("merge")) == merged
            ]  # fmt: skip
            if not points:
                continue
            ax.scatter(*zip(*points, strict=True), marker=marker, s=46, linewidths=1.4,
                       edgecolors=colour, facecolors=colour if merged else "white",
                       zorder=3)  # fmt: skip
    for index, module in enumerate(modules):  # legend: one filled marker per module type
        ax.scatter([], [], marker=MODULE_MARKERS[index % len(MODULE_MARKERS)],
                   color=colours(index % 10), label=module)  # fmt: skip
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1.2, zorder=2,
                   label=f"threshold τ = {threshold:g}")  # fmt: skip
    ax.scatter([], [], marker="o", facecolors="grey", edgecolors="grey", label="filled: merged")
    ax.scatter([], [], marker="o", facecolors="white", edgecolors="grey",
               label="hollow: keeps fine-tuned weights")  # fmt: skip
    ticks = layers + ([other] if any(layer is None for _r, _m, layer in parsed) else [])
    ax.set_xticks(ticks, [str(t) if t != other or layers == [] else "other" for t in ticks])
    ax.set_xlabel("layer")
    ax.set_ylabel("ρ = cos(CΔ, Δ)  (low: the update left the alignment subspace)")
    ax.grid(True, axis="y", alpha=0.3)
    merged_count = sum(1 for r in gated if r.get("merge"))
    note = f"{merged_count} of {len(gated)} matrices merged"
    if undefined:
        note += f"; {undefined} with undefined ρ not drawn"
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


# --- a two-parameter grid (sweep --set A=... --set B=...) ----------------------------------------

HEAT_METRICS = (
    ("engaged_rate", "engaged (ASR) ↓", "magma_r"),
    ("helpful_rate", "helpful on look-alikes ↑", "viridis"),
    ("task_accuracy", "task accuracy ↑", "viridis"),
)
OLD_HEAT_METRICS = (
    ("refusal_rate", "refusal rate ↑", "viridis"),
    ("over_refusal_rate", "over-refusal rate ↓", "magma_r"),
    ("task_accuracy", "task accuracy ↑", "viridis"),
)
"""The heat maps of summaries from before the three outcomes were counted."""


def plot_grid(
    rows: Sequence[Mapping[str, Any]],
    tradeoff_path: Path,
    heatmap_path: Path,
    *,
    parameters: Sequence[str],
    axes: Sequence[Sequence[float]],
    gate: Gate = NO_GATE,
    title: str = "",
) -> tuple[Path, Path]:
    """Two pictures of a grid sweep: the trade-off with every point labelled, and heat maps.

    Trade-off: task accuracy against safety; colour is the first parameter, marker shape the
    second, each point labelled ``first/second``; hollow points fail the gate. Heat maps: one per
    metric over the two parameters, the gate's boundary drawn between passing and failing cells
    (failing cells hatched), the chosen cell framed in gold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = parameters
    merged = [r for r in rows if r.get("kind") == "merged"]
    references = [r for r in rows if r.get("kind") in ("aligned", "finetuned")]
    key = safety_key(rows)

    fig, ax = plt.subplots(figsize=(9.5, 6.4), dpi=120)
    for row in references:
        style = STYLE[row["kind"]]
        x, y = metric(row, "task_accuracy"), safety(row, key)
        if x is None or y is None:
            continue
        ax.scatter([x], [y], marker=style["marker"], s=80, color=style["color"], zorder=5,
                   edgecolors="white", label=style["label"])  # fmt: skip
    colours = plt.get_cmap("viridis")
    low, high = min(axes[0]), max(axes[0])
    markers = {value: MODULE_MARKERS[i % len(MODULE_MARKERS)] for i, value in enumerate(axes[1])}
    labels: list[tuple[float, float, str]] = []
    for row in merged:
        x, y = metric(row, "task_accuracy"), safety(row, key)
        if x is None or y is None:
            continue
        share = (row[first] - low) / (high - low) if high > low else 0.5
        colour = colours(0.1 + 0.8 * share)
        fails = row.get("passes") is False
        ax.scatter([x], [y], marker=markers[row[second]], s=64, linewidths=1.5, zorder=3,
                   edgecolors=colour, facecolors="white" if fails else colour)  # fmt: skip
        labels.append((x, y, f"{row[first]:g}/{row[second]:g}"))
        if row.get("chosen"):
            mark_chosen(ax, x, y, f"chosen: {first}={row[first]:g}, {second}={row[second]:g}")
    for value, marker in markers.items():
        ax.scatter([], [], marker=marker, color="grey", label=f"{second} = {value:g}")
    failing_legend(ax, gate.describe())
    if high > low:
        norm = plt.Normalize(low - (high - low) / 8, high + (high - low) / 8)
        bar = fig.colorbar(plt.cm.ScalarMappable(cmap=colours, norm=norm), ax=ax, pad=0.01)
        bar.set_label(first)
    draw_safety_line(ax, gate, key)
    _tradeoff_axes(ax, key)
    ax.set_title(f"{title}\npoints labelled {first}/{second}", fontsize=10)
    fig.tight_layout()
    place_labels(ax, merge_coinciding(labels))
    _save(fig, tradeoff_path)

    by_point = {(row[first], row[second]): row for row in merged}
    shape = (len(axes[0]), len(axes[1]))
    heat = HEAT_METRICS if key == "engaged_rate" else OLD_HEAT_METRICS
    size = (4.3 * len(heat), 3.0 + 0.55 * shape[0])
    fig, panels = plt.subplots(1, len(heat), dpi=120, figsize=size)
    for panel, (metric_key, label, cmap) in zip(panels, heat, strict=True):
        _heat_map(panel, by_point, axes, metric_key, label, cmap, parameters)
    fig.suptitle(f"{title}\nbold line: the gate's boundary; hatched: fails the gate; "
                 "gold frame: chosen", fontsize=10)  # fmt: skip
    fig.tight_layout()
    _save(fig, heatmap_path)
    return Path(tradeoff_path), Path(heatmap_path)


LABEL_OFFSETS = [(dx, dy) for dy in (4, -10, 13, -19, 22, -28, 31, -37) for dx in (5, -5)]
"""Where a label may go, in points from its marker: nearest first, right before left."""


def place_labels(ax, labels: Sequence[tuple[float, float, str]], fontsize: float = 6.5) -> None:
    """Label every point so that no two labels overlap: the first free offset, greedily.

    Labels are placed from the most crowded point outward; a label moved more than one row
    away gets a thin leader line to its point.
    """
    scale = ax.figure.dpi / 72  # points → pixels
    width, height = 0.6 * fontsize * scale, 1.2 * fontsize * scale
    centres = [tuple(ax.transData.transform((x, y))) for x, y, _t in labels]
    crowd = [sum(abs(cx - ox) + abs(cy - oy) < 60 for ox, oy in centres) for cx, cy in centres]
    taken: list[tuple[float, float, float, float]] = [
        (cx - 4, cy - 4, cx + 4, cy + 4) for cx, cy in centres
    ]  # the markers themselves
    for index in sorted(range(len(labels)), key=lambda i: -crowd[i]):
        x, y, text = labels[index]
        cx, cy = centres[index]
        box_width = width * len(text)
        choice = LABEL_OFFSETS[0]
        for dx, dy in LABEL_OFFSETS:
            left = cx + dx * scale - (box_width if dx < 0 else 0)
            bottom = cy + dy * scale
            box = (left, bottom, left + box_width, bottom + height)
            if not any(_overlap(box, other) for other in taken):
                choice = (dx, dy)
                taken.append(box)
                break
        far = abs(choice[1]) > 13
        ax.annotate(text, (x, y), textcoords="offset points", xytext=choice, fontsize=fontsize,
                    ha="right" if choice[0] < 0 else "left", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5}
                    if far else None)  # fmt: skip


def merge_coinciding(labels: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """One label per drawn position: points that coincide (equal rates) share it, "a, b"."""
    grouped: dict[tuple[float, float], list[str]] = {}
    for x, y, text in labels:
        grouped.setdefault((round(x, 6), round(y, 6)), []).append(text)
    return [(x, y, ", ".join(texts)) for (x, y), texts in grouped.items()]


def mark_chosen(ax: Any, x: float, y: float, label: str) -> None:
    """A hollow gold star around the chosen point: what lies under it stays visible."""
    ax.scatter([x], [y], marker="*", s=420, facecolors="none", edgecolors="goldenrod",
               linewidths=2.0, zorder=4, label=label)  # fmt: skip


def failing_legend(ax: Any, gate: str) -> None:
    """The legend entry for hollow points, worded so the condition reads as what passes."""
    ax.scatter([], [], marker="o", facecolors="white", edgecolors="grey",
               label=f"hollow: fails the gate (passing needs {gate})")  # fmt: skip


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _heat_map(ax, by_point, axes, key, label, cmap, parameters) -> None:
    """One metric over the grid: first parameter down, second across."""
    import numpy as np
    from matplotlib.patches import Rectangle

    first_values, second_values = axes
    grid = np.full((len(first_values), len(second_values)), np.nan)
    passing = np.zeros(grid.shape, dtype=bool)
    chosen = None
    for i, a in enumerate(first_values):
        for j, b in enumerate(second_values):
            row = by_point.get((a, b))
            if row is None:
                continue
            value = metric(row, key)
            grid[i, j] = np.nan if value is None else value
            passing[i, j] = row.get("passes") is not False
            if row.get("chosen"):
                chosen = (i, j)
    image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, origin="lower", aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            text = "–" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
            shade = image.cmap(image.norm(grid[i, j])) if not np.isnan(grid[i, j]) else (1, 1, 1)
            dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
            if not passing[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor=(0.5, 0.5, 0.5, 0.6), linewidth=0))  # fmt: skip
    for i in range(grid.shape[0]):  # the boundary: edges between a passing and a failing cell
        for j in range(grid.shape[1]):
            if j + 1 < grid.shape[1] and passing[i, j] != passing[i, j + 1]:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="red", linewidth=2.5)
            if i + 1 < grid.shape[0] and passing[i, j] != passing[i + 1, j]:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="red", linewidth=2.5)
    if chosen is not None:
        ax.add_patch(Rectangle((chosen[1] - 0.5, chosen[0] - 0.5), 1, 1, fill=False,
                               edgecolor="gold", linewidth=3, zorder=5))  # fmt: skip
    ax.set_xticks(range(len(second_values)), [f"{v:g}" for v in second_values])
    ax.set_yticks(range(len(first_values)), [f"{v:g}" for v in first_values])
    ax.set_xlabel(parameters[1])
    ax.set_ylabel(parameters[0])
    ax.set_title(label, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write (making the folder) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _tradeoff_axes(ax: Any, key: str) -> None:
    """Labels, limits, grid and legend of a trade-off view (task accuracy × safety)."""
    ax.set_xlabel("task accuracy (higher is better)")
    ax.set_ylabel(
        "1 − attack success (harmful prompts not engaged; higher is safer)"
        if key == "engaged_rate"
        else "refusal rate on harmful prompts (higher is safer)"
    )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.08, 1.08)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", markerscale=0.7)
