"""The benchmark's Markdown report: merges against stock methods, dense GFLOP/s, the ρ study."""

from __future__ import annotations

GIB = 2**30


def markdown(result: dict) -> str:
    m, size = result["machine"], result["size"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} "
        f"threads), mergekit {m['mergekit']}, Python {m['python']}; load average "
        f"{m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after.",
        f"Checkpoints: `{size['name']}`, {size['parameters'] / 1e6:.0f}M parameters, "
        f"{size['dtype']} (hidden {size['hidden']}, intermediate {size['intermediate']}, "
        f"{size['layers']} layers, vocabulary {size['vocab']}); {result['repeats']} repeats, "
        "minima (CPU: user + system of the merge process).",
        "",
        *merges(result["merges"]),
    ]
    if "calibration" in result:
        c = result["calibration"]
        lines += [
            "",
            f"safe_delta's calibration pass (`calibrate`'s code on {c['prompts']} random "
            f"sequences of {c['tokens_per_prompt']} tokens, batches of 8, fp32): wall "
            f"{c['wall_s']:.1f} s, CPU {c['cpu_s']:.1f} s, peak RSS {c['rss_bytes'] / GIB:.2f} "
            f"GiB; statistics {c['statistics_bytes'] / 2**20:.0f} MiB on disk.",
        ]
    if "dense" in result:
        lines += ["", *dense(result["dense"])]
    if "rounding" in result:
        lines += ["", *rounding(result["rounding"])]
    if "floor" in result:
        lines += ["", *floor(result["floor"], result["merges"])]
    return "\n".join(lines) + "\n"


def merges(rows: list[dict]) -> list[str]:
    out = [
        "| run | fine-tune | inputs | wall (s) | CPU (s) | peak RSS (GiB) | vs | wall × | CPU × "
        "| RSS × | target (wall / RSS) |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|---|",
    ]
    for r in rows:
        ratio = "wall_ratio" in r
        target = ""
        if r["target_wall"] is not None and ratio:
            ok = r["wall_ratio"] <= r["target_wall"] and r["rss_ratio"] <= r["target_rss"]
            target = f"≤{r['target_wall']:g} / ≤{r['target_rss']:g}: {'met' if ok else 'missed'}"
        out.append(
            f"| {r['method']} | {r['finetune']} | {r['inputs']} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['rss_bytes'] / GIB:.2f} | {r['reference'] or ''} | "
            f"{r['wall_ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['rss_ratio']:.2f} | {target} |"
            if ratio
            else f"| {r['method']} | {r['finetune']} | {r['inputs']} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['rss_bytes'] / GIB:.2f} | | | | | |"
        )
    return out


def dense(rows: list[dict]) -> list[str]:
    out = [
        "| V, Δ shape | GFLOP | 2 × torch.mm GFLOP/s | dense path GFLOP/s | % | "
        "score_and_project GFLOP/s | % |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        out.append(
            f"| {r['shape'][0]}×{r['shape'][1]} | {r['gflop']:.0f} | {r['matmul_gflops']:.0f} | "
            f"{r['dense_gflops']:.0f} | {100 * r['dense_vs_matmul']:.0f} % | "
            f"{r['dispatch_gflops']:.0f} | {100 * r['dispatch_vs_matmul']:.0f} % |"
        )
    return out


def rounding(study: dict) -> list[str]:
    out = [
        f"ρ on {study['matrices']} gated matrices (layers {study['layers']}), {study['dtype']}: "
        "dense, low-rank at the rounding tolerance (what the methods do), and the fp32 update "
        "before rounding (trained). Decisions at τ = 0.35.",
        "",
        "| fine-tune | low-rank / all | ranks | ‖E‖/‖Δ‖ | max Δρ tol–dense | max Δρ dense–trained "
        "| max Δρ tol–trained | decisions differing tol/dense | dense/trained | time dense (s) "
        "| time tol (s) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in study["finetunes"].items():
        out.append(
            f"| {name} | {s['lowrank']}/{s['matrices']} | {s['ranks'] or '-'} | "
            f"{s['noise_median']:.3f} | {s['max_diff_tol_dense']:.1e} | "
            f"{s['max_diff_dense_trained']:.1e} | {s['max_diff_tol_trained']:.1e} | "
            f"{s['flips_tol_dense']} | {s['flips_dense_trained']} | {s['dense_s']:.2f} | "
            f"{s['rounding_tol_s']:.2f} |"
        )
    return out


def floor(rows: list[dict], merges: list[dict]) -> list[str]:
    """The thin products any exact ρ needs, against ``task_arithmetic`` over 3 inputs."""
    stock = next((m["wall_s"] for m in merges if m["key"] == "task_arithmetic3"), None)
    out = [
        "Four thin products per gated matrix at k = rank (Δ Ω, Qᵀ Δ, Vᵀ Q, V·(Vᵀ Q)): the least "
        "any exact ρ costs, with no QR, oversampling or sharpening.",
        "",
        "| k | s per model | 1 + that / task_arithmetic 3 (a bound on the gated wall ratio) |",
        "|--:|--:|--:|",
    ]
    for r in rows:
        bound = f"{1 + r['model_s'] / stock:.2f}" if stock else "–"
        out.append(f"| {r['rank']} | {r['model_s']:.2f} | {bound} |")
    return out
