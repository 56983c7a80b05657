"""Read a peft LoRA adapter as per-module factors, refusing anything that is not a plain LoRA.

Only a plain LoRA (``W + s·B A`` on ``nn.Linear`` weights) has an exact safety merge in adapter
space. Every other variant — DoRA, ``modules_to_save``, trained tokens or biases, transposed
(``fan_in_fan_out``) weights, activated or pooled LoRAs — is refused here, with one line saying
why, before any full tensor is read: the merge is never approximated silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_safety.core.errors import ConfigError

PREFIX = "base_model.model."
KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")
FULL_MODEL = "use mergekit-yaml for the full-model merge"
UNSUPPORTED = (
    # (config field, why it cannot be merged exactly as a plain LoRA)
    ("use_dora", "DoRA rescales each column by a learned magnitude"),
    ("fan_in_fan_out", "fan_in_fan_out (transposed Conv1D weights) is not handled"),
    ("modules_to_save", "modules_to_save holds full trained copies of modules"),
    ("trainable_token_indices", "it trains embedding rows (trainable_token_indices)"),
    ("layer_replication", "layer_replication changes the model's layers"),
    ("target_parameters", "target_parameters wraps raw parameters, not Linear modules"),
    ("alora_invocation_tokens", "an activated LoRA (aLoRA) applies only after its tokens"),
    ("use_qalora", "QA-LoRA pools its inputs"),
    ("lora_bias", "lora_bias trains a bias on lora_B"),
    ("velora_config", "VeLoRA changes the forward pass"),
    ("monteclora_config", "MonteCLoRA samples its factors"),
)


@dataclass(frozen=True)
class ModuleFactors:
    """One module's LoRA: ``Δ = scale · B A`` on the base weight ``{module}.weight``."""

    b: torch.Tensor
    a: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def scaled_left(self, coefficient: float = 1.0) -> torch.Tensor:
        """``coefficient · scale · B`` in the compute dtype (fp32, fp64 for fp64 factors)."""
        dtype = torch.float64 if self.b.dtype == torch.float64 else torch.float32
        return self.b.to(dtype) * (coefficient * self.scale)

    def right(self) -> torch.Tensor:
        dtype = torch.float64 if self.a.dtype == torch.float64 else torch.float32
        return self.a.to(dtype)


@dataclass(frozen=True)
class Adapter:
    """A plain LoRA adapter: where it lives, its config, and its factors by module name."""

    where: str
    config: Any
    modules: dict[str, ModuleFactors]


def read_adapter(path: str, revision: str | None = None) -> Adapter:
    """Load ``path`` (a local directory or a Hub id) with peft; ConfigError unless plain LoRA."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    try:
        config = PeftConfig.from_pretrained(path, revision=revision)
    except Exception as error:  # noqa: BLE001 - peft's many failure types, as one line
        raise ConfigError(f"{path}: not a readable peft adapter ({_first_line(error)})") from None
    check_config(path, config)
    try:
        kwargs = {"revision": revision} if revision else {}
        weights = load_peft_weights(path, device="cpu", **kwargs)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"{path}: adapter weights not readable ({_first_line(error)})") from None
    return Adapter(where=path, config=config, modules=factors_of(path, config, weights))


def check_config(path: str, config: Any) -> None:
    """Refuse every adapter that is not a plain LoRA, naming the reason."""
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind != "LORA":
        raise ConfigError(f"{path}: a {kind} adapter, not LoRA; {FULL_MODEL}")
    for field, why in UNSUPPORTED:
        if getattr(config, field, None):
            raise ConfigError(f"{path}: no exact adapter merge: {why}; {FULL_MODEL}")
    if getattr(config, "bias", "none") != "none":
        raise ConfigError(
            f"{path}: no exact adapter merge: it trains biases (bias={config.bias!r}); {FULL_MODEL}"
        )


def factors_of(
    path: str, config: Any, weights: dict[str, torch.Tensor]
) -> dict[str, ModuleFactors]:
    """Pair ``lora_A``/``lora_B`` per module and attach each module's scale (rank/alpha patterns,
    rsLoRA). Any other tensor (a DoRA magnitude, an embedding LoRA, a saved module) is refused."""
    from peft.utils.other import get_pattern_key

    sides: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = KEY.match(key)
        if match is None:
            raise ConfigError(
                f"{path}: no exact adapter merge: it holds {key}, which is not a plain LoRA "
                f"factor; {FULL_MODEL}"
            )
        sides.setdefault(match["module"], {})[match["side"]] = tensor
    alphas = dict(getattr(config, "alpha_pattern", None) or {})
    ranks = dict(getattr(config, "rank_pattern", None) or {})
    modules = {}
    for module, pair in sides.items():
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{path}: {module} has lora_A or lora_B but not both")
        a, b = pair["A"], pair["B"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ConfigError(
                f"{path}: {module} is not a Linear LoRA (A {tuple(a.shape)}, B {tuple(b.shape)}); "
                f"{FULL_MODEL}"
            )
        rank = a.shape[0]
        said = ranks.get(get_pattern_key(list(ranks), module), config.r)  # as peft reads r
        if rank != said:
            raise ConfigError(
                f"{path}: {module} has LoRA factors of rank {rank}, but adapter_config.json "
                f"says r = {said}: the config and the weights are of different adapters"
            )
        for side, factor in (("lora_A", a), ("lora_B", b)):
            if not bool(torch.isfinite(factor).all()):
                raise ConfigError(
                    f"{path}: {module}.{side} holds NaN or Inf values; nothing was merged "
                    "(check that adapter)"
                )
        alpha = alphas.get(get_pattern_key(list(alphas), module), config.lora_alpha)  # as peft
        scale = alpha / (math.sqrt(rank) if getattr(config, "use_rslora", False) else rank)
        modules[module] = ModuleFactors(b=b, a=a, scale=scale)
    return modules


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_fits(path: str, shapes: Mapping[str, tuple[int, ...]], model: Any) -> None:
    """A local LoRA adapter fits ``model`` (its tensors' ``shapes``, from the file headers):
    every ``lora_A``/``lora_B`` pair adapts a weight the model has, of that weight's shape, at the
    rank ``adapter_config.json`` gives, with finite values. Made before mergekit merges the
    adapter into the model (which reports a misfit in several lines, or not at all for a wrong
    ``r``); any other tensor (DoRA's magnitude, a saved module) is left to peft."""
    import json

    from safetensors import safe_open

    folder = Path(path).expanduser()
    weights, config_file = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not shapes or not weights.is_file() or not config_file.is_file():
        return  # a Hub id, .bin weights: peft reads them and says what is wrong
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            sides: dict[str, dict[str, torch.Tensor]] = {}
            for key in handle.keys():
                match = KEY.match(key)
                if match is not None:
                    sides.setdefault(match["module"], {})[match["side"]] = handle.get_tensor(key)
    except Exception as error:  # noqa: BLE001 - not JSON, a truncated file: one line
        raise ConfigError(f"{path}: not a readable peft adapter ({_first_line(error)})") from None
    ranks = dict(config.get("rank_pattern") or {})
    for module, pair in sides.items():
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{path}: {module} has lora_A or lora_B but not both")
        a, b = pair["A"], pair["B"]
        want = shapes.get(f"{module}.weight")
        if want is None:
            raise ConfigError(
                f"{path}: adapts {module}, which has no weight {module}.weight in {model}: the "
                "adapter was trained on another model"
            )
        if a.ndim != 2 or b.ndim != 2 or (b.shape[0], a.shape[1]) != tuple(want):
            got = f"{b.shape[0]}×{a.shape[1]}" if a.ndim == b.ndim == 2 else "another"
            raise ConfigError(
                f"{path}: {module} has LoRA factors for a {got} weight, but {model} has "
                f"{module}.weight of {'×'.join(map(str, want))}: the adapter was trained on "
                "another model"
            )
        said = ranks.get(_pattern_key(list(ranks), module), config.get("r"))
        if said is not None and a.shape[0] != said:
            raise ConfigError(
                f"{path}: {module} has LoRA factors of rank {a.shape[0]}, but "
                f"adapter_config.json says r = {said}: the config and the weights are of "
                "different adapters"
            )
        for side, factor in (("lora_A", a), ("lora_B", b)):
            if not bool(torch.isfinite(factor).all()):
                raise ConfigError(
                    f"{path}: {module}.{side} holds NaN or Inf values; nothing was merged "
                    "(check that adapter)"
                )


def _pattern_key(keys: list[str], module: str) -> str:
    from peft.utils.other import get_pattern_key

    return get_pattern_key(keys, module)
