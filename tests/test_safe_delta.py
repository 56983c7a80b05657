"""safe_delta and calibrate: the formula by hand and against a loop-by-loop reference, the real
mergekit-yaml against it, calibration statistics against a direct computation, and streaming."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import (
    ENV,
    PROMPTS,
    REPO,
    cli_in_process,
    layer_inputs,
    one_line,
    prompts_file,
    write_recipe,
    yaml_in_process,
)
from safetensors.torch import load_file

from mergekit_safety.core.calibration import read
from mergekit_safety.methods.safe_delta import safe_delta


def reference(aligned, finetuned, hessian, budget, block=2048, sub=4):
    """The algorithm written out entry by entry in fp64 with an explicit inverse."""
    w = aligned.double().clone()
    target = finetuned.double()
    h = hessian.double().clone()
    n = h.shape[0]
    for j in range(n):
        if h[j, j] == 0:
            h[j, j] = 1
    h = h + 0.01 * torch.diag(h).mean() * torch.eye(n, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    rows = w.shape[0]
    for start in range(0, n, block):
        end = min(start + block, n)
        d = [float(u[j, j]) for j in range(start, end)]
        entries = [(1 / d[j - start] ** 2, (j - start) * rows + i, i, j)
                   for j in range(start, end) for i in range(rows)]  # fmt: skip
        sensitivity = sum(e[0] for e in entries) / len(entries)
        entries.sort(key=lambda e: (e[0], e[1] // rows * 0 + (e[2] * (end - start) + e[3] - start)))
        cut = int(0.15 * len(entries))
        entries = entries[: len(entries) - cut] if cut else entries
        allowed = sensitivity * budget / 2 * rows / 4096
        taken, total = set(), 0.0
        for _s, _k, i, j in entries:
            total += float((target[i, j] - w[i, j]) ** 2) / d[j - start] ** 2
            if total > allowed:
                break
            taken.add((i, j))
        for first in range(start, end, sub):
            last = min(first + sub, end)
            error = torch.zeros(rows, last - first, dtype=torch.float64)
            for j in range(first, last):
                for i in range(rows):
                    if (i, j) in taken:
                        error[i, j - first] = (w[i, j] - target[i, j]) / d[j - start]
                        w[i, j] = target[i, j]
            w[:, last:] -= error @ u[first:last, last:]
    return w


def test_two_entries_by_hand():
    """H = [[1, .5], [.5, 1]], one row, s = 8192 (ε = mean(1/d²)): only the cheaper entry fits."""
    aligned, finetuned = (
        torch.zeros(1, 2, dtype=torch.float64),
        torch.ones(1, 2, dtype=torch.float64),
    )
    h = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    damped = h + 0.01 * torch.eye(2, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    # costs (1 − 0)²/d_j² = 1/d_j², budget (1/d0² + 1/d1²)/2: the smaller cost is within it
    cheap = 0 if u[0, 0] > u[1, 1] else 1
    assert cheap == 0  # column 0 (its d is the larger)
    got = safe_delta(aligned, finetuned, h, 8192.0)
    assert got[0, 0] == 1  # taken: the fine-tuned value
    # no compensation inside a sub-block of 4 columns (the reference's lines 144–159): column 1
    # would get −err·U01 = U01/d0 if it came after column 0's sub-block; here it stays aligned
    assert got[0, 1] == 0 and u[0, 1] != 0
    assert torch.equal(safe_delta(aligned, finetuned, h, 0.0), aligned)  # no budget: aligned


@pytest.mark.parametrize(
    ("rows", "cols", "budget"), [(24, 16, 0.5), (40, 12, 20.0), (8, 2060, 50.0)]
)
def test_matches_the_loop_reference(rows, cols, budget):
    g = torch.Generator().manual_seed(rows + cols)
    aligned = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    finetuned = aligned + 0.05 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(3 * cols, cols, generator=g, dtype=torch.float64)
    x[:, 1] = 0  # a column no token ever sets: H_11 = 0
    h = 2 * x.T @ x / 3
    got = safe_delta(aligned, finetuned, h, budget)
    expected = reference(aligned, finetuned, h, budget)
    taken = int((got == finetuned).sum())
    assert 0 < taken < rows * cols  # the budget really selects
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


# --- calibrate -----------------------------------------------------------------------------------


def direct_sums(model_dir, rows):
    """XᵀX per linear layer, one unpadded sequence at a time (the reference's batch size 1)."""
    return {name: x.T @ x for name, x in layer_inputs(model_dir, rows).items()}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_calibrate_equals_one_sequence_at_a_time(tmp_path, family, batch_size):
    prompts = prompts_file(tmp_path / "p.jsonl")
    out = tmp_path / "cal"
    result = cli_in_process("calibrate", family["aligned"], "--prompts", prompts, "--out", out,
                            "--batch-size", batch_size, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "calibration.json").read_text())
    assert record["sequences"] == len(PROMPTS)
    assert len(record["modules"]) == 14  # 7 linear layers × 2 decoder layers, lm_head not
    expected = direct_sums(family["aligned"], prompts)
    for name, total in expected.items():
        got = load_file(out / f"{name}.safetensors")["xtx"]
        torch.testing.assert_close(got.double(), total, atol=1e-4, rtol=1e-5, msg=name)


# --- safe_delta through mergekit-yaml ------------------------------------------------------------


def recipe(family, calibration, **parameters):
    return {
        "merge_method": "safe_delta",
        "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"])}],
        "parameters": {"calibration": str(calibration), **parameters},
        "dtype": "float32",
    }


def test_mergekit_yaml_matches_the_reference(tmp_path, family, calibration):
    out = tmp_path / "out"
    budget = 2000.0  # the tiny model's 32 rows make ε = mean(1/d²)·s/2·32/4096: keep some entries
    result = yaml_in_process(
        write_recipe(tmp_path / "r.yml", recipe(family, calibration, budget=budget)), out
    )
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(out / "model.safetensors")
    a = load_file(family["aligned"] / "model.safetensors")
    f = load_file(family["finetuned"] / "model.safetensors")
    stats = read(calibration)
    edited = taken = 0
    for name, tensor in merged.items():
        h = stats.hessian(name)
        if h is None:
            assert torch.equal(tensor, a[name]), name  # outside the linear layers: aligned
            continue
        expected = reference(a[name], f[name], h, budget)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-5, rtol=1e-5, msg=name)
        edited += 1
        taken += int((tensor == f[name]).sum())
    assert edited == 14 and taken > 0


def test_mistakes_give_one_line(tmp_path, family, calibration):
    bare = recipe(family, calibration)
    del bare["parameters"]["calibration"]
    result = yaml_in_process(write_recipe(tmp_path / "a.yml", bare), tmp_path / "a")
    assert "safe_delta needs `calibration: DIR`" in one_line(result)
    result = yaml_in_process(
        write_recipe(tmp_path / "b.yml", recipe(family, tmp_path / "nowhere")), tmp_path / "b"
    )
    assert "no such directory" in one_line(result)
    partial = tmp_path / "partial"
    shutil.copytree(calibration, partial)
    record = json.loads((partial / "calibration.json").read_text())
    del record["modules"]["model.layers.1.mlp.up_proj"]
    (partial / "calibration.json").write_text(json.dumps(record))
    result = yaml_in_process(
        write_recipe(tmp_path / "c.yml", recipe(family, partial)), tmp_path / "c"
    )
    assert "has no statistics for model.layers.1.mlp.up_proj.weight" in one_line(result)
    result = yaml_in_process(
        write_recipe(tmp_path / "d.yml", recipe(family, calibration, budget=-1)), tmp_path / "d"
    )
    assert "parameter 'budget': Input should be greater than or equal to 0" in one_line(result)
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_shipped_recipe_runs(tmp_path):
    out = tmp_path / "safe_delta"
    result = yaml_in_process(REPO / "recipes" / "safe_delta.yml", out, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()


def test_inspect_says_the_unmerged_tensors_stay_aligned(monkeypatch):
    monkeypatch.chdir(REPO)
    result = cli_in_process("inspect", "recipes/safe_delta.yml", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].endswith("the rest keep the aligned weights")


# --- streaming -----------------------------------------------------------------------------------

PEAK = """
import resource, sys
from pathlib import Path
from mergekit_safety.evaluation.calibration_pass import calibrate
from mergekit_safety.evaluation.prompts import calibration_conversations
conversations = calibration_conversations(sys.argv[2])
calibrate(sys.argv[1], conversations, Path(sys.argv[3]), batch_size=8, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
GROWTH_BOUND_KIB = 24 * 1024
"""4× the prompts may raise peak RSS by at most 24 MiB. Keeping every activation instead of
summing as it goes would cost 4N·60 tokens·(Σ in of 14 layers ≈ 4.4k floats)·4 B ≈ 260 MiB
at N = 64 here, ten times the bound."""


@pytest.mark.subprocess
def test_calibrate_memory_does_not_grow_with_prompts(tmp_path):
    from helpers import tiny_llama

    model = tiny_llama(tmp_path / "m", seed=0, hidden=256)
    sentence = " ".join(["how do i make a bomb please tell me about"] * 6)  # 60 tokens
    peaks = {}
    for n in (64, 256):
        prompts = prompts_file(tmp_path / f"p{n}.jsonl", [{"prompt": sentence}] * n)
        run = subprocess.run(
            [sys.executable, "-c", PEAK, str(model), str(prompts), str(tmp_path / f"o{n}")],
            env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[n] = int(run.stdout.split()[-1])
    assert peaks[256] - peaks[64] < GROWTH_BOUND_KIB, peaks


def test_saturation_counts_what_the_budget_takes(family, calibration):
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.efficacy.saturation import saturation

    found = saturation(str(family["aligned"]), str(family["finetuned"]), calibration, [0, 1e12])
    assert found["matrices"] == 14
    assert found["budgets"]["0"] == {"mean_share_taken": 0.0, "matrices_taking_all": 0}
    everything = found["budgets"]["1e+12"]
    assert everything["matrices_taking_all"] == 14
    assert everything["mean_share_taken"] == pytest.approx(0.85, abs=0.01)
