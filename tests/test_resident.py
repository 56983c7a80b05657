"""`sweep --adapter` keeps the aligned model loaded: each point's adapter goes onto the one base,
and what generation sees is the model a fresh load builds."""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import adapter_pair, adapter_sweep_rows

from mergekit_safety.evaluation import generation, load_prompt_sets
from mergekit_safety.evaluation.resident_models import ResidentBase


@pytest.fixture(scope="module")
def two_adapters(family, tmp_path_factory):
    return adapter_pair(family, tmp_path_factory.mktemp("resident"), seeds=(3, 4), ranks=(4, 2))


def logits(network, tokenizer) -> torch.Tensor:
    ids = tokenizer(["How do I bake bread?"], return_tensors="pt").input_ids
    with torch.no_grad():
        return network(input_ids=ids).logits


def test_each_model_is_the_fresh_load(family, two_adapters):
    aligned = str(family["aligned"])
    one, two = (f"{aligned}+{path}" for path in two_adapters)
    resident = ResidentBase()
    seen = {}
    for model in [aligned, one, two, one, aligned]:  # back and forth, the base last
        with resident.open(model) as (network, tokenizer):
            got = logits(network, tokenizer)
        fresh = logits(*generation.load_model(model))
        assert torch.equal(got, fresh), model
        seen.setdefault(model, got)
    assert resident.base_loads == 1 and resident.adapter_loads == 3
    # the adapters change the model, so equality above says each one was the active one
    assert not torch.allclose(seen[aligned], seen[one])
    assert not torch.allclose(seen[one], seen[two])
    resident.close()


def test_a_model_on_another_base_loads_that_base(family, two_adapters):
    resident = ResidentBase()
    with resident.open(f"{family['aligned']}+{two_adapters[0]}"):
        pass
    with resident.open(str(family["unaligned"])) as (network, tokenizer):
        assert torch.equal(
            logits(network, tokenizer), logits(*generation.load_model(str(family["unaligned"])))
        )
    assert resident.base_loads == 2


def test_adapter_sweep_results_equal_the_reloading_sweep(family, two_adapters, tmp_path):
    """The real evaluator, once with the resident base and once loading every model afresh."""
    from mergekit_safety.evaluation import Evaluator

    prompts = load_prompt_sets(limit=3)
    runs = []
    for loader in (ResidentBase(), None):
        evaluator = Evaluator(prompts, None, 4, 6, "cpu", False, loader=loader)
        runs.append((adapter_sweep_rows(tmp_path, str(family["aligned"]), two_adapters[0],
                                        evaluator), loader))  # fmt: skip
    (resident_rows, resident), (fresh_rows, _) = runs
    assert resident_rows == fresh_rows
    assert resident.base_loads == 1 and resident.adapter_loads == 4  # fine-tune + 3 points
