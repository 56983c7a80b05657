"""The commands stay thin (issue 37): no function in ``mergekit_safety/cli/`` over 60 lines; the
work lives in the library, the option groups in ``cli/options.py``."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[1] / "mergekit_safety" / "cli"
LONGEST = 60


def test_no_command_function_is_over_60_lines():
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
