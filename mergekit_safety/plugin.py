"""The plugin's one entry: register the methods and hook mergekit's planner, once per process.

Called by the ``.pth`` hook (``_mergekit_safety_autoload``) when mergekit's method registry has
finished loading; a program without the hook (``python -S``, an unusual install) may call
``_mergekit_safety_autoload.install()`` itself. Nothing below this module imports it or the hook,
and it does not import the hook either: the hook passes its ``after_import`` down.
"""

from __future__ import annotations

from mergekit_safety.mergekit_internals import AfterImport
from mergekit_safety.methods import register_all
from mergekit_safety.recipe import planning
from mergekit_safety.recipe.user_errors import install_excepthook

MERGEKIT_COMMANDS = "mergekit.scripts"
"""The package every mergekit command (``mergekit-yaml``, ``-multi``, ``-pytorch``…) lives in."""


def activate(after_import: AfterImport) -> None:
    """Register the safety methods, wrap mergekit's planner, and, in a mergekit command, print
    user mistakes as one line (the excepthook). A second call changes nothing."""
    register_all()
    planning.install(after_import)
    after_import(MERGEKIT_COMMANDS, lambda _module: install_excepthook())
