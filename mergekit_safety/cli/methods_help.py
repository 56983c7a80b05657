"""A command whose ``--help`` ends with the methods it takes, read from the method registry.

The registry imports mergekit and torch, so it is read only when the help is shown.
"""

from __future__ import annotations

from typing import Any, Literal

import click

Which = Literal["all", "adapter"]


class MethodsCommand(click.Command):
    """``click.command(cls=MethodsCommand, methods="all" | "adapter")``."""

    def __init__(self, *args: Any, methods: Which = "all", **kwargs: Any) -> None:
        self.methods = methods
        super().__init__(*args, **kwargs)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text(f"Methods: {methods_line(self.methods)}.")
        super().format_epilog(ctx, formatter)


def methods_line(which: Which = "all") -> str:
    """The registered methods (``adapter``: those with an adapter form), for a help text."""
    from mergekit_safety.methods import METHODS, method_names

    chosen = METHODS if which == "all" else tuple(m for m in METHODS if m.adapter_form)
    return method_names(chosen)
