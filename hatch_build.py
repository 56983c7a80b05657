"""Ship the autoload ``.pth`` file into site-packages, for regular and editable installs.

mergekit 0.1.5 has no plugin discovery, so a ``.pth`` line is what makes our methods visible to an
unmodified ``mergekit-yaml``. Hatchling copies force-included files for regular wheels from
``force_include`` and for editable wheels only from ``force_include_editable``.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PTH = {"mergekit_safety.pth": "mergekit_safety.pth"}


class AutoloadPthHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key].update(PTH)
