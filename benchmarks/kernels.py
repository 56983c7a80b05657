"""In-process measurements of the subspace math: dense GFLOP/s, and ρ under the rounding tolerance.

``dense_efficiency`` times the dense path against the two plain ``torch.mm`` calls it is made of,
same shapes, interleaved. ``rounding_study`` scores the benchmark's bf16 checkpoints three ways —
dense (ρ of the stored Δ, bit for bit), low-rank within the checkpoint's rounding tolerance (what
the methods do), and the fp32 update before rounding (the truth a LoRA's factors would give) — and
counts the decisions that differ.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from benchmarks import checkpoints
from mergekit_safety.core import subspace

THRESHOLD = 0.35


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dense_efficiency(shapes: list[tuple[int, int]], repeats: int, quiet: bool) -> list[dict]:
    """Median seconds and GFLOP/s of the dense path vs its two GEMMs alone, per shape."""
    return [
        _dense_shape(out_features, in_features, repeats)
        for out_features, in_features in tqdm(shapes, desc="dense GEMMs", disable=quiet)
    ]


def _gemms(delta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense path's two products alone, in its order."""
    if v.shape[0] <= v.shape[1]:
        return torch.mm(torch.mm(v, v.T), delta)
    return torch.mm(v, torch.mm(v.T, delta))


def _dense_shape(out_features: int, in_features: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(out_features, in_features, generator=g)
    delta = torch.randn(out_features, in_features, generator=g)
    calls = {
        "matmul": partial(_gemms, delta, v),
        "dense": partial(subspace.dense_score_and_project, delta, v),
        "dispatch": partial(subspace.score_and_project, delta, v),  # + one failed sketch
    }
    runs: dict[str, list[float]] = {name: [] for name in calls}
    _gemms(delta, v)  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            runs[name].append(_seconds(call))
    flop = 4 * out_features * in_features * min(out_features, in_features)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    return {
        "shape": [out_features, in_features],
        "gflop": flop / 1e9,
        **{f"{name}_s": t for name, t in medians.items()},
        **{f"{name}_gflops": flop / t / 1e9 for name, t in medians.items()},
        "dense_vs_matmul": medians["matmul"] / medians["dense"],
        "dispatch_vs_matmul": medians["matmul"] / medians["dispatch"],
    }


def lowrank_floor(size: checkpoints.Size, ranks: list[int], repeats: int) -> list[dict]:
    """Seconds per model that any exact ρ of a rank-k Δ needs: four thin products per matrix.

    A range ``Q`` of Δ (``Δ Ω``), the coefficients ``W = Qᵀ Δ`` (to prove ``‖Δ − Q W‖``), then
    ``Vᵀ Q`` and ``V (Vᵀ Q)``: each ``out·in·k`` multiply-adds, with ``k`` no smaller than the rank
    and no QR, oversampling or sharpening. Minimum over repeats of one layer's gated shapes, times
    the layer count: the bound the methods' scoring is measured against.
    """
    layer = [shape for name, shape in checkpoints.shapes(size) if checkpoints.layer_of(name) == 0]
    layer = [shape for shape in layer if len(shape) == 2]
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for shape in layer]
    rows = []
    for k in ranks:
        sketches = [torch.randn(shape[1], k, generator=g) for shape in layer]
        runs = []
        for _ in range(repeats):
            total = 0.0
            for (delta, v), omega in zip(pairs, sketches, strict=True):
                q = torch.randn(delta.shape[0], k, generator=g)  # stands in for orth(Δ Ω)
                total += _seconds(
                    lambda d=delta, v=v, o=omega, q=q: (d @ o, q.T @ d, v @ (q.T @ v).T)
                )
            runs.append(total)
        rows.append({"rank": k, "layer_s": min(runs), "model_s": min(runs) * size.layers})
    return rows


def rounding_study(
    root: Path, size: checkpoints.Size, layers: list[int], finetunes: list[str], quiet: bool
) -> dict:
    """Per fine-tune: ρ and decisions, dense vs rounding tolerance vs truth, and their times."""
    names = [
        (name, shape)
        for name, shape in checkpoints.shapes(size)
        if checkpoints.gated(name, shape) and checkpoints.layer_of(name) in layers
    ]
    files = {m: safe_open(str(root / m / "model.safetensors"), "pt") for m in checkpoints.MODELS}
    dtype = files["aligned"].get_tensor(names[0][0]).dtype
    out: dict = {"layers": layers, "matrices": len(names), "dtype": str(dtype), "finetunes": {}}
    for finetune in finetunes:
        rows = []
        for name, shape in tqdm(names, desc=f"rho {finetune}", disable=quiet):
            aligned = files["aligned"].get_tensor(name).float()
            v = aligned - files["unaligned"].get_tensor(name).float()
            delta = files[f"ft_{finetune}"].get_tensor(name).float() - aligned
            rank = checkpoints.FINETUNES[finetune]
            trained = checkpoints.update(name, shape, rank, aligned)
            tolerance = subspace.rounding_tolerance(aligned, dtype)
            start = time.perf_counter()
            dense = subspace.dense_score_and_project(delta, v, want_projection=False)[0]
            dense_s = time.perf_counter() - start
            factors = subspace.factorize(delta, tolerance=tolerance)  # for its rank only
            start = time.perf_counter()
            fast = subspace.score(delta, v, tolerance=tolerance)
            fast_s = time.perf_counter() - start
            rows.append(
                {
                    "tensor": name,
                    "rank": factors.rank if factors else None,
                    "dense": dense,
                    "rounding_tol": fast,
                    "trained": subspace.score(trained, v),
                    "noise": subspace.norm_of(delta - trained) / subspace.norm_of(delta),
                    "dense_s": dense_s,
                    "rounding_tol_s": fast_s,
                }
            )
        out["finetunes"][finetune] = summarize(rows)
    return out


def summarize(rows: list[dict]) -> dict:
    def flips(a: str, b: str) -> int:
        return sum((r[a] < THRESHOLD) != (r[b] < THRESHOLD) for r in rows)

    def worst(a: str, b: str) -> float:
        return max(abs(r[a] - r[b]) for r in rows)

    lowrank = [r for r in rows if r["rank"] is not None]
    return {
        "matrices": len(rows),
        "lowrank": len(lowrank),
        "ranks": sorted({r["rank"] for r in lowrank}),
        "noise_median": statistics.median(r["noise"] for r in rows),
        "max_diff_tol_dense": worst("rounding_tol", "dense"),
        "max_diff_dense_trained": worst("dense", "trained"),
        "max_diff_tol_trained": worst("rounding_tol", "trained"),
        "flips_tol_dense": flips("rounding_tol", "dense"),
        "flips_dense_trained": flips("dense", "trained"),
        "flips_tol_trained": flips("rounding_tol", "trained"),
        "merged_dense": sum(r["dense"] < THRESHOLD for r in rows),
        "dense_s": sum(r["dense_s"] for r in rows),
        "rounding_tol_s": sum(r["rounding_tol_s"] for r in rows),
        "rows": rows,
    }


def sampled_layers(size: checkpoints.Size, count: int) -> list[int]:
    """``count`` layers spread over the depth (all of them if count ≥ layers)."""
    if count >= size.layers:
        return list(range(size.layers))
    step = size.layers / count
    return sorted({math.floor(i * step) for i in range(count)})
