"""Register mergekit-safety's merge methods the moment ``mergekit.merge_methods`` is imported.

Loaded from ``mergekit_safety.pth`` at interpreter start-up, so it must stay cheap: it imports
neither torch nor mergekit. It places a one-shot finder on ``sys.meta_path`` that lets the real
loader execute ``mergekit.merge_methods`` and then imports :mod:`mergekit_safety`, whose import
registers the methods. Hooking ``mergekit.merge_methods.registry`` instead would run our import
while the package is half-initialised (circular import).
"""

import sys

_TARGET = "mergekit.merge_methods"


class _RegisterAfterMergekit:
    """A meta-path finder (duck-typed: importing importlib.abc would slow every start-up)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                import mergekit_safety  # noqa: F401  (importing registers the methods)
            except Exception as error:  # never break mergekit itself
                import warnings

                warnings.warn(f"mergekit-safety: methods not registered: {error}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        import mergekit_safety  # noqa: F401
    elif not any(isinstance(f, _RegisterAfterMergekit) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterMergekit())


install()
