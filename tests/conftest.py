"""Shared fixtures: offline mode, and one tiny model family built once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from helpers import cli_in_process, prompts_file, tiny_family  # noqa: E402


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """unaligned / aligned / finetuned / safe tiny Llamas (2 layers, hidden 32), fp32."""
    return tiny_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def calibration(family, tmp_path_factory):
    """``mergekit-safety calibrate`` on the aligned model over :data:`helpers.PROMPTS`."""
    root = tmp_path_factory.mktemp("calibration")
    out = root / "aligned"
    result = cli_in_process("calibrate", family["aligned"], "--prompts",
                            prompts_file(root / "p.jsonl"), "--out", out, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out
