"""Random Llama-shaped checkpoints for the merge benchmark: one family, written as safetensors.

Every tensor comes from a generator seeded by (model role, tensor name), so a model can be written
one at a time (one model in memory, not six) and the fp32 LoRA update behind a fine-tune can be
rebuilt later to compare ρ with the value before bf16 rounding.

The family: ``unaligned`` → ``aligned`` (+ V, an alignment update with most of its energy on 32
directions) → fine-tunes with a full-rank update and with rank-8 and rank-64 updates
(θ_ft = cast(θ_a + B A), as merging a LoRA gives) → ``safe`` (+ a small rank-16 safety update).
Even layers' updates lie mostly in V's column space (ρ high: kept), odd layers' do not (ρ low:
merged), so the gated methods take both branches.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

ALIGNMENT_RANK = 32
UPDATE_SCALE = 0.02
"""‖Δ‖ / ‖θ‖ of each fine-tune's update: a typical merged LoRA."""
ALIGNMENT_SCALE = 0.05
SAFE_SCALE = 0.01


@dataclass(frozen=True)
class Size:
    """A Llama configuration: the knobs that set the parameter count."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    def parameters(self) -> int:
        head = self.hidden // self.heads
        attention = 2 * self.hidden**2 + 2 * self.hidden * self.kv_heads * head
        mlp = 3 * self.hidden * self.intermediate
        layer = attention + mlp + 2 * self.hidden
        return self.layers * layer + 2 * self.vocab * self.hidden + self.hidden


SIZES = {
    "small": Size(hidden=256, intermediate=704, layers=4, heads=4, kv_heads=2, vocab=8192),
    "default": Size(hidden=1024, intermediate=2816, layers=32, heads=16, kv_heads=8, vocab=50304),
    "large": Size(hidden=2048, intermediate=5632, layers=24, heads=16, kv_heads=8, vocab=50304),
}
FINETUNES = {"full": None, "r8": 8, "r64": 64}
"""Fine-tune name → rank of its update (None: full rank)."""
MODELS = ("unaligned", "aligned", *(f"ft_{name}" for name in FINETUNES), "safe")


def shapes(size: Size) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes, in the order a Llama checkpoint lists them."""
    head = size.hidden // size.heads
    kv = size.kv_heads * head
    yield "model.embed_tokens.weight", (size.vocab, size.hidden)
    for i in range(size.layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (size.hidden, size.hidden)
        yield p + "self_attn.k_proj.weight", (kv, size.hidden)
        yield p + "self_attn.v_proj.weight", (kv, size.hidden)
        yield p + "self_attn.o_proj.weight", (size.hidden, size.hidden)
        yield p + "mlp.gate_proj.weight", (size.intermediate, size.hidden)
        yield p + "mlp.up_proj.weight", (size.intermediate, size.hidden)
        yield p + "mlp.down_proj.weight", (size.hidden, size.intermediate)
        yield p + "input_layernorm.weight", (size.hidden,)
        yield p + "post_attention_layernorm.weight", (size.hidden,)
    yield "model.norm.weight", (size.hidden,)
    yield "lm_head.weight", (size.vocab, size.hidden)


def gated(name: str, shape: tuple[int, ...]) -> bool:
    """The 2-D weights without a vocabulary axis: those the gated methods score."""
    return len(shape) == 2 and "embed" not in name and "lm_head" not in name


def layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else -1


def generator(name: str, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{purpose}:{name}".encode()))


def unaligned(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = generator(name, "unaligned")
    if len(shape) == 1:
        return 1 + 0.01 * torch.randn(shape, generator=g)
    return 0.02 * torch.randn(shape, generator=g)


def alignment_basis(name: str, rows: int) -> torch.Tensor:
    """Columns spanning most of V's energy: where even layers' fine-tunes also move."""
    return torch.randn(rows, ALIGNMENT_RANK, generator=generator(name, "basis"))


def alignment(name: str, shape: tuple[int, ...], theta: torch.Tensor) -> torch.Tensor:
    """V: ALIGNMENT_SCALE·‖θ‖, 99 % of its energy on 32 directions, the rest full rank."""
    g = generator(name, "alignment")
    if not gated(name, shape):
        return 0.01 * theta.abs().mean() * torch.randn(shape, generator=g)
    mix = torch.randn(ALIGNMENT_RANK, shape[1], generator=g)
    structured = alignment_basis(name, shape[0]) @ mix
    noise = torch.randn(shape, generator=g)
    v = structured / structured.norm() + 0.1 * noise / noise.norm()
    return v * (ALIGNMENT_SCALE * theta.norm() / v.norm())


def update(
    name: str, shape: tuple[int, ...], rank: int | None, theta: torch.Tensor
) -> torch.Tensor:
    """A fine-tune's fp32 update, UPDATE_SCALE·‖θ‖: B A for a rank, else full rank."""
    g = generator(name, f"update{rank}")
    if not gated(name, shape):
        if rank is not None:  # a LoRA leaves embeddings and norms alone
            return torch.zeros(shape)
        return 0.002 * theta.abs().mean() * torch.randn(shape, generator=g)
    inside = layer_of(name) % 2 == 0
    width = shape[1] if rank is None else rank
    if inside:
        left = alignment_basis(name, shape[0]) @ torch.randn(ALIGNMENT_RANK, width, generator=g)
        left += 0.05 * left.norm() / width**0.5 * torch.randn(shape[0], width, generator=g)
    else:
        left = torch.randn(shape[0], width, generator=g)
    delta = left if rank is None else left @ torch.randn(rank, shape[1], generator=g)
    return delta * (UPDATE_SCALE * theta.norm() / delta.norm())


def safety_update(name: str, shape: tuple[int, ...], theta: torch.Tensor) -> torch.Tensor:
    g = generator(name, "safe")
    if not gated(name, shape):
        return torch.zeros(shape)
    delta = torch.randn(shape[0], 16, generator=g) @ torch.randn(16, shape[1], generator=g)
    return delta * (SAFE_SCALE * theta.norm() / delta.norm())


def tensor(model: str, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One tensor of one model, rebuilt from the seeds (each model rounds to ``dtype`` once)."""
    base = unaligned(name, shape).to(dtype).float()
    if model == "unaligned":
        return base.to(dtype)
    aligned = (base + alignment(name, shape, base)).to(dtype).float()
    if model == "aligned":
        return aligned.to(dtype)
    if model == "safe":
        return (aligned + safety_update(name, shape, aligned)).to(dtype)
    rank = FINETUNES[model.removeprefix("ft_")]
    return (aligned + update(name, shape, rank, aligned)).to(dtype)


def config(size: Size, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "vocab_size": size.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def family_paths(root: Path) -> dict[str, Path]:
    """Where each model of the family lives under ``root``, built or not."""
    return {model: root / model for model in MODELS}


def build(root: Path, size: Size, dtype: torch.dtype, *, quiet: bool = False) -> dict[str, Path]:
    """Write every model of the family under ``root`` (kept if already built with this spec)."""
    spec = {"size": asdict(size), "dtype": str(dtype), "version": 1}
    paths = family_paths(root)
    stamp = root / "family.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return paths
    names = list(shapes(size))
    for model in tqdm(MODELS, desc="checkpoints", disable=quiet):
        path = paths[model]
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor(model, name, shape, dtype) for name, shape in names}
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(config(size, dtype), indent=2))
        del tensors
    stamp.write_text(json.dumps(spec))
    return paths
