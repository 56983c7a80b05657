"""mergekit-safety: merge methods that give back the safety alignment a fine-tune lost.

Importing the package registers ``safe_linear``, ``safemerge`` and ``safe_lora`` with mergekit.
The ``.pth`` hook installed beside it does that import whenever mergekit's method registry loads,
so unmodified ``mergekit-yaml`` and friends see the methods; :func:`planning.install` then has
mergekit's planner call our checks (:mod:`mergekit_safety.mergekit_internals`).
"""

from mergekit_safety import planning
from mergekit_safety.errors import install_excepthook
from mergekit_safety.methods import register_all

__version__ = "0.1.0"

register_all()
planning.install()
install_excepthook()

__all__ = ["__version__", "register_all"]
