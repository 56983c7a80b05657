"""The ``mergekit-safety`` command: one click group, one module per subcommand."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergekit-safety")
def main() -> None:
    """Restore safety alignment by merging weights: inspect, evaluate, sweep and publish."""


def _add_commands() -> None:
    from mergekit_safety.cli import adapter, card, demo, inspect, sweep
    from mergekit_safety.cli import eval as eval_cli

    main.add_command(inspect.inspect_command)
    main.add_command(eval_cli.eval_command)
    main.add_command(sweep.sweep_command)
    main.add_command(card.card_command)
    main.add_command(demo.demo_group)
    main.add_command(adapter.adapter_command)


_add_commands()
