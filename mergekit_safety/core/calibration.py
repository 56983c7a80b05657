"""Calibration statistics on disk: what ``mergekit-safety calibrate`` writes, ``safe_delta`` reads.

A calibration directory holds, per linear layer of the model it was run on, the sum of its
inputs' outer products ``XᵀX = Σ_tokens x xᵀ`` (``in × in``, float32) in
``<module>.safetensors`` (tensor ``xtx``), and ``calibration.json``: the model, the prompts'
sha256, how many sequences and tokens went in, and every module with its input width. A merge
reads one module's file when it merges that module's weight, so nothing else is in memory.

Safe Delta's Hessian is the reference code's ``H = (2 / N) XᵀX`` with N the number of sequences
(ColinLu50/SafeDelta ``llama2/safedelta/safedelta_runner.py`` lines 57–68); its result does not
depend on that scale (the damping is relative to ``mean(diag H)``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_safety.core.errors import ConfigError

METADATA = "calibration.json"
TENSOR = "xtx"
FORMAT = 1
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
"""safetensors' names of the dtypes a statistics file may hold (``calibrate`` writes F32)."""
IN_BLOCK = re.compile(r"\.\d+\.")
"""A weight inside a numbered block (a decoder layer): the reference calibrates exactly those."""


def module_of(tensor_name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` → ``model.layers.0.mlp.up_proj``."""
    return tensor_name.removesuffix(".weight")


def file_of(directory: Path, module: str) -> Path:
    return Path(directory) / f"{module}.safetensors"


@dataclass(frozen=True)
class Calibration:
    """A calibration directory's metadata (``calibration.json``)."""

    directory: Path
    modules: Mapping[str, int]
    """Module name → its input width."""
    sequences: int
    tokens: int
    info: Mapping[str, Any]

    def hessian(self, tensor_name: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """``H = 2 XᵀX / N`` of the module owning ``tensor_name`` (fp64), or None if uncalibrated.

        Read lazily: one file, one tensor.
        """
        module = module_of(tensor_name)
        if module not in self.modules:
            return None
        from safetensors import safe_open

        path = file_of(self.directory, module)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                xtx = handle.get_tensor(TENSOR)
        except Exception as error:  # noqa: BLE001 - a missing or corrupt file: one line
            raise ConfigError(f"{path}: unreadable calibration statistics ({error})") from None
        return xtx.to(device=device, dtype=torch.float64).mul_(2.0 / self.sequences)


def read(directory: str | Path) -> Calibration:
    """The calibration in ``directory``, or one line saying why it is not one."""
    path = Path(str(directory)).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"calibration {directory}: no such directory (make one with `mergekit-safety "
            "calibrate ALIGNED --prompts FILE --out DIR`)"
        )
    meta = path / METADATA
    if not meta.is_file():
        raise ConfigError(
            f"calibration {directory}: no {METADATA}: not a `mergekit-safety calibrate` output"
        )
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        modules = {str(k): int(v) for k, v in info["modules"].items()}
        sequences, tokens = int(info["sequences"]), int(info["tokens"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{meta}: not a valid calibration record ({error})") from None
    if sequences < 1 or not modules:
        raise ConfigError(f"{meta}: records no sequences or no modules")
    return Calibration(path, modules, sequences, tokens, info)


def check_against(calibration: Calibration, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The statistics fit the model: each module's weight exists with that input width, each
    file is there, and every matrix inside a numbered block has statistics."""
    where = calibration.directory
    for module, width in calibration.modules.items():
        shape = shapes.get(f"{module}.weight")
        if shape is None:
            raise ConfigError(
                f"calibration {where} holds statistics for {module}, which base_model has no "
                "weight for: calibrated on another model?"
            )
        if len(shape) != 2 or shape[1] != width:
            raise ConfigError(
                f"calibration {where}: {module}.weight is {'×'.join(map(str, shape))} in "
                f"base_model, but its statistics are for inputs of width {width}: calibrated "
                "on another model?"
            )
        if not file_of(where, module).is_file():
            raise ConfigError(f"calibration {where}: {module}.safetensors is missing")
    for name, shape in shapes.items():
        if len(shape) == 2 and IN_BLOCK.search(name) and module_of(name) not in calibration.modules:
            raise ConfigError(
                f"calibration {where} has no statistics for {name}: calibrate the aligned model "
                "(base_model) itself"
            )


def check_files(calibration: Calibration) -> None:
    """Every statistics file as ``calibration.json`` describes it: readable (not truncated), one
    ``xtx`` tensor of ``width × width`` in a floating dtype, finite.

    Made while mergekit plans, before any tensor merges (as mergekit's inputs are checked): the
    header first, then the values, one file in memory at a time.
    """
    from safetensors import safe_open

    for module, width in calibration.modules.items():
        path = file_of(calibration.directory, module)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                names = list(handle.keys())
                if names != [TENSOR]:
                    raise ConfigError(
                        f"{path}: holds {', '.join(names) or 'no tensor'}, not one `{TENSOR}` "
                        "tensor: not a `mergekit-safety calibrate` file"
                    )
                header = handle.get_slice(TENSOR)
                shape, dtype = tuple(header.get_shape()), str(header.get_dtype())
                if shape != (width, width):
                    raise ConfigError(
                        f"{path}: statistics of {'×'.join(map(str, shape))}, but "
                        f"{METADATA} says inputs of width {width} ({width}×{width}): the file "
                        "and the record are of different models"
                    )
                if dtype not in FLOAT_DTYPES:
                    raise ConfigError(f"{path}: statistics of dtype {dtype}, not a float")
                values = handle.get_tensor(TENSOR)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - safetensors' errors: truncated, not a file
            raise ConfigError(
                f"{path}: unreadable calibration statistics, truncated or corrupt ({error})"
            ) from None
        if not bool(torch.isfinite(values).all()):
            raise ConfigError(
                f"{path}: the statistics hold NaN or Inf values (was the calibrated model "
                "broken?); nothing was merged"
            )
