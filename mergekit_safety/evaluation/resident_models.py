"""One base model kept in memory while the adapters of a sweep are evaluated on it.

An adapter sweep's points differ by a few MB of LoRA factors on one base of many GB; loading that
base once per point is most of what the sweep costs. :class:`ResidentBase` loads it once, loads each
point's adapter into the same peft model, makes it the active one and drops the one before. Greedy
generation sees exactly the model a fresh ``PeftModel.from_pretrained`` would build: peft runs only
the active adapter, and the base is evaluated with every adapter disabled.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mergekit_safety.evaluation.generation as generation
from mergekit_safety.evaluation.adapters import adapter_rank, parse_model


class ResidentNetwork:
    """A network already in memory (a search's resident merge): ``open(name)`` yields it, whatever
    the name, which only labels the records. Nothing loads and nothing is freed; the prompts are
    encoded once (:meth:`encode`), not once per trial: the tokenizer does not change."""

    def __init__(self, network: Any, tokenizer: Any) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self._encoded: tuple[tuple[Any, ...], list[list[int]]] | None = None

    @contextlib.contextmanager
    def open(self, model: str) -> Iterator[tuple[Any, Any]]:
        yield self.network, self.tokenizer

    def encode(self, conversations: Sequence[Any]) -> list[list[int]]:
        """The token ids :func:`~.generation.generate` would encode ``conversations`` to (the
        chat template where the tokenizer has one), kept for the next call with the same ones."""
        key = tuple(c if isinstance(c, str) else repr(c) for c in conversations)
        if self._encoded is None or self._encoded[0] != key:
            chat = generation.has_chat_template(self.tokenizer)
            if not chat and any(isinstance(c, str) for c in conversations):
                warnings.warn(
                    f"{getattr(self.tokenizer, 'name_or_path', 'the tokenizer')} has no chat "
                    "template; prompting with the raw text",
                    stacklevel=2,
                )
            self._encoded = (key, generation.encode(self.tokenizer, conversations, chat))
        return self._encoded[1]

    def close(self) -> None:
        self.network = self.tokenizer = None
        self._encoded = None


class ResidentBase:
    """``open(model)`` yields (network, tokenizer) for a model or ``base+adapter``; a model on the
    resident base reuses it. ``base_loads`` counts full loads, ``adapter_loads`` adapters."""

    def __init__(self, *, device: str = "cpu", dtype: str | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.base_loads = 0
        self.adapter_loads = 0
        self._base: str | None = None
        self._network: Any = None
        self._tokenizer: Any = None
        self._active: str | None = None

    @contextlib.contextmanager
    def open(self, model: str) -> Iterator[tuple[Any, Any]]:
        spec = parse_model(model)
        if self._base != _key(spec.base):
            self._load_base(spec.base)
        if spec.adapter is None:
            with self._without_adapters():
                yield self._network, self._tokenizer
            return
        self._activate(spec.adapter)
        yield self._network, self._tokenizer

    def close(self) -> None:
        """Free the base (a sweep calls this when its last point is evaluated)."""
        self._network = self._tokenizer = self._base = self._active = None
        generation.release()

    def _load_base(self, base: str) -> None:
        self.close()
        self._network, self._tokenizer = generation.load_model(
            base, device=self.device, dtype=self.dtype
        )
        self._base = _key(base)
        self.base_loads += 1

    def _activate(self, adapter: str) -> None:
        from peft import PeftModel

        name = f"point{self.adapter_loads}"
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            if isinstance(self._network, PeftModel):
                self._network.load_adapter(adapter, adapter_name=name)
            else:
                self._network = PeftModel.from_pretrained(self._network, adapter, adapter_name=name)
        self._network.set_adapter(name)
        if self._active is not None:  # the previous point's factors: never two in memory for long
            self._network.delete_adapter(self._active)
        self._active = name
        self.adapter_loads += 1
        self._network.to(generation.resolve_device(self.device)).eval()

    @contextlib.contextmanager
    def _without_adapters(self) -> Iterator[None]:
        if self._active is None:
            yield
        else:
            with self._network.disable_adapter():
                yield


def _key(base: str) -> str:
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


DEFAULT_LORA_RANK = 64
"""``max_lora_rank`` of an engine started before any adapter was seen."""


class ResidentVllm:
    """The vLLM counterpart of :class:`ResidentBase`: one engine on the base model, each
    point's adapter sent as a LoRA request (vLLM loads it beside the base and swaps it out),
    the base itself with none. ``generate(model, prompts)`` for a model or ``base+adapter``;
    a full model other than the base gets an engine of its own."""

    def __init__(self, *, dtype: str | None = None, lora: bool = True) -> None:
        self.dtype = dtype
        self.lora = lora
        """LoRA-enabled from the first engine on (a sweep's base point comes before adapters)."""
        self.base_loads = 0
        self.adapter_loads = 0
        self._base: str | None = None
        self._rank: int | None = None
        self._llm: Any = None

    def generate(
        self, model: str, prompts: list[str], *, max_new_tokens: int, progress: bool
    ) -> list[str]:
        spec = parse_model(model)
        rank = None
        if spec.adapter is not None:
            rank = generation.vllm_lora_rank(adapter_rank(spec.adapter))
        if self._base != _key(spec.base) or (rank or 0) > (self._rank or 0):
            self._start(spec.base, rank)
        request = None
        if spec.adapter is not None:
            from vllm.lora.request import LoRARequest

            self.adapter_loads += 1  # a new id per point: vLLM caches adapters by id
            request = LoRARequest(f"point{self.adapter_loads}", self.adapter_loads, spec.adapter)
        return generation.generate_vllm(
            self._llm, prompts, max_new_tokens=max_new_tokens, progress=progress,
            lora_request=request,
        )  # fmt: skip

    def close(self) -> None:
        self._llm = self._base = self._rank = None
        generation.release()

    def _start(self, base: str, rank: int | None) -> None:
        """An engine on ``base``, serving LoRA up to ``rank`` (64 when no adapter has been seen:
        a sweep's adapters share a rank, so one engine serves them all)."""
        self.close()
        if rank is None and self.lora:
            rank = DEFAULT_LORA_RANK
        self._llm = generation.vllm_engine(base, dtype=self.dtype, max_lora_rank=rank)
        self._base, self._rank = _key(base), rank
        self.base_loads += 1


class VllmWeights:
    """A vLLM worker extension (``worker_extension_cls``): the method a search calls on each
    worker (``collective_rpc``) to load a trial's merged tensors into the running model."""

    def load_merged(self, weights: list[tuple[str, Any]]) -> int:
        """Load ``(name, tensor)`` pairs (Hugging Face names) with the model's own loader."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=weights)
        return len(weights)


class ResidentVllmMerge(ResidentVllm):
    """A search's vLLM engine: started once on the recipe's base model; each trial's merged
    tensors are loaded into it in place (:meth:`load`, no disk), its prefix cache dropped, and
    every prompt answered by the model as merged, whatever name it is asked for (a label).

    A vLLM without ``collective_rpc`` gets each trial written once to a RAM disk (/dev/shm)
    and an engine started on it instead."""

    def __init__(self, base: str, *, dtype: str | None = None) -> None:
        super().__init__(dtype=dtype, lora=False)
        self.base = base
        self.weight_loads = 0
        self._scratch: str | None = None
        self._llm = generation.vllm_engine(
            base, dtype=dtype, worker_extension=f"{__name__}.VllmWeights"
        )
        self.base_loads = 1

    def load(self, merged: dict[str, Any], save: Any = None) -> None:
        """Hand the trial's merged tensors to the engine. ``save(path)`` writes the merged
        model (the fallback without ``collective_rpc``)."""
        if callable(getattr(self._llm, "collective_rpc", None)):
            weights = [(name, tensor.detach().contiguous()) for name, tensor in merged.items()]
            self._llm.collective_rpc("load_merged", args=(weights,))
            reset = getattr(self._llm, "reset_prefix_cache", None)
            if callable(reset):  # cached keys and values were computed with the old weights
                reset()
        else:
            import tempfile

            if save is None:
                raise RuntimeError("this vLLM cannot load weights in place; no way to save")
            root = "/dev/shm" if Path("/dev/shm").is_dir() else None
            self._drop_scratch()
            self._scratch = tempfile.mkdtemp(prefix="mergekit-safety-trial-", dir=root)
            save(self._scratch)
            self._llm = None
            generation.release()
            self._llm = generation.vllm_engine(self._scratch, dtype=self.dtype)
            self.base_loads += 1
        self.weight_loads += 1

    def generate(
        self, model: str, prompts: list[str], *, max_new_tokens: int, progress: bool
    ) -> list[str]:
        return generation.generate_vllm(
            self._llm, prompts, max_new_tokens=max_new_tokens, progress=progress
        )

    def close(self) -> None:
        self._drop_scratch()
        super().close()

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
