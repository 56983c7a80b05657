"""Every code block of the README and of ``docs/*.md`` runs as printed, from the repository root.

The blocks run in :data:`DOCS` order in one workspace holding a copy of ``recipes/``: later blocks
read what earlier ones wrote, as a reader following along would (``docs/commands.md`` evaluates
the ``out/safe_linear`` that the README's first command merged). A block is left out only where the
line right above it says so, in the markdown itself:

- ``<!-- not run: REASON -->``: the block does not run (it needs a GPU or Hub models, trains,
  installs packages, uploads). Its ``mergekit-safety`` commands are still parsed by the CLI, so an
  option renamed or removed fails here too;
- ``<!-- run without set-up: REASON -->``: the block runs without its environment set-up
  segments (``python3 -m venv``, activating it, ``pip install``) and without ``pytest``.

A bash block without a mark that installs, runs the suite or talks to the Hub fails this test:
mark it. YAML blocks: a whole recipe is validated as mergekit's ``MergeConfiguration`` (Hub ids
included: validation reads nothing); a fragment must parse as YAML. JSON blocks: each line is JSON.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

DOCS = (
    "README.md",
    "docs/recipes.md",
    "docs/methods.md",
    "docs/commands.md",
    "docs/demo.md",
    "docs/study.md",
    "docs/judge.md",
    "docs/judge_labelling.md",
    "docs/faithfulness.md",
    "docs/troubleshooting.md",
    "docs/speed.md",
    "docs/internals.md",
)
"""The order the blocks run in: the README first, then the pages that build on its outputs."""

FIRST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install . "
    "&& mergekit-yaml recipes/safe_linear.yml out/safe_linear && mergekit-safety eval "
    "recipes/demo/aligned recipes/demo/finetuned out/safe_linear --prompts recipes/demo/prompts"
)
"""The newcomer's first command: install, merge the demo, evaluate it. Keep it as it is."""

FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!-- (not run|run without set-up): (\S[^\n]*?) -->\n\Z")
SETUP = re.compile(r"^(python3 -m venv|\. \.venv/bin/activate|pip install)\b")


def blocks(doc: str) -> list[tuple[str, str, str | None, str]]:
    """(kind, text, mark, reason) of each fenced block of ``doc``, in order."""
    text = (REPO / doc).read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        mark = MARK.search(text, 0, match.start())
        found.append(
            (match.group(1), match.group(2), mark.group(1), mark.group(2))
            if mark
            else (match.group(1), match.group(2), None, "")
        )
    return found


def segments(text: str) -> list[str]:
    """The block's commands, one per ``&&`` segment and line, continuation lines joined."""
    lines = text.replace("\\\n", " ").splitlines()
    return [s.strip() for line in lines for s in line.split("&&") if s.strip()]


def runnable_bash(text: str, *, without_setup: bool) -> str:
    """The block as a script: as printed, or without its set-up segments and ``pytest``."""
    if not without_setup:
        return text
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        kept = [s.strip() for s in line.split("&&") if s.strip()]
        kept = [s for s in kept if not SETUP.match(s) and s != "pytest"]
        if kept:
            commands.append(" && ".join(kept))
    return "\n".join(commands)


def unmarked_problem(text: str) -> str | None:
    """Why an unmarked bash block cannot run here, if it cannot."""
    for segment in segments(text):
        if SETUP.match(segment) or segment == "pytest":
            return f"it sets up an environment or runs the suite ({segment!r})"
        if segment.startswith("hf "):
            return f"it talks to the Hugging Face Hub ({segment!r})"
    return None


def parse_commands(text: str) -> int:
    """Parse every ``mergekit-safety`` command of a block with the CLI, running nothing."""
    import click

    from mergekit_safety.cli import main as cli

    parsed = 0
    for segment in segments(text):
        words = shlex.split(segment, comments=True)
        if not words or words[0] != "mergekit-safety":
            continue
        command: click.Command = cli
        name, args = "mergekit-safety", words[1:]
        while isinstance(command, click.Group):
            name, args = args[0], args[1:]
            command = command.commands[name]
        command.make_context(name, args)  # an unknown option or a bad value raises
        parsed += 1
    return parsed


def all_blocks() -> list[tuple[str, int, str, str, str | None, str]]:
    return [(doc, index, *block) for doc in DOCS for index, block in enumerate(blocks(doc))]


def test_every_doc_is_in_the_run_order():
    pages = {f"docs/{path.name}" for path in (REPO / "docs").glob("*.md")}
    assert pages | {"README.md"} == set(DOCS)


def test_every_fence_is_a_block_this_test_reads():
    """A fence this test's pattern misses (indented, unclosed) would go unchecked."""
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        fences = [line for line in text.splitlines() if line.lstrip().startswith("```")]
        assert len(fences) == 2 * len(blocks(doc)), doc
        assert all(line.startswith("```") for line in fences), f"{doc}: an indented fence"


def test_every_mark_says_why():
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        marks = re.findall(r"<!-- (?:not run|run without set-up)\b[^\n]*", text)
        marked = [b for b in blocks(doc) if b[2] is not None]
        assert len(marks) == len(marked), f"{doc}: a mark that is not right above a block"


def test_the_two_opening_commands_are_the_newcomers():
    """The README's first command as it always was; its second is the line `.ci/run` runs."""
    bash = [text.strip() for kind, text, _mark, _why in blocks("README.md") if kind == "bash"]
    assert bash[0] == FIRST_COMMAND
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert bash[1] in ci
    assert bash[1].endswith("&& pytest")


def test_blocks_not_run_still_parse():
    """Each `mergekit-safety` command of a block marked not run parses with today's options."""
    parsed = 0
    for doc, index, kind, text, mark, _why in all_blocks():
        if kind == "bash" and mark == "not run":
            try:
                parsed += parse_commands(text)
            except Exception as error:  # click's UsageError, BadParameter, a missing command
                raise AssertionError(
                    f"{doc} block {index}:\n{text}\ndoes not parse: {error}"
                ) from error
    assert parsed >= 2  # the README's two searches on your own model


def test_every_block_runs(tmp_path):
    from mergekit.config import MergeConfiguration

    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for doc, index, kind, text, mark, _why in all_blocks():
        where = f"{doc} block {index} ({kind}):\n{text}"
        if kind == "yaml":
            data = yaml.safe_load(text)
            if isinstance(data, dict) and "merge_method" in data:
                MergeConfiguration.model_validate(data)
            continue
        if kind == "json":
            for line in text.splitlines():
                json.loads(line)
            continue
        if mark == "not run":
            continue
        if kind == "python":
            command = [sys.executable, "-c", text]
        elif kind == "bash":
            if mark is None and (problem := unmarked_problem(text)):
                pytest.fail(f"{where}\ncannot run here: {problem}; mark it (module docstring)")
            script = runnable_bash(text, without_setup=mark == "run without set-up")
            if not script:
                continue
            command = ["bash", "-euo", "pipefail", "-c", script]
        else:
            raise AssertionError(f"a {kind!r} block: teach this test how to check it\n{where}")
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, f"{where}\nfailed:\n{result.stderr[-3000:]}"
    assert (tmp_path / "out" / "chosen" / "README.md").is_file()
    assert (tmp_path / "out" / "safe_adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "safe_delta" / "config.json").is_file()
