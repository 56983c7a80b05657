"""The ``mergekit-safety`` command: one click group, one module per subcommand."""

from __future__ import annotations

import os

import click

from mergekit_safety.recipe.user_errors import TRACEBACK_ENV, install_excepthook


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergekit-safety")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help=f"Full tracebacks for user mistakes too (or set {TRACEBACK_ENV}=1).",
)
def main(verbose: bool) -> None:
    """Restore safety alignment by merging weights: inspect, evaluate, sweep, search, publish.

    A mistake in a recipe, a path or a model prints one line and exits with status 1.
    """
    install_excepthook()
    if verbose:
        os.environ[TRACEBACK_ENV] = "1"


def _add_commands() -> None:
    from mergekit_safety.cli import adapter, calibrate, card, demo, inspect, search, sweep
    from mergekit_safety.cli import eval as eval_cli

    main.add_command(inspect.inspect_command)
    main.add_command(eval_cli.eval_command)
    main.add_command(sweep.sweep_command)
    main.add_command(search.search_command)
    main.add_command(card.card_command)
    main.add_command(demo.demo_group)
    main.add_command(adapter.adapter_command)
    main.add_command(calibrate.calibrate_command)


_add_commands()
