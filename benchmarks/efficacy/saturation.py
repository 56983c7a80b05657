"""How much of each matrix Safe Delta takes at each budget of a study's grid, without merging.

Safe Delta's selection (``methods.safe_delta.selection_mask``) is decided per block before the
compensation, from A's weights, the fine-tune's and A's statistics, so it can be counted alone:
per budget, the mean share of entries taken and how many matrices take every entry the method
allows (all but the 15 % most safety-sensitive). Where every matrix takes all it may, a larger
budget gives the same model.

    python -m benchmarks.efficacy.saturation --config benchmarks/efficacy/smollm2.yml \
        --finetune benign-s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.efficacy.plan import calibration_dir, load_config
from mergekit_safety.core.calibration import read
from mergekit_safety.methods.safe_delta import BLOCK, EXCLUDED, inverse_factor, selection_mask


def weights(model_dir: str) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        found.update(load_file(path))
    return found


def saturation(aligned: str, finetuned: str, calibration: Path, budgets: list[float]) -> dict:
    """Per budget: the mean share of entries taken, and the matrices taking all they may."""
    a, f, stats = weights(aligned), weights(finetuned), read(calibration)
    shares: dict[float, list[float]] = {b: [] for b in budgets}
    full = dict.fromkeys(budgets, 0)
    for name in sorted(a):
        hessian = stats.hessian(name)
        if hessian is None:
            continue
        wa, wf = a[name].float(), f[name].float()
        rows, columns = wa.shape
        if columns > BLOCK:
            raise ValueError(f"{name}: {columns} columns; this count assumes one block")
        d = torch.diag(inverse_factor(hessian)).reshape(1, -1)
        allowed = rows * columns - int(EXCLUDED * rows * columns)
        for budget in budgets:
            taken = int(selection_mask(wa, wf, d, budget, rows).sum())
            shares[budget].append(taken / (rows * columns))
            full[budget] += taken == allowed
    count = len(shares[budgets[0]])
    return {
        "matrices": count,
        "budgets": {
            f"{b:g}": {"mean_share_taken": sum(shares[b]) / count, "matrices_taking_all": full[b]}
            for b in budgets
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--finetune", default="benign-s0")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    budgets = [float(b) for b in config.methods["safe_delta"].sweep["budget"]]
    found = saturation(config.model("A"), config.model(args.finetune), calibration_dir(config),
                       budgets)  # fmt: skip
    found["finetune"] = args.finetune
    out = config.results / "safe_delta_saturation.json"
    out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
