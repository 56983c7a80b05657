"""Run code the moment a module finishes importing: how mergekit-safety reaches mergekit.

Loaded from ``mergekit_safety.pth`` at interpreter start-up, so it must stay cheap: it imports
neither torch nor mergekit. :func:`after_import` places a finder on ``sys.meta_path`` that lets the
real loader execute a module and then calls back. The one call made here imports
:mod:`mergekit_safety` right after ``mergekit.merge_methods`` (importing it registers the methods);
:mod:`mergekit_safety.mergekit_internals` uses the same mechanism to wrap mergekit's planner.
Hooking ``mergekit.merge_methods.registry`` instead would run our import while the package is
half-initialised (circular import).
"""

import sys

_TARGET = "mergekit.merge_methods"


def _initialised(name):
    """Whether ``name`` is imported and has finished executing (not half-way through)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class _AfterImport:
    """A meta-path finder (duck-typed: importing importlib.abc would slow every start-up).

    For a module not imported yet, it wraps the loader's ``exec_module``. A module found half-way
    through its own import (one that imported us) is called back at the next import after it
    finished, which every mergekit entry point makes before it plans a merge.
    """

    def __init__(self):
        self.waiting = {}  # name -> callbacks, for modules not imported yet
        self.unfinished = {}  # name -> callbacks, for modules half-way through their import

    def find_spec(self, fullname, path, target=None):
        self.run_finished()
        callbacks = self.waiting.pop(fullname, None)
        if callbacks is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            self.waiting[fullname] = callbacks
            return None
        exec_module = spec.loader.exec_module

        def exec_then_call_back(module):
            exec_module(module)
            for callback in callbacks:
                _call(callback, module)

        spec.loader.exec_module = exec_then_call_back
        return spec

    def run_finished(self):
        for name in [name for name in self.unfinished if _initialised(name)]:
            for callback in self.unfinished.pop(name):
                _call(callback, sys.modules[name])


def _call(callback, module):
    try:
        callback(module)
    except Exception as error:  # never break mergekit itself
        import warnings

        warnings.warn(f"mergekit-safety: {error}", stacklevel=2)


def _finder():
    for finder in sys.meta_path:
        if isinstance(finder, _AfterImport):
            return finder
    finder = _AfterImport()
    sys.meta_path.insert(0, finder)
    return finder


def after_import(name, callback):
    """Call ``callback(module)`` once ``name`` has been imported (now, if it already is)."""
    if _initialised(name):
        callback(sys.modules[name])
        return
    finder = _finder()
    pending = finder.unfinished if name in sys.modules else finder.waiting
    pending.setdefault(name, []).append(callback)


def _register(_module):
    import mergekit_safety  # noqa: F401  (importing registers the methods)


def install():
    finder = _finder()
    if _TARGET in sys.modules:
        _register(None)
    elif _register not in finder.waiting.get(_TARGET, ()):
        finder.waiting.setdefault(_TARGET, []).append(_register)


install()
