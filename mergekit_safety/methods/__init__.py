"""The safety merge methods, one per file, and their registration with mergekit."""

from __future__ import annotations

from mergekit_safety.methods.harm_removal import harm_removal
from mergekit_safety.methods.lox import lox
from mergekit_safety.methods.lssf import lssf
from mergekit_safety.methods.safe_delta import safe_delta_method
from mergekit_safety.methods.safe_linear import safe_linear
from mergekit_safety.methods.safe_lora import safe_lora
from mergekit_safety.methods.safemerge import safemerge

METHODS = (safe_linear, safemerge, safe_lora, lox, harm_removal, lssf, safe_delta_method)
"""Every method of the plugin: each list of methods (messages, help, ``adapter``) is read here."""


def method_names(methods: tuple = METHODS) -> str:
    """``a, b and c``: the methods' names for a message."""
    names = [method.spec.name for method in methods]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def register_all() -> None:
    """Register each method with mergekit once; a second call (or a second import) is a no-op."""
    from mergekit import merge_methods

    known = {method.spec.name for method in merge_methods.registered_methods()}
    for method in METHODS:
        if method.spec.name not in known:
            merge_methods.register(method)


__all__ = [
    "METHODS",
    "harm_removal",
    "lox",
    "lssf",
    "method_names",
    "register_all",
    "safe_delta_method",
    "safe_linear",
    "safe_lora",
    "safemerge",
]
