"""`--backend vllm` with adapters: one engine on the base, each adapter a LoRA request.

vLLM needs a GPU, so these tests put a stand-in ``vllm`` package in ``sys.modules``: its ``LLM``
records how it was built and what each request asked for, and answers by running the same
model through transformers and peft. What they check is our side of the contract (one engine,
LoRA enabled at a rank vLLM accepts, the right adapter on every request, none for the base);
vLLM's own kernels are not exercised here.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from dataclasses import dataclass

import pytest
from adapter_helpers import adapter_pair, adapter_sweep_rows
from helpers import write_recipe

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.evaluation import evaluate, generation, harness, load_prompt_sets
from mergekit_safety.evaluation.adapters import adapter_rank
from mergekit_safety.evaluation.resident_models import ResidentBase, ResidentVllm


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 16


class FakeLLM:
    """vLLM's ``LLM`` as far as we use it: ``chat`` with an optional LoRA request."""

    built: list[dict] = []
    requests: list[LoRARequest | None] = []

    def __init__(self, model: str, **kwargs) -> None:
        FakeLLM.built.append({"model": model, **kwargs})
        self.model = model
        self.enable_lora = kwargs.get("enable_lora", False)

    def chat(self, conversations, params, use_tqdm=True, lora_request=None):
        FakeLLM.requests.append(lora_request)
        if lora_request is not None:
            assert self.enable_lora, "a LoRA request to an engine built without enable_lora"
        name = self.model if lora_request is None else f"{self.model}+{lora_request.lora_path}"
        network, tokenizer = generation.load_model(name)
        prompts = [conversation[0]["content"] for conversation in conversations]
        texts = generation.generate(
            network, tokenizer, prompts, max_new_tokens=params.max_tokens, progress=False
        )
        completion = types.SimpleNamespace
        return [completion(outputs=[completion(text=text)]) for text in texts]


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.built, FakeLLM.requests = [], []
    package = types.ModuleType("vllm")
    package.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    package.LLM, package.SamplingParams = FakeLLM, SamplingParams
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", package)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return FakeLLM


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory):
    return adapter_pair(family, tmp_path_factory.mktemp("vllm"), seeds=(5, 6), ranks=(4, 12))


def test_adapter_sweep_on_vllm_equals_the_peft_sweep(family, adapters, tmp_path, fake_vllm):
    from mergekit_safety.evaluation import Evaluator

    aligned = str(family["aligned"])
    prompts = load_prompt_sets(limit=3)
    rows = {}
    for backend, loader in (("vllm", ResidentVllm()), ("transformers", ResidentBase())):
        evaluator = Evaluator(prompts, None, 4, 6, "cpu", False, loader=loader, backend=backend)
        rows[backend] = adapter_sweep_rows(tmp_path, aligned, adapters[0], evaluator)
        loader.close()
    assert rows["vllm"] == rows["transformers"]
    # one engine for the base, the fine-tune and every point, LoRA on from the start
    assert fake_vllm.built == [{"model": aligned, "dtype": "auto", "enable_lora": True,
                                "max_lora_rank": 64}]  # fmt: skip
    adapters_seen = [r for r in fake_vllm.requests if r is not None]
    assert None in fake_vllm.requests  # the base ran without an adapter
    assert len(adapters_seen) == 4  # the fine-tune and three points
    assert len({r.lora_int_id for r in adapters_seen}) == 4  # each its own id: no stale cache
    assert adapters_seen[0].lora_path == str(adapters[0])


def test_eval_of_one_adapter_on_vllm(family, adapters, fake_vllm):
    model = f"{family['aligned']}+{adapters[1]}"
    prompts = load_prompt_sets(limit=2)
    got = evaluate(model, prompts, max_new_tokens=5, progress=False, backend="vllm")
    expected = evaluate(model, prompts, max_new_tokens=5, progress=False)
    assert got.summary() == expected.summary()
    assert fake_vllm.built[0]["enable_lora"] and fake_vllm.built[0]["max_lora_rank"] == 16
    assert [r.lora_path for r in fake_vllm.requests] == [str(adapters[1])]


def test_a_larger_adapter_restarts_the_engine_with_room(family, adapters, tmp_path, fake_vllm):
    answered = []

    def chat(self, conversations, params, use_tqdm=True, lora_request=None):
        answered.append(None if lora_request is None else lora_request.lora_path)
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="ok")])]

    fake_vllm.chat = chat  # only the engines matter here, not what they say
    config = json.loads((adapters[1] / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({**config, "rank_pattern": {"q_proj": 100}})  # peft's per-module ranks
    )
    assert adapter_rank(str(adapters[1])) == 12 and adapter_rank(str(tmp_path)) == 100
    engine = ResidentVllm()
    aligned = str(family["aligned"])
    on = [f"{aligned}+{path}" for path in (*adapters, tmp_path)]
    models = [aligned, on[0], on[1], aligned, on[2]]
    for model in models:
        assert engine.generate(model, ["Hi"], max_new_tokens=2, progress=False) == ["ok"]
    assert answered == [None, str(adapters[0]), str(adapters[1]), None, str(tmp_path)]
    assert [b["max_lora_rank"] for b in fake_vllm.built] == [64, 128]  # ranks 4, 12 fit in 64
    assert engine.base_loads == 2
    engine.close()


def test_vllm_lora_ranks():
    assert [generation.vllm_lora_rank(r) for r in (1, 8, 9, 64, 65, 300, 512)] == [
        8, 8, 16, 64, 128, 320, 512,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="LoRA ranks up to 512"):
        generation.vllm_lora_rank(513)


def test_lm_eval_on_vllm_sends_the_adapter_as_a_lora(family, adapters, monkeypatch):
    import lm_eval

    seen = {}

    def simple_evaluate(**kwargs):
        seen.update(kwargs)
        return {"results": {}, "versions": {}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    model = f"{family['aligned']}+{adapters[0]}"
    harness.run_tasks(model, ["t"], backend="vllm")
    assert seen["model"] == "vllm"
    assert seen["model_args"]["lora_local_path"] == str(adapters[0])
    assert seen["model_args"]["max_lora_rank"] == 8 and "peft" not in seen["model_args"]
    harness.run_tasks(model, ["t"])
    assert seen["model"] == "hf" and seen["model_args"]["peft"] == str(adapters[0])


def test_sweep_backend_vllm_without_vllm(family, tmp_path):
    from click.testing import CliRunner

    from mergekit_safety.cli import main

    if generation.vllm_available():
        pytest.skip("vllm is installed here")
    recipe = write_recipe(
        tmp_path / "r.yml",
        {"merge_method": "safe_linear", "base_model": str(family["aligned"]),
         "models": [{"model": str(family["finetuned"])}]},
    )  # fmt: skip
    result = CliRunner().invoke(
        main, ["sweep", str(recipe), "--set", "weight=0.5", "--backend", "vllm"]
    )
    assert result.exit_code == 2 and "vllm is not installed" in result.output


class FakeWeightsLLM(FakeLLM):
    """The stand-in with ``collective_rpc`` on a worker built from ``worker_extension_cls``
    (whose model's ``load_weights`` copies into a transformers network) and a prefix cache."""

    rpcs: list[str] = []
    resets = 0

    def __init__(self, model: str, **kwargs) -> None:
        import importlib

        super().__init__(model, **kwargs)
        self.network, self.tokenizer = generation.load_model(model)
        module, name = kwargs.get("worker_extension_cls", "builtins.object").rsplit(".", 1)
        self.worker = type("Worker", (getattr(importlib.import_module(module), name),), {})()
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load))
        self.worker.model_runner = runner

    def _load(self, weights):
        state = dict(weights)
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        assert not unexpected, unexpected

    def collective_rpc(self, method, args=()):
        FakeWeightsLLM.rpcs.append(method)
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self):
        FakeWeightsLLM.resets += 1

    def chat(self, conversations, params, use_tqdm=True, lora_request=None):
        prompts = [conversation[0]["content"] for conversation in conversations]
        texts = generation.generate(self.network, self.tokenizer, prompts,
                                    max_new_tokens=params.max_tokens, progress=False)  # fmt: skip
        completion = types.SimpleNamespace
        return [completion(outputs=[completion(text=text)]) for text in texts]


def test_search_on_vllm_loads_each_trial_in_place(tmp_path, fake_vllm, monkeypatch):
    pytest.importorskip("optuna")
    from helpers import REPO, cli_in_process

    monkeypatch.setattr(sys.modules["vllm"], "LLM", FakeWeightsLLM)
    FakeWeightsLLM.rpcs, FakeWeightsLLM.resets = [], 0
    monkeypatch.chdir(REPO)
    records = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / backend
        ran = cli_in_process(
            "search", "recipes/safe_linear_gated.yml", "--param", "weight=0:1", "--trials", "3",
            "--startup-trials", "2", "--min-refusal", "0.5", "--prompts", "recipes/demo/prompts",
            "--limit", "3", "--max-new-tokens", "6", "--out", out, "--quiet",
            "--backend", backend, cwd=REPO,
        )  # fmt: skip
        assert ran.returncode in (0, 3), ran.stderr[-3000:]
        records[backend] = json.loads((out / "search.json").read_text())
        for trial in records[backend]["trials"]:
            trial.pop("seconds")
    assert records["vllm"]["trials"] == records["transformers"]["trials"]
    # one engine for the trials (the references each get their own), weights loaded in place
    trial_engines = [b for b in FakeLLM.built if "worker_extension_cls" in b]
    assert len(trial_engines) == 1
    assert FakeWeightsLLM.rpcs == ["load_merged"] * 3 and FakeWeightsLLM.resets == 3


def test_search_backend_vllm_needs_vllm(tmp_path):
    from helpers import REPO, cli_in_process

    ran = cli_in_process("search", "recipes/safe_linear_gated.yml", "--param", "weight=0:1",
                         "--min-refusal", "0.5", "--out", tmp_path / "o", "--backend", "vllm",
                         cwd=REPO)  # fmt: skip
    if generation.vllm_available():
        pytest.skip("vllm is installed here")
    assert ran.returncode == 2 and "vllm is not installed" in ran.stderr
