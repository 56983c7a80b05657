"""Tables in the docs are rebuilt from the committed JSON they come from, and must match."""

from __future__ import annotations

import json

from helpers import REPO


def test_the_judge_doc_table_is_the_committed_measurement():
    from benchmarks.judge_outcomes import OUT, table

    text = (REPO / "docs" / "judge.md").read_text(encoding="utf-8")
    start = text.index("<!-- judge_outcomes table -->\n") + len("<!-- judge_outcomes table -->\n")
    end = text.index("\n<!-- end judge_outcomes table -->")
    assert text[start:end] == table(json.loads(OUT.read_text(encoding="utf-8")))


def test_the_readme_paragraphs_are_the_committed_measurements():
    """The README's judge and results paragraphs are what ``benchmarks.readme_paragraphs`` writes
    from the committed JSON (rewrite them with ``python -m benchmarks.readme_paragraphs``)."""
    from benchmarks.readme_paragraphs import found, paragraphs

    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name, paragraph in paragraphs().items():
        assert found(text, name) == paragraph, f"the README's {name} paragraph is stale"
