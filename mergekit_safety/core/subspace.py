"""Alignment-subspace math shared by every gated method (Safe LoRA, arXiv 2405.16833).

Per weight matrix: ``V = W_aligned − W_unaligned``, ``C = V Vᵀ / ‖V‖_F`` and the score
``ρ = cos(vec(C Δ), vec(Δ))`` of a fine-tuning update ``Δ`` (``out × in``). ``C`` is never built.
Everything runs in fp32 (fp64 when an input is fp64) on the inputs' device, so ``--cuda`` applies.
Norms and inner products are summed in pieces of 1024 (torch's one-pass fp32 norm is off by
~1e-4 on 10⁶ entries, which alone moved ρ by 1e-4).

:func:`score`, :func:`score_and_project` and :func:`project` pick one of two paths per matrix:

* **dense**, ``O(out·in·m)``, ``m = min(out, in)``: ``C Δ ∝ (V Vᵀ) Δ`` or ``V (Vᵀ Δ)``, whichever
  Gram matrix is ``m × m``. Two GEMMs, then three elementwise passes. Intermediates: ``m²`` and
  ``out × in``; never larger than the weight, never ``out × out`` for a tall (vocabulary) matrix.
* **low-rank**, ``O(out·in·k)``, when Δ is numerically of rank ``k ≤ m/4`` (a merged LoRA).
  A blocked randomized range finder (Halko–Martinsson–Tropp; blocked as in Martinsson–Voronin's
  randQB_b) sketches the residual ``R = Δ − Q W`` (never formed) with seeded Gaussian blocks:
  first 16 columns, plain (a rank-8 LoRA fits, with room: two passes over Δ in all); then, if
  that was not enough, one plain block sized from what the first caught (the directions still
  estimated missing plus 16 of oversampling, widths rounded to multiples of 16); only if that
  still falls short, blocks of 1.25× the estimate plus 16, each sharpened by one subspace
  iteration *on R* (so rounding noise barely tilts the basis and weak directions survive fp32).
  Each block is orthogonalized against the basis so far by one Householder QR of
  ``[Q | sketch]``. ``W = QᵀΔ``. The factorization is used only once ``‖Δ − Q W‖_F`` is proved
  within the tolerance: computed explicitly when ``‖Δ‖² − ‖W‖²`` (exact up to ~k·ε·‖Δ‖²) is
  within ``SLACK·‖Δ‖²`` of it, and taken from that estimate when the tolerance is far away.
  What the oversampling caught beyond Δ's rank is then cut (:func:`_truncated`: an SVD of W's
  k × k triangle, keeping the fewest directions that stay within the tolerance), so the products
  with V run at the rank Δ needs. Then, with ``Wᵀ = Q_w Tᵀ``, ``‖VᵀΔ‖ = ‖(VᵀQ) T‖``,
  ``‖V VᵀΔ‖ = ‖V(VᵀQ) T‖``, ``‖Δ‖ = ‖Q T‖`` (sums of squares, no cancellation) and
  ``C Δ = V(VᵀQ) W / ‖V‖``; intermediates are ``(out + in) × k``. It gives up — the dense path runs
  — as soon as the rank it would need exceeds ``m/4``, from a lower bound on the directions still
  missing (:func:`_directions_needed`). A full-rank Δ costs one 16-column sketch: 16/m of the
  dense path's flops (1.6 % at m = 1024; thin products run slower, so a few % of its time).
  A rank-64 bf16 LoRA of the benchmark's shapes costs 16 + 64 sketch columns, then products at
  k = 64: 1.7× the floor of four thin products at k = 64 (130 against 76 ms a layer, one core;
  ``benchmarks/README.md``).

**From LoRA factors** (:func:`lowrank_factors_score_and_project`, ``mergekit-safety adapter``): when
Δ = B A is given as factors nothing needs factorizing: the same formulas with ``Q = B`` (any
``out × r``) and ``W = A`` give ρ from ``Vᵀ B``, ``V (Vᵀ B)`` and r × r triangles, and
``C Δ = (C B) A``: Safe LoRA keeps ``A`` and the rank.

**Tolerance.** By default ``‖R‖ ≤ √n · ε · ‖Δ‖`` with ``n = max(out, in)`` and ε of the compute
dtype: the dense path's own rounding error (its first GEMM sums ``n`` products per entry). On fp32
inputs both paths then agree to fp32 accuracy, decisions included (``tests/test_lowrank.py``).

A **bf16 checkpoint is never low-rank at that precision.** ``θ_ft = bf16(θ_a + B A)`` stores
rounding noise ``E`` with ``|E_ij| ≤ u·|θ_ij|`` (u = 2⁻⁸): ``‖E‖ ≈ 0.42·u·‖θ‖``, full rank, 8 % of
‖Δ‖ for an update of 2 % of ‖θ‖ (30 % at 0.5 %). So the merge methods pass
``tolerance=rounding_tolerance(θ_aligned, storage dtype, fine-tunes)`` (``u·‖θ‖_F`` per
fine-tune: the worst-case rounding the checkpoint already carries; ``RoleInputs.rounding``).
What is dropped is then no larger than what the checkpoint cannot represent, and ρ becomes
ρ(QQᵀΔ): ``B A`` plus the part of the noise inside the sketched basis. The dense ρ(Δ) is no truer:
it scores the noise too, and ρ(B A) — the score of the update actually trained, which Safe LoRA
computes from LoRA factors — is known to neither. Measured on the benchmark's bf16 checkpoints
(2 % updates, noise 8 % of ‖Δ‖; ``benchmarks/README.md``): both land within 3.2e-3 of ρ(B A)
and within 2.0e-3 of each other, no decision at τ = 0.35 differs, and scoring is 3–10× faster;
a decision can flip only for a matrix that close to τ. An update *entirely* at the rounding
level (say sparse 1-ulp changes) must not vanish: a caller's tolerance is honoured only while
``‖R‖ ≤ ‖Δ‖ / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

FIRST_SKETCH = 16
"""Columns of the first Gaussian block: covers rank ≤ 16 LoRAs (8 and 16 are the common ranks)."""
MIN_LOWRANK_DIM = 64
"""Below this ``min(out, in)`` the dense path costs less than one sketch: always use it."""
RANK_FRACTION = 4
"""Try the low-rank path up to rank ``m / 4``, ``m = min(out, in)``: ≈ 55 % of the dense path's
flops there (four products at k = m/4 against two at m), so a rank-64 LoRA of a 512-row
``k_proj`` still qualifies."""
DOMINANCE = 0.5
"""A caller's tolerance is honoured only if ``‖R‖ ≤ DOMINANCE · ‖Δ‖``."""
POWER_ITERATIONS = 1
"""Subspace iterations per block after the first: rounding noise then barely tilts the basis."""
OVERSHOOT = 1.25
"""A sharpened block sketches 1.25× the directions estimated missing, plus 16; a plain one 1×."""
ALIGNMENT = 16
"""Sketch widths are rounded up to multiples of this."""
SLACK = 1e-3
"""``‖Δ‖² − ‖W‖²`` decides when it is more than ``SLACK·‖Δ‖²`` (≫ its rounding) from the limit;
closer, the residual is computed explicitly. At the default tolerance it always is."""
SEED = 0x5AFE

Wanted = bool | Callable[[float], bool]
"""Whether to return ``C Δ``: always, never, or as a function of ρ."""


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 otherwise: the precision mergekit's own methods use."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def subspace_product(delta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return ``V Vᵀ Δ`` (``C Δ`` times ``‖V‖_F``) densely, with the cheaper product order."""
    out_features, in_features = v.shape
    if out_features <= in_features:
        return (v @ v.T) @ delta
    return v @ (v.T @ delta)


def transposed_product(matrix: torch.Tensor, thin: torch.Tensor) -> torch.Tensor:
    """``Mᵀ X`` for a thin ``X``, in the memory order BLAS runs fastest for ``M``'s shape.

    On one CPU core ``(Xᵀ M)ᵀ`` is up to 1.8× faster for tall and square ``M``, ``Mᵀ X`` for wide.
    """
    if matrix.shape[0] >= matrix.shape[1]:
        return (thin.T @ matrix).T
    return matrix.T @ thin


def project(
    delta: torch.Tensor, v: torch.Tensor, *, tolerance: float | None = None
) -> torch.Tensor:
    """``C Δ`` with ``C = V Vᵀ / ‖V‖_F``; zero when ``V`` is zero (an empty subspace)."""
    return _evaluate(delta, v, tolerance, want_projection=True)[1]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two tensors flattened; NaN when either is zero."""
    denominator = norm_of(a) * norm_of(b)
    if denominator == 0:
        return math.nan
    return _dot(a, b) / denominator


def norm_of(tensor: torch.Tensor) -> float:
    """‖x‖_F in pieces of 1024: torch's one-pass fp32 norm loses ~1e-4 on millions of entries."""
    body, tail = _pieces(tensor)
    squares = torch.linalg.vector_norm(body, dim=1).double().square().sum()
    return math.sqrt(float(squares) + float(torch.linalg.vector_norm(tail.double())) ** 2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ flattened, summed in pieces for the same reason as :func:`norm_of`."""
    (a_body, a_tail), (b_body, b_tail) = _pieces(a), _pieces(b)
    body = torch.linalg.vecdot(a_body, b_body, dim=1).double().sum()
    return float(body) + float(torch.dot(a_tail.double(), b_tail.double()))


def _pieces(tensor: torch.Tensor, width: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat view as rows of ``width`` entries, and the remainder."""
    flat = tensor.reshape(-1)
    cut = flat.numel() - flat.numel() % width
    return flat[:cut].view(-1, width), flat[cut:]


def score(delta: torch.Tensor, v: torch.Tensor, *, tolerance: float | None = None) -> float:
    """ρ = cos(C Δ, Δ). NaN when ``V`` or ``Δ`` is zero: there is nothing to measure.

    An update orthogonal to a non-empty subspace (``C Δ = 0``) scores 0: it left it entirely.
    ``tolerance``: see the module docstring (default: working precision, same as dense).
    """
    return _evaluate(delta, v, tolerance, want_projection=False)[0]


def score_and_project(
    delta: torch.Tensor, v: torch.Tensor, *, tolerance: float | None = None
) -> tuple[float, torch.Tensor]:
    """ρ and ``C Δ`` from one product, for methods that need both."""
    rho, projected = _evaluate(delta, v, tolerance, want_projection=True)
    assert projected is not None
    return rho, projected


def score_and_project_if(
    delta: torch.Tensor,
    v: torch.Tensor,
    wanted: Callable[[float], bool],
    *,
    tolerance: float | None = None,
) -> tuple[float, torch.Tensor | None]:
    """ρ, and ``C Δ`` only if ``wanted(ρ)`` (else None): a gate that keeps a matrix's fine-tuned
    weights never pays for its projection (on the low-rank path, one product and a full-size
    output tensor)."""
    return _evaluate(delta, v, tolerance, want_projection=wanted)


def drifts(rho: float, threshold: float, *, inclusive: bool = False) -> bool:
    """Whether an update left the alignment subspace: ``ρ < τ`` (``ρ ≤ τ`` if inclusive).

    An undefined score (``V = 0`` or ``Δ = 0``) never counts as drift: alignment did not shape
    that matrix, or fine-tuning did not touch it, so the fine-tuned weights stand.
    """
    if math.isnan(rho):
        return False
    return rho <= threshold if inclusive else rho < threshold


# --------------------------------------------------------------------------------------------
# Tolerances


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = ε/2: the largest relative error of rounding one value to ``dtype``."""
    return torch.finfo(dtype).eps / 2


def working_tolerance(delta: torch.Tensor, norm: float | None = None) -> float:
    """``√n · ε · ‖Δ‖_F``, ``n = max(out, in)``: the dense path's own rounding error.

    Its first GEMM (``V Vᵀ`` or ``Vᵀ Δ``) sums ``n`` products per entry, so its result carries a
    relative error of about ``√n · u`` (``u = ε/2``): a smaller change to Δ is invisible to it.
    """
    dtype = compute_dtype(delta)
    if norm is None:
        norm = norm_of(delta.to(dtype))
    return math.sqrt(max(delta.shape)) * torch.finfo(dtype).eps * norm


def rounding_tolerance(weights: torch.Tensor, dtype: torch.dtype, count: int = 1) -> float:
    """``count · u(dtype) · ‖θ‖_F``: the rounding a Δ of ``count`` ``dtype`` checkpoints carries.

    ``weights`` is the aligned (or fine-tuned) matrix θ; ``count`` the number of fine-tunes
    summed into Δ (their rounding errors add).
    """
    norm = norm_of(weights.to(compute_dtype(weights)))
    return count * unit_roundoff(dtype) * norm


# --------------------------------------------------------------------------------------------
# Low-rank path


@dataclass(frozen=True)
class LowRank:
    """``Δ ≈ q @ w`` with orthonormal ``q`` (``out × k``); ``‖Δ − q w‖_F = residual``."""

    q: torch.Tensor
    w: torch.Tensor
    residual: float
    triangle: torch.Tensor | None = None
    """Any ``T`` with ``w = T Q_wᵀ``, ``Q_w`` orthonormal: ``‖X w‖ = ‖X T‖`` costs k², not k·in."""

    @property
    def rank(self) -> int:
        return self.q.shape[1]


def factorize(
    delta: torch.Tensor,
    *,
    tolerance: float | None = None,
    max_rank: int | None = None,
    norm: float | None = None,
) -> LowRank | None:
    """``Δ = Q W`` to within ``tolerance`` (Frobenius), or None if that needs rank > ``max_rank``.

    ``tolerance`` defaults to :func:`working_tolerance`; a larger one is honoured only while
    ``‖R‖ ≤ ‖Δ‖/2``. ``max_rank`` defaults to ``min(out, in) / 4``.
    """
    dtype = compute_dtype(delta)
    delta = delta.to(dtype)
    out_features, in_features = delta.shape
    if norm is None:
        norm = norm_of(delta)
    floor = working_tolerance(delta, norm)
    limit = floor if tolerance is None else max(floor, min(tolerance, DOMINANCE * norm))
    if max_rank is None:
        max_rank = min(out_features, in_features) // RANK_FRACTION
    if not math.isfinite(norm):
        return None

    generator = torch.Generator(device=delta.device).manual_seed(SEED)
    q = delta.new_empty(out_features, 0)
    w = delta.new_empty(0, in_features)
    rank, block, estimate, sharpen = 0, FIRST_SKETCH, norm**2, False
    while True:
        block = min(block, max_rank - rank)
        if block <= 0:
            return None
        omega = torch.randn(
            in_features, block, generator=generator, device=delta.device, dtype=dtype
        )
        # Sketch the residual R = Δ − q w without forming it. The first two blocks are plain
        # (two passes over Δ each): the first measures how much is there, the second is sized
        # to take the rest. Later blocks are sharpened by a subspace iteration *on R* (not Δ:
        # its dynamic range is R's own, so weak directions survive fp32).
        sketch = delta @ omega - q @ (w @ omega)
        for _ in range(POWER_ITERATIONS if sharpen else 0):
            basis = torch.linalg.qr(sketch)[0]
            z = torch.linalg.qr(transposed_product(delta, basis) - w.T @ (q.T @ basis))[0]
            sketch = delta @ z - q @ (w @ z)
        # One Householder QR of [q | sketch]: q_new ⟂ q to working precision however weak the
        # sketch's columns are (beyond Δ's rank they are rounding noise, in any direction).
        q_new = torch.linalg.qr(torch.cat([q, sketch], dim=1))[0][:, rank:]
        w_new = q_new.T @ delta  # = q_newᵀ (Δ − q w): q_new ⟂ q
        q, w = torch.cat([q, q_new], dim=1), torch.cat([w, w_new], dim=0)
        rank += block
        # ‖Δ − q w‖² = ‖Δ‖² − ‖w‖² for orthonormal q, up to rounding of order k·ε·‖Δ‖²
        before, estimate = estimate, norm**2 - norm_of(w) ** 2
        if not math.isfinite(estimate):
            return None
        if estimate + SLACK * norm**2 <= limit**2:  # a loose tolerance, met with room to spare
            return _truncated(q, w, estimate, limit**2 - SLACK * norm**2)
        if estimate <= limit**2 + SLACK * norm**2:  # too close to call: compute it
            residual = norm_of(torch.addmm(delta, q, w, alpha=-1))
            if residual <= limit:
                return _truncated(q, w, residual**2, limit**2)
            estimate = residual**2
        needed = _directions_needed(w_new, before, estimate, limit, sharpened=sharpen)
        if rank + needed > max_rank:
            return None
        # The second block is plain, sized by the first's average (exact for a flat spectrum)
        # plus 16 columns of oversampling; a third is sharpened and its bound is firmer, but a
        # miss there costs four more passes, so it overshoots. Widths are multiples of 16: an
        # odd k runs BLAS's thin products up to 1.8× slower (k = 63 against 64).
        sharpen = rank > FIRST_SKETCH
        wanted = rank + math.ceil((OVERSHOOT if sharpen else 1.0) * needed) + FIRST_SKETCH
        block = -(-wanted // ALIGNMENT) * ALIGNMENT - rank


def _truncated(q: torch.Tensor, w: torch.Tensor, residual: float, allowed: float) -> LowRank:
    """``q w`` cut to the fewest directions whose remainder stays within ``allowed`` (squared).

    The sketch oversamples; what it caught beyond Δ's rank is noise the tolerance allows to
    drop. With ``w = U S Xᵀ`` (an SVD through the k × k triangle of ``wᵀ``), keeping the top
    directions ``q U_k``, ``U_kᵀ w`` adds exactly their dropped ``Σ s²`` to ``residual``
    (both squared): the products with V then run at the rank Δ needs (rounded up to
    :data:`ALIGNMENT`), not at the sketch's width.
    """
    triangle = torch.linalg.qr(w.T, mode="r")[1].T  # w = T Q_wᵀ
    u, s, _ = torch.linalg.svd(triangle)
    squares = s.double().square()
    tail = (squares.sum() - torch.cumsum(squares, 0)).tolist()  # energy beyond the first i + 1
    keep = next(
        (i + 1 for i, dropped in enumerate(tail) if residual + dropped <= allowed), len(tail)
    )
    keep = min(-(-keep // ALIGNMENT) * ALIGNMENT, len(tail))
    if keep == len(tail):
        return LowRank(q, w, math.sqrt(max(residual, 0.0)), triangle)
    u = u[:, :keep]
    return LowRank(q @ u, u.T @ w, math.sqrt(max(residual + tail[keep - 1], 0.0)), u.T @ triangle)


def _directions_needed(
    w_new: torch.Tensor, before: float, after: float, limit: float, *, sharpened: bool
) -> float:
    """A lower bound on the directions still missing, from the block just captured.

    A plain Gaussian block captures at least the average energy per direction of what it
    sketched (Σσ⁴/Σσ² ≥ Σσ²/r per column); a sharpened one captures the strongest directions
    first, so each one missing holds no more than the weakest just captured.
    """
    if sharpened:
        captured = float(torch.linalg.eigvalsh(w_new @ w_new.T)[0])  # its σ²
    else:
        captured = (before - after) / w_new.shape[0]
    return (after - limit**2) / captured if captured > 0 else math.inf


def lowrank_score_and_project(
    factors: LowRank,
    v: torch.Tensor,
    *,
    want_projection: Wanted = True,
    v_norm: float | None = None,
) -> tuple[float, torch.Tensor | None]:
    """ρ and ``C Δ`` for ``Δ = q w``: two ``out·in·k`` products (three with ``C Δ``)."""
    rho, p, _ = _factored_score(factors.q, factors.w, v.to(factors.q.dtype), factors.triangle)
    if not _wanted(want_projection, rho):
        return rho, None
    return rho, (p @ factors.w).div_(norm_of(v) if v_norm is None else v_norm)


def lowrank_factors_score_and_project(
    b: torch.Tensor, a: torch.Tensor, v: torch.Tensor, *, want_projection: bool = True
) -> tuple[float, torch.Tensor | None]:
    """ρ and the projected left factor ``B′ = C B`` for ``Δ = B A`` given as factors (a LoRA).

    ``C Δ = (C B) A``, so Safe LoRA in adapter space keeps ``A`` and the rank. ``B`` is any
    ``out × r`` factor (the LoRA scale folded in), ``A`` any ``r × in``: ρ costs the two thin
    products ``Vᵀ B`` and ``V (Vᵀ B)`` (``out·in·r`` flops each) and r × r triangles; no Δ is
    formed. NaN (and ``B′ = 0``) when ``V`` or ``Δ`` is zero, as :func:`score`.
    """
    dtype = torch.float64 if torch.float64 in (b.dtype, a.dtype, v.dtype) else torch.float32
    b, a, v = b.to(dtype), a.to(dtype), v.to(dtype)
    v_norm = norm_of(v)
    if not _nonzero(v, v_norm):
        return math.nan, torch.zeros_like(b) if want_projection else None
    rho, p, delta_norm = _factored_score(b, a, v)
    if delta_norm == 0:
        return math.nan, torch.zeros_like(b) if want_projection else None
    return rho, p.div_(v_norm) if want_projection else None


def _factored_score(
    q: torch.Tensor, w: torch.Tensor, v: torch.Tensor, triangle: torch.Tensor | None = None
) -> tuple[float, torch.Tensor, float]:
    """ρ, ``V Vᵀ q`` and ``‖Δ‖`` for ``Δ = q w`` (``q`` need not be orthonormal).

    Norms go through ``T`` (``wᵀ = Q_w Tᵀ``, so ``‖X w‖ = ‖X T‖``): each is a sum of squares,
    with no cancellation.
    """
    if triangle is None:
        triangle = torch.linalg.qr(w.T, mode="r")[1].T  # w = T Q_wᵀ
    z = transposed_product(v, q)  # Vᵀ q: in × k
    p = v @ z  # V Vᵀ q: out × k
    along = norm_of(z @ triangle) ** 2  # ‖Vᵀ Δ‖²
    delta_norm = norm_of(q @ triangle)
    size = norm_of(p @ triangle) * delta_norm  # ‖V Vᵀ Δ‖ · ‖Δ‖
    rho = along / size if size > 0 else 0.0
    return rho, p, delta_norm


def dense_score_and_project(
    delta: torch.Tensor,
    v: torch.Tensor,
    *,
    want_projection: Wanted = True,
    v_norm: float | None = None,
    delta_norm: float | None = None,
) -> tuple[float, torch.Tensor | None]:
    """ρ and ``C Δ`` by the dense path: two GEMMs, then three passes (‖P‖, ⟨P, Δ⟩, P/‖V‖)."""
    product = subspace_product(delta, v)
    denominator = norm_of(product) * (norm_of(delta) if delta_norm is None else delta_norm)
    rho = _dot(product, delta) / denominator if denominator > 0 else 0.0
    if not _wanted(want_projection, rho):
        return rho, None
    return rho, product.div_(norm_of(v) if v_norm is None else v_norm)


# --------------------------------------------------------------------------------------------
# Dispatch


def _evaluate(
    delta: torch.Tensor, v: torch.Tensor, tolerance: float | None, *, want_projection: Wanted
) -> tuple[float, torch.Tensor | None]:
    """ρ and (if asked) ``C Δ``, by the low-rank path when Δ allows it, else densely."""
    dtype = torch.float64 if torch.float64 in (delta.dtype, v.dtype) else torch.float32
    delta, v = delta.to(dtype), v.to(dtype)
    v_norm, delta_norm = norm_of(v), norm_of(delta)
    if not (_nonzero(v, v_norm) and _nonzero(delta, delta_norm)):
        return math.nan, torch.zeros_like(delta) if _wanted(want_projection, math.nan) else None
    if delta.ndim == 2 and min(delta.shape) >= MIN_LOWRANK_DIM:
        factors = factorize(delta, tolerance=tolerance, norm=delta_norm)
        if factors is not None:
            return lowrank_score_and_project(
                factors, v, want_projection=want_projection, v_norm=v_norm
            )
    return dense_score_and_project(
        delta, v, want_projection=want_projection, v_norm=v_norm, delta_norm=delta_norm
    )


def _wanted(want: Wanted, rho: float) -> bool:
    return want(rho) if callable(want) else want


def _nonzero(tensor: torch.Tensor, norm: float) -> bool:
    """Whether any entry is nonzero; the norm answers unless every square underflowed."""
    return norm > 0 or bool(torch.any(tensor != 0))


# --- truncated SVD (LoX) ------------------------------------------------------------------------

EXACT_SVD_DIM = 256
"""Up to this ``min(out, in)`` a full ``torch.linalg.svd`` costs less than the sketches: use it."""
SVD_RANK_FRACTION = 4
"""Randomized only while ``k + oversampling ≤ min(out, in) / 4``; closer to full rank, exact."""
SVD_OVERSAMPLING = 10
SVD_POWER_ITERATIONS = 4
"""Subspace iterations: singular values of an alignment update decay slowly, so sharpen hard."""


def truncated_svd(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``k`` singular triplets ``(U_k, S_k, Vh_k)`` of a 2-D matrix, in fp32 (fp64).

    Exact (``torch.linalg.svd``) for small matrices or ``k`` near full rank; otherwise a
    randomized range finder (Halko–Martinsson–Tropp) with ``k + 10`` columns and 4 orthonormalized
    power iterations, then an exact SVD of the small ``Qᵀ M``. The Gaussian test matrix is drawn
    from a CPU generator seeded by the matrix shape and ``k``, then moved to the matrix's device:
    the same inputs give the same sketch in every run, process and device. ``k`` is clipped to
    ``min(out, in)``.
    """
    if matrix.ndim != 2:
        raise ValueError(f"truncated_svd needs a 2-D matrix; got shape {tuple(matrix.shape)}")
    dtype = compute_dtype(matrix)
    work = matrix.to(dtype)
    rows, cols = work.shape
    smallest = min(rows, cols)
    k = max(0, min(int(k), smallest))
    width = k + SVD_OVERSAMPLING
    if smallest <= EXACT_SVD_DIM or width * SVD_RANK_FRACTION > smallest:
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    tall = rows >= cols
    a = work if tall else work.T  # sketch the column space of the tall orientation
    generator = torch.Generator().manual_seed(
        SEED * 1_000_003 + a.shape[0] * 65_537 + a.shape[1] * 31 + k
    )
    omega = torch.randn(a.shape[1], width, generator=generator, dtype=dtype).to(a.device)
    q = torch.linalg.qr(a @ omega).Q
    for _ in range(SVD_POWER_ITERATIONS):
        q = torch.linalg.qr(a.T @ q).Q
        q = torch.linalg.qr(a @ q).Q
    u_small, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    u = q @ u_small
    u, s, vh = u[:, :k], s[:k], vh[:k]
    return (u, s, vh) if tall else (vh.T, s, u.T)


def low_rank_approximation(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """``SVD_k(M) = U_k S_k Vh_k``: the best rank-``k`` approximation; ``k = 0`` means all of M."""
    if k == 0:
        return matrix.to(compute_dtype(matrix), copy=True)
    u, s, vh = truncated_svd(matrix, k)
    return (u * s) @ vh
