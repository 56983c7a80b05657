"""The change proposed for the method kernels, applied as a patch so the benchmark can time it.

Proposal: score Δ with ``tolerance=rounding_tolerance(θ_aligned, input dtype, count)``, the
rounding the checkpoints already carry, so a merged-LoRA fine-tune stored in bf16 takes the
low-rank path. Here ``RoleInputs.from_group`` records that tolerance for the tensor being merged
and the kernels' ``score`` / ``score_and_project`` pass it on. Used only as
``python -m benchmarks.proposal mergekit-yaml ARGS...`` (or ``mergekit-safety``), never imported
by the package.
"""

from __future__ import annotations

import importlib
import sys

from mergekit_safety import subspace

base = importlib.import_module("mergekit_safety.methods.base")
safe_lora = importlib.import_module("mergekit_safety.methods.safe_lora")  # the module, not the
# method object that ``mergekit_safety.methods`` exports under the same name

_tolerance: list[float | None] = [None]


def install() -> None:
    """Patch the kernels in this process (the method modules are already registered)."""
    original = base.RoleInputs.from_group.__func__

    def from_group(cls, group, roles):
        inputs = original(cls, group, roles)
        count = max(1, len(inputs.finetuned))
        storage = group.base.tensor.dtype
        _tolerance[0] = subspace.rounding_tolerance(inputs.aligned, storage, count)
        return inputs

    base.RoleInputs.from_group = classmethod(from_group)
    base.score = lambda delta, v: subspace.score(delta, v, tolerance=_tolerance[0])
    safe_lora.score_and_project = lambda delta, v: subspace.score_and_project(
        delta, v, tolerance=_tolerance[0]
    )


def main() -> None:
    """Run a console script (``mergekit-yaml`` or ``mergekit-safety``) with the patch."""
    install()
    tool, sys.argv = sys.argv[1], sys.argv[1:]
    if tool == "mergekit-yaml":
        from mergekit.scripts.run_yaml import main as entry
    else:
        from mergekit_safety.cli import main as entry
    sys.exit(entry())


if __name__ == "__main__":
    main()
