"""Greedy generation with each model's chat template: batched, left-padded, one progress bar.

Batched greedy output equals one-prompt-at-a-time output (``tests/test_generation.py`` checks it
token for token in fp32) because:

- padding is on the **left**, so every row's last prompt token sits at the same column and new
  tokens are appended right after it;
- the **attention mask** goes to ``generate``, which masks the pad keys and derives position ids
  from it (positions count real tokens only), so a padded row sees exactly what it would alone;
- decoding is greedy (``do_sample=False``, one beam, a fresh generation config: no sampling
  defaults or repetition penalty from the checkpoint).

Prompts are sorted by length before batching (less padding) and answers returned in input order.
On CPU the decoding runs in our own loop (:mod:`~.decoding`) with the same ids, for less work: the
shared chat prefix once per call, finished rows out of the batch.
What remains is floating-point: a batch runs the same sums in matrices of another shape, which can
round differently. In fp32 that has not changed a greedy token in our tests with the default
(SDPA) attention, so it is kept; in bf16/fp16 on a GPU a near-tie can flip, as in any batched
inference.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.evaluation.decoding import Settled, Stop

Conversation = str | list[dict[str, str]]
"""A user prompt, or a whole chat (``[{"role": ..., "content": ...}, ...]``)."""

DECODERS = ("auto", "loop", "generate")
"""``generate_ids``'s decoders: our own loop (:mod:`~.decoding`) or transformers' ``generate``."""

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | None) -> str:
    """``auto`` → cuda when available, else cpu; a cuda device without CUDA is a ValueError."""
    device = (device or "cpu").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype | str:
    """None → float32 on CPU (half precision is slow there), the checkpoint's dtype elsewhere."""
    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    try:
        return DTYPES[dtype.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(DTYPES)})") from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bars: the evaluation has its own, one per model."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_model(model: str, *, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready for batched greedy generation: eval mode, left padding, a pad.

    A LoRA adapter (``base+adapter`` or an adapter directory) runs through peft on its base, in
    memory; its tokenizer is the adapter's own if it ships one, else the base model's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_safety.evaluation.adapters import parse_model

    spec = parse_model(model)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    with _quiet_transformers():
        network = AutoModelForCausalLM.from_pretrained(spec.base, dtype=torch_dtype)
        source = spec.base
        if spec.adapter is not None:
            import warnings

            from peft import PeftModel

            with warnings.catch_warnings():  # peft calls a deprecated transformers property
                warnings.simplefilter("ignore", FutureWarning)
                network = PeftModel.from_pretrained(network, spec.adapter)
            if (Path(spec.adapter).expanduser() / "tokenizer_config.json").is_file():
                source = spec.adapter
        tokenizer = AutoTokenizer.from_pretrained(source)
    network.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{model}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return network, tokenizer


def release(*objects: Any) -> None:
    """Free a model's memory before the next one loads (the caller drops its references)."""
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def render(tokenizer: Any, conversation: Conversation, chat: bool = True) -> str:
    """The text the model sees: its chat template with the generation prompt, or the raw prompt."""
    if not chat:
        if not isinstance(conversation, str):
            raise ValueError("a conversation needs a chat template")
        return conversation
    messages = (
        [{"role": "user", "content": conversation}]
        if isinstance(conversation, str)
        else conversation
    )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode(tokenizer: Any, conversations: Sequence[Conversation], chat: bool) -> list[list[int]]:
    """Token ids per conversation. A chat template writes its own BOS; a raw prompt gets one.

    Without the tokenizer's "Token indices sequence length is longer than the specified maximum"
    warning, repeated for every model: ``model_max_length`` is often a placeholder, and a prompt
    longer than the model's context fails in the model itself."""
    texts = [render(tokenizer, c, chat) for c in conversations]
    return tokenizer(list(texts), add_special_tokens=not chat, verbose=False)["input_ids"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), pads on the left."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]


def generate_ids(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    min_new_tokens: int | None = None,
    progress: bool = True,
    desc: str = "generating",
    chat: bool | None = None,
    decoder: str = "auto",
    settled: Settled | None = None,
    encoded: Sequence[Sequence[int]] | None = None,
    groups: Sequence[int] | None = None,
    stop: Stop | None = None,
) -> list[list[int]]:
    """Greedy new token ids per conversation (cut after the first end-of-sequence token).

    ``chat=None`` uses the chat template when the tokenizer has one, else the raw prompt (a
    warning says so: a chat model prompted without its template is not evaluated fairly).
    ``min_new_tokens`` is for benchmarks that want a fixed amount of work per prompt.

    ``decoder``: ``"loop"`` is our own decoding loop (:mod:`~.decoding`: the shared chat prefix
    run once, finished rows leave the batch; the same ids), ``"generate"`` transformers'
    ``generate``; ``"auto"`` takes the loop on CPU. ``settled(index, ids)`` (loop only) stops a
    prompt early when more tokens cannot change what is read from it. ``encoded``: the prompts'
    token ids when the caller has them already (a search encodes its prompts once).
    ``groups`` and ``stop`` (loop only): decode group by group, and stop after a batch
    (:func:`~.decoding.decode`).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r} (use {', '.join(DECODERS)})")
    if chat is None and encoded is None:
        chat = has_chat_template(tokenizer)
        if not chat and any(isinstance(c, str) for c in conversations):
            import warnings

            warnings.warn(
                f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')} has no chat template; "
                "prompting with the raw text",
                stacklevel=2,
            )
    if not conversations:
        return []
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
        bos_token_id=model.generation_config.bos_token_id,
    )
    if encoded is None:
        encoded = encode(tokenizer, conversations, bool(chat))
    elif len(encoded) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(encoded)} encoded")
    _check_vocabulary(model, encoded)
    device = next(model.parameters()).device
    if decoder == "auto":
        decoder = "loop" if device.type == "cpu" else "generate"
    if decoder == "loop" or settled is not None or groups is not None or stop is not None:
        from mergekit_safety.evaluation.decoding import decode

        with tqdm(total=len(encoded), desc=desc, unit="prompt", disable=not progress) as bar:
            return decode(
                model,
                encoded,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                eos=eos,
                pad_id=pad_id,
                settled=settled,
                on_batch=bar.update,
                groups=groups,
                stop=stop,
            )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[int]] = [[] for _ in encoded]
    with (
        torch.inference_mode(),
        tqdm(total=len(encoded), desc=desc, unit="prompt", disable=not progress) as bar,
    ):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask = left_pad([encoded[i] for i in batch], pad_id)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
            )
            new = out[:, ids.shape[1] :].tolist()
            for index, row in zip(batch, new, strict=True):
                results[index] = _cut_at_eos(row, eos)
            bar.update(len(batch))
    return results


def generate(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    progress: bool = True,
    desc: str = "generating",
    chat: bool | None = None,
    decoder: str = "auto",
    settled: Callable[[int, str], bool] | None = None,
    encoded: Sequence[Sequence[int]] | None = None,
    groups: Sequence[int] | None = None,
    stop: Callable[[Sequence[int], list[str]], bool] | None = None,
) -> list[str]:
    """Greedy responses, decoded without special tokens and stripped, in input order.

    ``settled(index, text)``: True when prompt ``index``'s reply so far (decoded as returned)
    needs no more tokens; ``stop(indices, texts)``: after each batch, its replies as returned;
    True stops there (the prompts not reached get ""). ``decoder``, ``encoded`` and ``groups``
    as in :func:`generate_ids`.
    """

    def text(row: Sequence[int]) -> str:
        return tokenizer.decode(row, skip_special_tokens=True).strip()

    rows = generate_ids(
        model,
        tokenizer,
        conversations,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        desc=desc,
        chat=chat,
        decoder=decoder,
        settled=None if settled is None else (lambda index, ids: settled(index, text(ids))),
        encoded=encoded,
        groups=groups,
        stop=None if stop is None else (lambda indices, ids: stop(indices, list(map(text, ids)))),
    )
    return [text(row) for row in rows]


def _check_vocabulary(model: Any, encoded: Sequence[Sequence[int]]) -> None:
    """A clear error, not an IndexError deep in the embedding, when tokenizer and model disagree."""
    size = model.get_input_embeddings().num_embeddings
    largest = max((max(row) for row in encoded if row), default=-1)
    if largest >= size:
        name = getattr(model, "name_or_path", "") or "the model"
        raise ConfigError(
            f"{name}: the tokenizer produced token id {largest}, but the model has only {size} "
            "embeddings: tokenizer and model do not match"
        )


def _cut_at_eos(row: list[int], eos: Sequence[int]) -> list[int]:
    for position, token in enumerate(row):
        if token in eos:
            return row[:position]
    return row


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts; an engine takes the smallest that fits."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts for an adapter of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; an adapter has {rank}")


def vllm_engine(
    model: str,
    *,
    dtype: str | None = None,
    max_lora_rank: int | None = None,
    worker_extension: str | None = None,
) -> Any:
    """A vLLM ``LLM`` for ``model``; with ``max_lora_rank``, one that serves LoRA requests;
    with ``worker_extension`` (a class path), its methods callable on the workers
    (``collective_rpc``)."""
    if not vllm_available():
        raise ImportError("the vllm backend needs `pip install vllm`")
    from vllm import LLM

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extra: dict[str, Any] = {}
    if max_lora_rank is not None:
        extra = {"enable_lora": True, "max_lora_rank": max_lora_rank}
    if worker_extension is not None:
        extra["worker_extension_cls"] = worker_extension
    return LLM(model=model, dtype=dtype or "auto", **extra)


def generate_vllm(
    llm: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    progress: bool = True,
    lora_request: Any = None,
) -> list[str]:
    """Greedy responses through vLLM's chat API (the model's chat template), in input order.

    ``lora_request``: a vLLM ``LoRARequest``, so every prompt runs with that adapter.
    """
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    outputs = llm.chat(conversations, params, use_tqdm=progress, lora_request=lora_request)
    return [output.outputs[0].text.strip() for output in outputs]
