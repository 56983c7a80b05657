"""mergekit-safety: merge methods that give back the safety alignment a fine-tune lost.

Importing the package (or any module of it) registers nothing and patches nothing. The ``.pth``
hook installed beside it calls :func:`mergekit_safety.plugin.activate` once mergekit's method
registry has loaded, so unmodified ``mergekit-yaml`` and friends see the methods.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
