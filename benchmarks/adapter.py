"""Adapter-space merges against the full-weight path and stock ``task_arithmetic``.

The same family as ``benchmarks/merge.py`` (``benchmarks/checkpoints.py``: bf16, the ≈0.5B
model's layer shapes — hidden 1024, intermediate 2816 — with fewer layers by default), plus the
LoRA factors behind its rank-8 and rank-64 fine-tunes and its rank-16 safety update, written as
peft adapters (``θ_ft = bf16(θ_a + B A)``: the adapters are exactly those fine-tunes). Per rank
and method it times, interleaved, in fresh processes (``benchmarks/measure.py``: wall time and the
child's peak RSS):

* ``adapter``: ``mergekit-safety adapter`` on the recipe with ``aligned+lora`` inputs;
* ``full``: ``mergekit-yaml`` on the same recipe with the merged fine-tune (``ft_rN``) as input —
  the full-weight gated path, without the LoRA merge ``--lora-merge-cache`` would add;
* ``stock``: ``task_arithmetic`` over the full models (aligned base, fine-tune, unaligned[, safe]).

    python -m benchmarks.adapter --layers 4 --repeats 1
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import click
import torch
from safetensors.torch import save_file

from benchmarks import checkpoints
from benchmarks.jobs import BIN, MERGE_OPTIONS, recipe
from benchmarks.measure import Sample, measure

METHODS = ("safe_linear", "safe_lora", "safemerge")


def lora_factors(name, shape, rank, theta):
    """The (B, A) with ``checkpoints.update(name, shape, rank, θ) == B @ A`` (same draws)."""
    g = checkpoints.generator(name, f"update{rank}")
    inside = checkpoints.layer_of(name) % 2 == 0
    if inside:
        left = checkpoints.alignment_basis(name, shape[0]) @ torch.randn(
            checkpoints.ALIGNMENT_RANK, rank, generator=g
        )
        left += 0.05 * left.norm() / rank**0.5 * torch.randn(shape[0], rank, generator=g)
    else:
        left = torch.randn(shape[0], rank, generator=g)
    right = torch.randn(rank, shape[1], generator=g)
    scale = checkpoints.UPDATE_SCALE * theta.norm() / (left @ right).norm()
    return left * scale, right


def safety_factors(name, shape, theta):
    g = checkpoints.generator(name, "safe")
    left, right = torch.randn(shape[0], 16, generator=g), torch.randn(16, shape[1], generator=g)
    return left * (checkpoints.SAFE_SCALE * theta.norm() / (left @ right).norm()), right


def write_adapter(path: Path, size, factors) -> Path:
    """A peft LoRA (alpha = r: scale 1) from ``factors(name, shape, θ_aligned) -> (B, A)``."""
    tensors, rank = {}, None
    for name, shape in checkpoints.shapes(size):
        if not checkpoints.gated(name, shape):
            continue
        theta = checkpoints.tensor("aligned", name, shape, torch.bfloat16).float()
        b, a = factors(name, shape, theta)
        module, rank = name.removesuffix(".weight"), a.shape[0]
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path


def recipes(paths, adapters, rank, method):
    """(adapter recipe, full recipe, stock recipe) for one rank and method."""
    aligned, unaligned, safe = paths["aligned"], paths["unaligned"], paths["safe"]
    ft, lora = paths[f"ft_r{rank}"], adapters[f"r{rank}"]
    weights = {"safe_linear": {"weight": 0.7}, "safe_lora": {}, "safemerge": {"weight": 0.8}}
    tail = [(unaligned, {"role": "unaligned"})]
    stock = [(ft, {"weight": 0.7}), (unaligned, {"weight": 0.1})]
    if method == "safemerge":
        tail.append(("SAFE", {"role": "safe", "weight": 0.2}))
        stock.append((safe, {"weight": 0.2}))
    full = recipe(method, "bfloat16", [(ft, weights[method]), *tail[:1]], aligned)
    adapter = json.loads(json.dumps(full))
    adapter["models"][0]["model"] = f"{aligned.resolve()}+{lora.resolve()}"
    if method == "safemerge":
        full["models"].append({"model": str(safe.resolve()), "parameters": tail[1][1]})
        adapter["models"].append(
            {"model": f"{aligned.resolve()}+{adapters['safe'].resolve()}",
             "parameters": tail[1][1]}
        )  # fmt: skip
    return adapter, full, recipe("task_arithmetic", "bfloat16", stock, aligned)


def run(kind: str, body: dict, workdir: Path, env: dict) -> Sample:
    path = workdir / "recipes" / f"{kind}-{abs(hash(json.dumps(body)))}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2))
    out = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
    if kind == "adapter":
        out.rmdir()
        command = [str(BIN / "mergekit-safety"), "adapter", str(path), str(out), "--quiet"]
    else:
        command = [str(BIN / "mergekit-yaml"), str(path), str(out), *MERGE_OPTIONS]
    try:
        return measure(command, env=env)
    finally:
        shutil.rmtree(out, ignore_errors=True)


READER = """
import sys
from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache
from mergekit.options import MergeOptions
import mergekit_safety.adapter
LoaderCache().setup(MergeOptions())
names = [line for line in open(sys.argv[3]).read().split()]
for path in sys.argv[1:3]:
    loader = LoaderCache().get(ModelReference.model_validate(path))
    for name in names:
        loader.get_tensor(name).float()
"""


def read_all(paths, workdir: Path) -> list[str]:
    """A command that reads what the gate reads, and nothing else: the reader's own cost."""
    names = workdir / "gated.txt"
    size = json.loads((workdir / "family" / "family.json").read_text())["size"]
    shapes = checkpoints.shapes(checkpoints.Size(**size))
    names.write_text("\n".join(n for n, s in shapes if checkpoints.gated(n, s)))
    aligned, unaligned = (str(paths[m].resolve()) for m in ("aligned", "unaligned"))
    return [sys.executable, "-c", READER, aligned, unaligned, str(names)]


@click.command()
@click.option("--layers", type=click.IntRange(1), default=4, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True)
@click.option("--ranks", default="8,64", show_default=True)
@click.option("--methods", default=",".join(METHODS), show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()) / "mergekit-safety-bench-adapter",
    show_default=True,
)
def main(layers, repeats, ranks, methods, threads, workdir):
    size = checkpoints.Size(
        hidden=1024, intermediate=2816, layers=layers, heads=16, kv_heads=8, vocab=8192
    )
    workdir.mkdir(parents=True, exist_ok=True)
    paths = checkpoints.build(workdir / "family", size, torch.bfloat16, quiet=True)
    ranks = [int(r) for r in ranks.split(",")]
    adapters = {
        f"r{r}": write_adapter(
            workdir / f"lora_r{r}", size, lambda n, s, t, r=r: lora_factors(n, s, r, t)
        )
        for r in ranks
    }
    adapters["safe"] = write_adapter(workdir / "lora_safe", size, safety_factors)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    cells = []
    for rank in ranks:
        for method in methods.split(","):
            adapter, full, stock = recipes(paths, adapters, rank, method)
            cells.append(((rank, method), {"adapter": adapter, "full": full, "stock": stock}))
    samples: dict = {}
    startup = [sys.executable, "-c", "import mergekit.merge, peft, mergekit_safety.adapter"]
    for repeat in range(repeats):
        samples.setdefault("startup", []).append(measure(startup, env=env))
        for index, (key, bodies) in enumerate(cells):
            kinds = list(bodies)
            shift = (repeat + index) % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:  # rotate the order
                sample = run(kind, bodies[kind], workdir, env)
                samples.setdefault((key, kind), []).append(sample)
                print(f"{key} {kind}: {sample.wall:.2f} s, {sample.rss / 2**20:.0f} MiB",
                      file=sys.stderr, flush=True)  # fmt: skip
    print("| rank | method | adapter s | full s | stock s | adapter/full | adapter/stock | "
          "adapter RSS MiB | full RSS MiB | stock RSS MiB |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (rank, method), _bodies in cells:
        wall = {k: statistics.median(s.wall for s in samples[((rank, method), k)])
                for k in ("adapter", "full", "stock")}  # fmt: skip
        rss = {k: max(s.rss for s in samples[((rank, method), k)]) / 2**20
               for k in ("adapter", "full", "stock")}  # fmt: skip
        print(f"| {rank} | {method} | {wall['adapter']:.2f} | {wall['full']:.2f} | "
              f"{wall['stock']:.2f} | {wall['adapter'] / wall['full']:.2f}× | "
              f"{wall['adapter'] / wall['stock']:.2f}× | {rss['adapter']:.0f} | "
              f"{rss['full']:.0f} | {rss['stock']:.0f} |")  # fmt: skip
    reader = measure(read_all(paths, workdir), env=env)
    print(f"\nThe reader alone (mergekit's lazy loader reading every gated tensor of aligned and "
          f"unaligned, one at a time, as the gate does): {reader.wall:.2f} s, "
          f"{reader.rss / 2**20:.0f} MiB peak RSS.")  # fmt: skip
    start = statistics.median(s.wall for s in samples["startup"])
    print(f"\nStart-up (importing mergekit, peft and mergekit_safety, in every command): "
          f"{start:.2f} s.")  # fmt: skip
    print(
        f"bf16, hidden 1024, intermediate 2816, {layers} layers, vocab 8192; {threads} "
        f"thread(s); median of {repeats}; torch {torch.__version__}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
