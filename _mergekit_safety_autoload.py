"""Run code the moment a module finishes importing: how mergekit-safety reaches mergekit.

Loaded from ``mergekit_safety.pth`` at interpreter start-up, so it must stay cheap: it imports
nothing but the standard library, and nothing of ours until mergekit's method registry has
loaded. :func:`after_import` places a finder on ``sys.meta_path`` that lets the real loader
execute a module and then calls back. The one call made here runs
``mergekit_safety.plugin.activate(after_import)`` right after ``mergekit.merge_methods`` (hooking
``mergekit.merge_methods.registry`` instead would run it while that package is half-initialised);
``activate`` passes :func:`after_import` down to wrap mergekit's planner the same way.

When one of our own modules is half-way through its import at that moment (it imported mergekit
first), ``activate`` waits until that import has finished: it is called back at the next import.
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


_OURS = "mergekit_safety"
_LOOKUPS = ("get", "registered_methods")


def _activate(_module):
    busy = [name for name in sys.modules if name.startswith(_OURS) and not _initialised(name)]
    if busy:  # activating now would import a module of ours that is half-way through its import
        _finder().unfinished.setdefault(busy[0], []).append(_activate)
        _activate_on_lookup(sys.modules[_TARGET])
        return
    _restore_lookups(sys.modules.get(_TARGET))
    from mergekit_safety.plugin import activate

    activate(after_import)


def _activate_on_lookup(package):
    """Until activated, mergekit's method lookups activate first (a lookup needs no import)."""
    for name in _LOOKUPS:
        original = getattr(package, name)
        if hasattr(original, "_before_mergekit_safety"):
            continue

        def lookup(*args, _original=original, _name=name, **kwargs):
            if hasattr(getattr(package, _name), "_before_mergekit_safety"):  # not activated yet
                _activate(None)
            return _original(*args, **kwargs)

        lookup._before_mergekit_safety = original
        setattr(package, name, lookup)


def _restore_lookups(package):
    for name in _LOOKUPS:
        original = getattr(getattr(package, name, None), "_before_mergekit_safety", None)
        if original is not None:
            setattr(package, name, original)


_MERGE = "mergekit.merge"


def _wrap_merge(module):
    """``run_merge`` runs each merge inside a run of its own; wrapped as ``mergekit.merge``
    finishes executing, before any ``from mergekit.merge import run_merge`` binds the name
    (activation comes too late for that: ``mergekit.merge`` is half-imported then)."""
    from mergekit_safety.mergekit_internals import wrap_merge

    wrap_merge(module)


def install():
    """Activate the plugin once mergekit's method registry has loaded (now, if it has)."""
    if _wrap_merge not in _finder().waiting.get(_MERGE, ()):
        after_import(_MERGE, _wrap_merge)
    finder = _finder()
    if _initialised(_TARGET):
        _activate(None)
    elif _activate not in finder.waiting.get(_TARGET, ()):
        pending = finder.unfinished if _TARGET in sys.modules else finder.waiting
        pending.setdefault(_TARGET, []).append(_activate)


def uninstall():
    """Remove the hook (tests use it to import the package without mergekit-safety active)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]


install()
