"""The three prompt sets an evaluation runs: harmful, benign look-alikes, and a task with answers.

Each set comes from (first match wins): its own option (a file, the name of a third-party set read
from an installed package such as ``harmbench`` or ``rho-overrefusal``: :mod:`.named_sets`, or a
Hub dataset id), else
``prompts_dir/<set>.jsonl`` (or ``.txt``/``.csv``/``.json``), else the built-in set in ``data/``,
written for this project: 41 harmful requests in nine harm categories, 39 benign prompts that use
the same alarming words (XSTest-style homonyms, figurative speech, safe targets and contexts,
definitions, history, safety advice), and 40 arithmetic questions with answers.

File formats: ``.txt`` one prompt per line (blank lines skipped; not for the task set, which needs
answers); ``.jsonl`` one object per line with a ``prompt`` field (``answer`` for the task set);
``.csv`` with ``prompt`` (and ``answer``) columns; ``.json`` a list of such objects or of strings.
``column`` names the prompt field of a given file or dataset (default: the first of
:data:`PROMPT_COLUMNS` present); the task answer is the first of :data:`ANSWER_COLUMNS` present.
A Hub dataset is ``owner/name`` or ``owner/name:config``, loaded with ``datasets`` (network or the
local cache) from ``split``. The harmful set may pool several, named with commas
(``advbench.jsonl,harmbench``): each keeps its first ``limit`` prompts, and the evaluation reports
each set's rates beside the pooled ones (a sweep's ``--max-engaged`` then limits every set).
Everything is read, and every bad path reported, before a model loads.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mergekit_safety.core.errors import ConfigError
from mergekit_safety.evaluation.named_sets import did_you_mean, is_named, load_named

SETS = ("harmful", "benign", "task")
SUFFIXES = (".jsonl", ".txt", ".csv", ".json")
PROMPT_COLUMNS = ("prompt", "question", "goal", "instruction", "text", "input")
"""Tried in order when no column is named (Hub datasets name their prompt column differently)."""
ANSWER_COLUMNS = ("answer", "target", "solution", "output")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


class PromptFileNotFound(ConfigError, FileNotFoundError):
    """A prompt file or directory that does not exist (also a FileNotFoundError for callers)."""


@dataclass(frozen=True)
class TaskItem:
    """A task prompt and its reference answer (a number, or a short text)."""

    prompt: str
    answer: str


@dataclass
class PromptSets:
    """The prompts of one evaluation; ``sources`` says where each set came from."""

    harmful: list[str] = field(default_factory=list)
    benign: list[str] = field(default_factory=list)
    task: list[TaskItem] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    limit: int | None = None

    attacks: dict[str, list[str]] = field(default_factory=dict)
    """Jailbreak-wrapped harmful prompts by attack name (:mod:`.attacks`): the first
    ``len(attacks[name])`` harmful prompts, each wrapped."""
    attack_sources: dict[str, str] = field(default_factory=dict)
    """Where each attack's template came from."""
    harmful_sets: dict[str, int] = field(default_factory=dict)
    """When ``harmful`` pools several sets (``--harmful a.jsonl,harmbench``): each set's label and
    how many of the pooled prompts, in order, are its; empty for one set."""

    def harmful_owners(self) -> list[str]:
        """Each harmful prompt's set (a :attr:`harmful_sets` label), in order; empty for one set."""
        return [name for name, size in self.harmful_sets.items() for _ in range(size)]

    def with_attacks(self, spec: str | list[str] | None, limit: int | None = None) -> PromptSets:
        """These sets with the attacks named in ``spec`` wrapping the first ``limit`` harmful
        prompts (all when None); ConfigError for an unknown attack or a missing package."""
        from mergekit_safety.evaluation.attacks import load_attacks, sources, wrap_all

        if limit is not None and limit < 1:
            raise ConfigError(f"attack limit must be at least 1; got {limit}")
        attacks = load_attacks(spec)
        self.attacks = wrap_all(attacks, self.harmful, limit)
        self.attack_sources = sources(attacks)
        return self

    def counts(self) -> dict[str, int]:
        return {"harmful": len(self.harmful), "benign": len(self.benign), "task": len(self.task)}


def load_prompt_sets(
    harmful: str | os.PathLike | None = None,
    benign: str | os.PathLike | None = None,
    task: str | os.PathLike | None = None,
    prompts_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    split: str = "train",
    column: str | None = None,
) -> PromptSets:
    """Read the three sets (None = ``prompts_dir``'s file, else built-in); keep the first ``limit``.

    Raises :class:`PromptFileNotFound` (a ConfigError and FileNotFoundError) for a missing path and
    :class:`~mergekit_safety.core.errors.ConfigError` for a malformed file.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1; got {limit}")
    directory = None if prompts_dir is None else Path(prompts_dir).expanduser()
    if directory is not None and not directory.is_dir():
        raise PromptFileNotFound(f"prompts directory not found: {prompts_dir}")
    given = {"harmful": harmful, "benign": benign, "task": task}
    out = PromptSets(limit=limit)
    for name in SETS:
        source = given[name]
        if source is None and directory is not None:
            source = _find_in_dir(directory, name)
        parts = harmful_sources(source) if name == "harmful" else [source]
        labels = []
        for part, short in zip(parts, set_labels(parts), strict=True):
            rows, label = _rows(name, part, split)
            wanted = None if part is None else column  # built-in files use "prompt"
            if name == "task":
                items: list[Any] = [TaskItem(p, a) for p, a in _task_items(rows, label, wanted)]
            else:
                items = list(_prompts(rows, label, wanted))
            if not items:
                raise ConfigError(f"{label}: no {name} prompts in it")
            getattr(out, name).extend(items[:limit])
            labels.append(label)
            if len(parts) > 1:
                out.harmful_sets[short] = len(items[:limit])
        out.sources[name] = ", ".join(labels)
    return out


def harmful_sources(source: str | os.PathLike | None) -> list[str | os.PathLike | None]:
    """``--harmful``'s sets: several when it names them with commas (``advbench.jsonl,harmbench``),
    unless the whole text is an existing path."""
    if not isinstance(source, str) or "," not in source or Path(source).expanduser().exists():
        return [source]
    parts = [part.strip() for part in source.split(",")]
    if not all(parts):
        raise ConfigError(f"--harmful {source!r}: an empty name between commas")
    if len(set(parts)) < len(parts):
        raise ConfigError(f"--harmful {source!r}: names a set twice")
    return list(parts)


def set_labels(parts: list[str | os.PathLike | None]) -> list[str]:
    """How reports name each pooled set: a path by its file name (``/data/adv.jsonl`` →
    ``adv.jsonl``), a named set as given; every path in full where two file names are alike."""
    short = [str(part) if part is None or not _is_path_like(part) else Path(part).name
             for part in parts]  # fmt: skip
    return short if len(set(short)) == len(short) else [str(part) for part in parts]


def _is_path_like(part: str | os.PathLike) -> bool:
    text = os.fspath(part)
    return "/" in text or os.sep in text


def _rows(name: str, source: str | os.PathLike | None, split: str) -> tuple[list[Any], str]:
    """One set's rows and its label: a built-in set, a named third-party set, a file or a Hub
    dataset."""
    if source is None:
        return list(_read_jsonl(_builtin(name), f"built-in {name}.jsonl")), "built-in"
    if is_named(source) and not Path(str(source)).exists():
        return load_named(str(source), name)
    return _read_source(str(source), split=split), str(source)


def _builtin(name: str) -> Path:
    return Path(str(resources.files("mergekit_safety.evaluation") / "data" / f"{name}.jsonl"))


def _find_in_dir(directory: Path, name: str) -> Path:
    for suffix in SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise PromptFileNotFound(
        f"{directory} has no {name}.jsonl (or {name}.txt/.csv/.json); add it or pass --{name}"
    )


def _read_source(source: str, *, split: str) -> list[Any]:
    """Rows of a local file (by suffix) or of a Hub dataset."""
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return list(_read_jsonl(path, str(path)))
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [line.strip() for line in lines if line.strip()]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix == ".json":
            return _read_json(path)
        raise ConfigError(f"{source}: unknown prompt file type; use .jsonl, .txt, .csv or .json")
    if path.exists():
        raise ConfigError(f"{source} is not a file")
    if (
        path.suffix.lower() in SUFFIXES
        or source.startswith((".", "/", "~"))
        or not _HUB_ID.match(source)
    ):
        bare = "/" not in source and not path.suffix  # a name: a named set misspelled?
        raise PromptFileNotFound(
            f"prompt file not found: {source}" + (did_you_mean(source) if bare else "")
        )
    return _read_hub(source, split)


def _read_jsonl(path: Path, label: str) -> Iterable[Any]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{label}:{number}: not valid JSON ({error.msg})") from None


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of prompts")
    return data


def _read_hub(dataset_id: str, split: str) -> list[Any]:
    """A Hub dataset's split as a list of rows; any failure becomes one ConfigError line."""
    name, _, config = dataset_id.partition(":")
    try:
        import datasets

        data = datasets.load_dataset(name, config or None, split=split)
    except Exception as error:  # noqa: BLE001 - offline, unknown id, bad split: all one message
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise PromptFileNotFound(
            f"{dataset_id}: not a local file, and loading it as a Hub dataset failed{offline}: "
            f"{type(error).__name__}: {first}"
        ) from None
    return list(data)


def _pick(row: Mapping[str, Any], wanted: str | None, names: tuple[str, ...], label: str) -> Any:
    if wanted is not None:
        if wanted not in row:
            raise ConfigError(f"{label}: no {wanted!r} field (fields: {', '.join(map(str, row))})")
        return row[wanted]
    for candidate in names:
        if candidate in row:
            return row[candidate]
    raise ConfigError(
        f"{label}: no {names[0]!r} field (fields: {', '.join(map(str, row))}); "
        "name the field with --column"
    )


def _prompt_of(row: Any, where: str, column: str | None) -> str:
    if isinstance(row, str):
        prompt = row
    elif isinstance(row, Mapping):
        prompt = _pick(row, column, PROMPT_COLUMNS, where)
    else:
        raise ConfigError(f"{where}: expected an object or a string")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: the prompt is empty or not text")
    return prompt.strip()


def _prompts(rows: Iterable[Any], label: str, column: str | None) -> Iterable[str]:
    for number, row in enumerate(rows, 1):
        yield _prompt_of(row, f"{label} (row {number})", column)


def _task_items(rows: Iterable[Any], label: str, column: str | None) -> Iterable[tuple[str, str]]:
    for number, row in enumerate(rows, 1):
        where = f"{label} (row {number})"
        if not isinstance(row, Mapping):
            raise ConfigError(
                f"{where}: task prompts need answers; use .jsonl/.json objects or a .csv with "
                "prompt and answer"
            )
        prompt = _prompt_of(row, where, column)
        answer = _pick(row, None, ANSWER_COLUMNS, where)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise ConfigError(f"{where}: the answer is empty")
        if isinstance(answer, float) and answer.is_integer():
            answer = int(answer)
        yield prompt, str(answer).strip()


RESPONSE_COLUMNS = ("response", "output", "completion")
"""The assistant's answer in a calibration row (Safe Delta's safety data: prompt + safe reply)."""


def calibration_conversations(source: str, *, column: str | None = None) -> list[Any]:
    """Conversations for ``calibrate``: the user's prompt, and the reply when a row gives one.

    A row with a reply becomes a two-turn conversation (scored whole, as Safe Delta's reference
    scores ``[INST] prompt [/INST] reply``); a prompt alone becomes one user turn.
    """
    path = Path(source).expanduser()
    if not path.exists() and not _HUB_ID.match(source):
        raise PromptFileNotFound(f"prompt file not found: {source}")
    rows = _read_source(source, split="train")
    conversations: list[Any] = []
    for number, row in enumerate(rows, 1):
        where = f"{source} (row {number})"
        prompt = _prompt_of(row, where, column)
        reply = None
        if isinstance(row, Mapping):
            reply = next((row[c] for c in RESPONSE_COLUMNS if row.get(c)), None)
        if reply is None:
            conversations.append(prompt)
        else:
            conversations.append(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(reply)}]
            )
    if not conversations:
        raise ConfigError(f"{source}: no prompts in it")
    return conversations
