"""lssf against θ = θ_ft + α·P V computed by hand: P from V's own SVD (data-free) or from the
aligned layer's outputs on calibration data, r by the singular value entropy, P weighted or not."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    REPO,
    layer_inputs,
    one_line,
    prompts_file,
    recipe_for,
    write_recipe,
    yaml_in_process,
)
from mergekit.merge_methods import merge_tensors
from safetensors.torch import load_file

from mergekit_safety.methods.lssf import activation_basis, entropy_rank, projector_weights


def reference_rank(s: list[float], eta: float, cap: int) -> int:
    """The rule written out in plain Python: the fewest leading terms holding eta of the entropy."""
    energy = [x * x for x in s]
    p = [e / sum(energy) for e in energy]
    h = [-q * math.log(q) if q > 0 else 0.0 for q in p]
    running, rank = 0.0, len(h)
    for i, term in enumerate(h):
        running += term
        if running >= eta * sum(h) - 1e-12:
            rank = i + 1
            break
    return min(rank, cap) if cap else rank


def reference(aligned, unaligned, finetuned, alpha, eta, cap, top_weight=1.0, inputs=None):
    """``inputs`` (tokens × in): the subspace of the aligned layer's outputs on them, else V's."""
    v = aligned.double() - unaligned.double()
    source = v if inputs is None else aligned.double() @ inputs.T
    u, s, _ = torch.linalg.svd(source, full_matrices=False)
    r = reference_rank(s.tolist(), eta, cap)
    p = torch.zeros(v.shape[0], v.shape[0], dtype=torch.float64)
    for i in range(r):  # the (weighted) projector onto the safety subspace, term by term
        a = 1.0
        if r > 1 and s[0] > s[r - 1]:
            a = 1 + (top_weight - 1) * float((s[i] - s[r - 1]) / (s[0] - s[r - 1]))
        p += a * a * torch.outer(u[:, i], u[:, i])
    return finetuned.double() + alpha * p @ v, r


def test_entropy_rank_by_hand():
    # p = (0.64, 0.36) (σ = 4, 3, 0): h = (0.2856, 0.3678); share after one term 0.437
    s = torch.tensor([4.0, 3.0, 0.0])
    assert entropy_rank(s, 0.4) == 1
    assert entropy_rank(s, 0.5) == 2
    assert entropy_rank(s, 1.0) == 2  # the zero direction adds no entropy
    assert entropy_rank(s, 0.5, max_rank=1) == 1
    assert entropy_rank(torch.tensor([2.0, 0.0]), 0.9) == 1  # one direction: zero entropy
    assert entropy_rank(torch.zeros(3), 0.9) == 0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("eta", "cap"), [(0.85, 8), (0.5, 0), (0.95, 3), (1.0, 0)])
def test_entropy_rank_matches_plain_python(seed, eta, cap):
    s = torch.sort(torch.rand(12, generator=torch.Generator().manual_seed(seed)), descending=True)
    assert entropy_rank(s.values, eta, cap) == reference_rank(s.values.tolist(), eta, cap)


def test_projector_weights_by_hand():
    # σ = (4, 3, 1), top weight 2: a = (2, 1 + (3 − 1)/(4 − 1), 1)
    got = projector_weights(torch.tensor([4.0, 3.0, 1.0]), 3, 2.0)
    torch.testing.assert_close(got, torch.tensor([4.0, (5 / 3) ** 2, 1.0], dtype=torch.float64))
    assert projector_weights(torch.tensor([4.0, 3.0]), 1, 2.0).tolist() == [1.0]
    assert projector_weights(torch.tensor([2.0, 2.0]), 2, 3.0).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])  # both of activation_basis' routes
def test_activation_basis_is_the_svd_of_the_layer_outputs(shape):
    g = torch.Generator().manual_seed(shape[0])
    w = torch.randn(shape, generator=g)
    x = (torch.randn(60, shape[1], generator=g) * torch.linspace(0.1, 2, shape[1])).double()
    u, s = activation_basis(w, x.T @ x)
    eu, es, _ = torch.linalg.svd(w.double() @ x.T, full_matrices=False)
    k = min(shape)
    torch.testing.assert_close(s[:k], es[:k], atol=1e-8, rtol=1e-8)
    for r in (1, 5, k):  # the same subspaces, whatever the signs
        torch.testing.assert_close(u[:, :r] @ u[:, :r].T, eu[:, :r] @ eu[:, :r].T, atol=1e-8,
                                   rtol=1e-8)  # fmt: skip


def triple(seed: int, shape=(48, 32)):
    g = torch.Generator().manual_seed(seed)
    unaligned = torch.randn(shape, generator=g)
    # an alignment update with a decaying spectrum, so the entropy rule has something to choose
    u = torch.linalg.qr(torch.randn(shape[0], shape[1], generator=g))[0]
    w = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))[0]
    s = 0.5 * torch.exp(-torch.arange(shape[1], dtype=torch.float32) / 3)
    aligned = unaligned + (u * s) @ w.T
    finetuned = aligned + 0.05 * torch.randn(shape, generator=g)
    return aligned, unaligned, finetuned


@pytest.mark.parametrize(
    ("alpha", "eta", "cap", "top"), [(1.0, 0.85, 8, 1.0), (2.0, 0.6, 0, 1.0), (0.5, 0.99, 4, 2.5)]
)
def test_api_matches_dense_reference(alpha, eta, cap, top):
    aligned, unaligned, finetuned = triple(int(alpha * 10))
    got = merge_tensors(
        [aligned, finetuned, unaligned], "lssf", base_index=0, ids=["a", "f", "u"],
        parameters={"role": {"u": "unaligned"}, "alpha": alpha, "eta": eta, "max_rank": cap,
                    "top_weight": top},
    )  # fmt: skip
    expected, rank = reference(aligned, unaligned, finetuned, alpha, eta, cap, top)
    assert 1 < rank < 32  # the rule picked a real truncation
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_mergekit_yaml_matches_dense_reference(tmp_path, family):
    out = tmp_path / "out"
    recipe = recipe_for("lssf", family, ("unaligned",), alpha=1.5, eta=0.7, max_rank=6)
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(out / "model.safetensors")
    a, u, f = (
        load_file(family[k] / "model.safetensors") for k in ("aligned", "unaligned", "finetuned")
    )
    fused = 0
    for name, tensor in merged.items():
        if a[name].ndim != 2 or "embed" in name or "lm_head" in name:
            assert torch.equal(tensor, f[name]), name  # keeps the fine-tune
            continue
        expected, _ = reference(a[name], u[name], f[name], 1.5, 0.7, 6)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-5, rtol=1e-5, msg=name)
        fused += 1
    assert fused == 14


def test_mergekit_yaml_with_calibration_matches_the_layer_outputs(tmp_path, family, calibration):
    """The paper's subspace: the aligned layer's outputs on the calibration texts, here computed
    from the captured inputs themselves (not from the statistics the merge reads)."""
    out = tmp_path / "out"
    recipe = recipe_for("lssf", family, ("unaligned",), alpha=1.5, eta=0.9, max_rank=0,
                        top_weight=2.0, calibration=str(calibration))  # fmt: skip
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(out / "model.safetensors")
    a, u, f = (
        load_file(family[k] / "model.safetensors") for k in ("aligned", "unaligned", "finetuned")
    )
    inputs = layer_inputs(family["aligned"], prompts_file(tmp_path / "p.jsonl"))
    ranks = []
    for name, tensor in merged.items():
        module = name.removesuffix(".weight")
        if module not in inputs:
            assert torch.equal(tensor, f[name]), name  # no statistics: keeps the fine-tune
            continue
        expected, rank = reference(a[name], u[name], f[name], 1.5, 0.9, 0, 2.0, inputs[module])
        torch.testing.assert_close(tensor.double(), expected, atol=1e-5, rtol=1e-5, msg=name)
        ranks.append(rank)
    assert len(ranks) == 14 and any(1 < r for r in ranks)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eta": 0}, "parameter 'eta': Input should be greater than 0 (got 0)"),
        ({"max_rank": -1}, "parameter 'max_rank': Input should be greater than or equal to 0"),
        ({"top_weight": 0.5}, "parameter 'top_weight': Input should be greater than or equal to 1"),
        ({"calibration": "/nonexistent"}, "calibration /nonexistent: no such directory"),
        ({"threshold": 0.3}, "lssf: `threshold` in the top-level `parameters:` is not a parameter"),
    ],
)
def test_mistakes_give_one_line(tmp_path, family, change, message):
    recipe = recipe_for("lssf", family, ("unaligned",), **change)
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe), out)
    assert message in one_line(result)
    assert not out.exists()


def test_needs_an_unaligned_model(tmp_path, family):
    out = tmp_path / "out"
    result = yaml_in_process(write_recipe(tmp_path / "r.yml", recipe_for("lssf", family, ())), out)
    assert "lssf needs a model with role 'unaligned'" in one_line(result)


@pytest.mark.parametrize("name", ["lssf", "lssf_calibrated"])
def test_shipped_recipe_runs(tmp_path, name):
    out = tmp_path / name
    result = yaml_in_process(REPO / "recipes" / f"{name}.yml", out, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()
