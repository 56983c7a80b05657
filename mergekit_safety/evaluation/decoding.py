"""Our own greedy decoding loop over the model's forward and its KV cache (the CPU fast path).

It gives the token ids ``model.generate`` gives greedily (``tests/test_decoding.py`` checks them
token for token) for less work:

- the prompts of a call are sorted by length and left-padded per batch (as ``generate_ids``);
- the **chat prefix** all prompts share (a system prompt, the template's opening markup) is run
  through the model once per call; each batch starts from a copy of its keys and values and
  runs only the rest of its prompts;
- a row leaves the batch, and its keys and values the cache, as soon as it is done: at its
  end-of-sequence token, or when ``settled(index, ids)`` says no further token can change what
  is read from it (a judge's verdict); the remaining rows then run in a smaller batch.

The cache holds ``[shared prefix | pads | rest of the prompt | new tokens]`` per row; masked pad
keys add nothing to attention and positions count real tokens only, as in ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Settled = Callable[[int, list[int]], bool]
"""``settled(index, new_ids)``: True when prompt ``index`` needs no more tokens."""
Stop = Callable[[Sequence[int], list[list[int]]], bool]
"""``stop(indices, rows)`` after each batch (its prompts' indices and new ids): True stops the
call there; the prompts not decoded yet get no ids."""


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares, keeping at least one token of each row."""
    if not rows:
        return 0
    limit = min(len(row) for row in rows) - 1
    first = rows[0]
    length = 0
    while length < limit and all(row[length] == first[length] for row in rows):
        length += 1
    return length


def _forward(model: Any, **inputs: Any) -> Any:
    return model(**inputs, use_cache=True, return_dict=True)


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config)
    except TypeError:  # an older signature
        return DynamicCache()


def _cache_layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _prefix_cache(model: Any, prefix: Sequence[int], device: torch.device) -> list[tuple]:
    """Keys and values of the shared prefix, batch 1, per layer."""
    cache = _new_cache(model)
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    _forward(
        model,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.arange(len(prefix), device=device)[None],
        cache=cache,
        logits_to_keep=1,
    )
    return [(layer.keys, layer.values) for layer in _cache_layers(cache)]


def _expanded(model: Any, prefix_kv: list[tuple], batch: int) -> Any:
    """A cache that starts with the prefix's keys and values in every one of ``batch`` rows."""
    cache = _new_cache(model)
    for index, (keys, values) in enumerate(prefix_kv):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
    return cache


def decode_batch(
    model: Any,
    rows: Sequence[Sequence[int]],
    indices: Sequence[int],
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    eos: Sequence[int],
    pad_id: int,
    prefix_kv: list[tuple] | None = None,
    prefix_length: int = 0,
    settled: Settled | None = None,
) -> list[list[int]]:
    """Greedy new ids for one batch of prompts (each without the shared prefix), cut before the
    first end-of-sequence token; ``indices`` are the prompts' indices, for ``settled``."""
    device = next(model.parameters()).device
    count = len(rows)
    width = max(len(row) for row in rows)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    mask = torch.zeros((count, prefix_length + width), dtype=torch.long)
    mask[:, :prefix_length] = 1
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, prefix_length + width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, prefix_length:]
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    cache = _expanded(model, prefix_kv, count) if prefix_kv else _new_cache(model)
    eos_ids = torch.tensor(list(eos), dtype=torch.long, device=device) if eos else None

    out: list[list[int]] = [[] for _ in rows]
    alive = list(range(count))  # batch row -> position in ``rows``
    next_position = positions[:, -1] + 1
    step_input = ids
    step_positions = positions
    for step in range(max_new_tokens):
        logits = _forward(
            model,
            input_ids=step_input,
            attention_mask=mask,
            position_ids=step_positions,
            cache=cache,
            logits_to_keep=1,
        ).logits[:, -1, :]
        logits = logits.to(dtype=torch.float32)
        if eos_ids is not None and step < min_new_tokens:
            logits[:, eos_ids] = -float("inf")
        chosen = logits.argmax(dim=-1)
        tokens = chosen.tolist()
        keep: list[int] = []
        for batch_row, token in enumerate(tokens):
            row = alive[batch_row]
            if eos and token in eos:
                continue
            out[row].append(token)
            if settled is not None and settled(indices[row], out[row]):
                continue
            keep.append(batch_row)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(alive):
            select = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(select)
            mask, chosen, next_position = mask[select], chosen[select], next_position[select]
            alive = [alive[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        step_input = chosen[:, None]
        step_positions = next_position[:, None]
        next_position = next_position + 1
    return out


def decode(
    model: Any,
    encoded: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    min_new_tokens: int | None = None,
    eos: Sequence[int] = (),
    pad_id: int = 0,
    settled: Settled | None = None,
    share_prefix: bool = True,
    on_batch: Callable[[int], None] | None = None,
    groups: Sequence[int] | None = None,
    stop: Stop | None = None,
) -> list[list[int]]:
    """Greedy new token ids per encoded prompt, in input order (see the module docstring).

    ``on_batch(n)`` is called after each batch of ``n`` prompts (a progress bar). ``groups``:
    one number per prompt; prompts are decoded group by group (the smaller first), longest
    first within a group, and a batch holds one group's prompts. ``stop``: see :data:`Stop`;
    the batches up to it are the batches of a call without it, so their ids are the same.
    """
    if not encoded:
        return []
    device = next(model.parameters()).device
    prefix = shared_prefix(encoded) if share_prefix and len(encoded) > 1 else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    if groups is not None:
        order.sort(key=lambda i: groups[i])  # stable: longest first within a group
    batches: list[list[int]] = []
    for index in order:
        full = bool(batches) and len(batches[-1]) == batch_size
        if not batches or full or (groups is not None and groups[index] != groups[batches[-1][0]]):
            batches.append([])
        batches[-1].append(index)
    results: list[list[int]] = [[] for _ in encoded]
    with torch.inference_mode():
        prefix_kv = _prefix_cache(model, encoded[0][:prefix], device) if prefix else None
        for batch in batches:
            rows = decode_batch(
                model,
                [encoded[i][prefix:] for i in batch],
                batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or 0,
                eos=eos,
                pad_id=pad_id,
                prefix_kv=prefix_kv,
                prefix_length=prefix,
                settled=settled,
            )
            for index, row in zip(batch, rows, strict=True):
                results[index] = row
            if on_batch is not None:
                on_batch(len(batch))
            if stop is not None and stop(batch, rows):
                break
    return results
