"""Every code block in the README runs as printed, from the repository root.

The blocks run in order in one workspace holding a copy of ``recipes/`` (later blocks read what
earlier ones wrote, as a reader following along would). Left out, and why:

- in bash blocks, the set-up segments of the two opening commands (``python3 -m venv``,
  activating it, ``pip install``): the test already runs inside such an environment, and
  ``.ci/run`` runs the install itself; and ``pytest``, which is this suite;
- ``hf ...`` lines: they log in to and upload to the Hugging Face Hub, which is offline here;
- the LoX walk-through block, whose middle step trains a LoRA (``build_stage``): nothing trains
  in CI. Its merge is ``recipes/lox.yml``, which ``tests/test_lox.py`` runs as shipped.

YAML blocks: a whole recipe is validated as mergekit's ``MergeConfiguration`` (Hub ids included:
validation reads nothing); a fragment must parse as YAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import REPO

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SETUP = re.compile(r"^(python3 -m venv|\. \.venv/bin/activate|pip install)\b")


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))


def runnable_bash(text: str) -> str:
    """The block's commands without the environment set-up, the test suite and Hub uploads."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        segments = [s.strip() for s in line.split("&&")]
        kept = [s for s in segments if s and not SETUP.match(s) and s != "pytest"]
        kept = [s for s in kept if not s.startswith("hf ")]
        if kept:
            commands.append(" && ".join(kept))
    return "\n".join(commands)


def test_readme_has_the_blocks_we_check():
    kinds = [kind for kind, _text in blocks()]
    assert {"bash", "python", "yaml"} <= set(kinds)


def test_every_readme_block_runs(tmp_path):
    from mergekit.config import MergeConfiguration

    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for index, (kind, text) in enumerate(blocks()):
        where = f"README block {index} ({kind}):\n{text}"
        if kind == "yaml":
            data = yaml.safe_load(text)
            if "merge_method" in data:
                MergeConfiguration.model_validate(data)
            continue
        if kind == "python":
            command = [sys.executable, "-c", text]
        elif kind == "bash":
            if "build_stage" in text:  # trains: see the module docstring
                continue
            script = runnable_bash(text)
            if not script:
                continue
            command = ["bash", "-euo", "pipefail", "-c", script]
        else:
            raise AssertionError(f"a {kind} block: teach this test how to check it\n{where}")
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, f"{where}\nfailed:\n{result.stderr[-3000:]}"
    assert (tmp_path / "out" / "chosen" / "README.md").is_file()
    assert (tmp_path / "out" / "safe_adapter" / "adapter_config.json").is_file()
