"""Read a peft LoRA adapter as per-module factors, refusing anything that is not a plain LoRA.

Only a plain LoRA (``W + s·B A`` on ``nn.Linear`` weights) has an exact safety merge in adapter
space. Every other variant — DoRA, ``modules_to_save``, trained tokens or biases, transposed
(``fan_in_fan_out``) weights, activated or pooled LoRAs — is refused here, with one line saying
why, before any full tensor is read: the merge is never approximated silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_safety.errors import ConfigError

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
        alpha = alphas.get(get_pattern_key(list(alphas), module), config.lora_alpha)  # as peft
        scale = alpha / (math.sqrt(rank) if getattr(config, "use_rslora", False) else rank)
        modules[module] = ModuleFactors(b=b, a=a, scale=scale)
    return modules


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
