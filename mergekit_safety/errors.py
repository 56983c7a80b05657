"""One error type for every bad recipe, path or model pair, and how it reaches the user.

A :class:`ConfigError` is a ``ValueError`` so API callers can catch it as usual. Unmodified mergekit
commands print a traceback for any exception, and pydantic wraps errors raised inside its
validators; :func:`install_excepthook` makes such a process print one line instead, for our
errors and for the user mistakes mergekit itself reports with a traceback (:func:`explain` holds
the list; README "Troubleshooting" shows each message). A genuine bug keeps its traceback, and
``-v`` / ``--verbose`` or ``MERGEKIT_SAFETY_TRACEBACK=1`` shows it for a mistake too.

A failed or interrupted merge also undoes what it wrote (``mergekit_safety.runs.MergeRun.fail``):
in process where mergekit's planner or executor raises, and from the hook for what fails after.
Nothing here runs on import: the commands install the hook (:func:`install_excepthook`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from mergekit_safety import runs

TRACEBACK_ENV = "MERGEKIT_SAFETY_TRACEBACK"
PREFIX = "mergekit-safety: error:"


class ConfigError(ValueError):
    """A user mistake found before heavy work: bad roles, parameters, paths or models."""


def install_hint(extra: str, packages: str) -> str:
    """How to install an optional extra: mergekit-safety is installed from its repository (it
    is not on the package index: an extra is installed as ``pip install -e '.[extra]'``)."""
    return f"pip install {packages} (in a clone of this repository: pip install -e '.[{extra}]')"


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """Return the ConfigError behind ``error``: itself, a cause, or one pydantic wrapped."""
    for candidate in _chain(error):
        if isinstance(candidate, ConfigError):
            return candidate
    return None


def _chain(error: BaseException | None, seen: set[int] | None = None) -> Iterator[BaseException]:
    seen = set() if seen is None else seen
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        errors = getattr(error, "errors", None)  # pydantic.ValidationError keeps the originals
        if callable(errors):
            try:
                for detail in errors():
                    yield from _chain((detail.get("ctx") or {}).get("error"), seen)
            except Exception:  # noqa: BLE001 - not a pydantic error after all
                pass
        error = error.__cause__ or error.__context__


# --- user mistakes that mergekit, transformers or torch report with a traceback -----------------


def explain(error: BaseException, tb: TracebackType | None = None) -> str | None:
    """The one line for a user mistake behind ``error``, or None for what looks like a bug."""
    found = find_config_error(error)
    if found is not None:
        return str(found)
    for candidate in _chain(error):
        for rule in _RULES:
            message = rule(candidate, tb or candidate.__traceback__)
            if message:
                return message
    return None


def _yaml(error: BaseException, _tb: TracebackType | None) -> str | None:
    import yaml

    if not isinstance(error, yaml.YAMLError):
        return None
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"the recipe is not valid YAML: {problem}{where}"


def _pydantic(error: BaseException, _tb: TracebackType | None) -> str | None:
    details = getattr(error, "errors", None)
    if type(error).__name__ != "ValidationError" or not callable(details):
        return None
    first = details()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    got = first.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
    return f"{location or 'recipe'}: {first.get('msg', error)}{shown}"


def _message(pattern: str, template: str, kinds: tuple[type, ...] = (Exception,)):
    compiled = re.compile(pattern)

    def rule(error: BaseException, _tb: TracebackType | None) -> str | None:
        if not isinstance(error, kinds):
            return None
        match = compiled.search(str(error))
        return template.format(*match.groups()) if match else None

    return rule


def _safetensors(error: BaseException, _tb: TracebackType | None) -> str | None:
    """A shard opened outside mergekit's loaders (those name the file themselves)."""
    if type(error).__name__ != "SafetensorError":
        return None
    return f"unreadable safetensors file, truncated or corrupt ({error})"


def _os_error(error: BaseException, _tb: TracebackType | None) -> str | None:
    if not isinstance(error, (PermissionError, FileNotFoundError, NotADirectoryError)):
        return None
    if not getattr(error, "filename", None):
        return None
    return f"{error.strerror or type(error).__name__}: {error.filename}"


_RULES: tuple[Callable[[BaseException, TracebackType | None], str | None], ...] = (
    _yaml,
    _pydantic,
    _message(r"Unimplemented merge method (\S+)", "unknown merge_method {0!r}", (RuntimeError,)),
    _message(
        r"Merge method requires a base input",
        "this merge method needs base_model (for the safety methods: the aligned model)",
        (ValueError,),
    ),
    _message(
        r"Repo id must be in the form .*?: '([^']*)'",
        "model not found: {0} (no such directory, and not a Hub id)",
    ),
    _message(
        r"Unrecognized model in (.*?)\. Should have a `model_type`",
        "not a model directory (no config.json with a model_type): {0}",
    ),
    _message(
        r"(\S+) does not appear to have a file named config\.json",
        "not a model directory (no config.json): {0}",
    ),
    _message(
        r"(?:outgoing traffic has been disabled|offline mode is enabled|"
        r"cannot find the requested files in the (?:disk )?cache)",
        "a model is neither a local directory nor in the Hub cache, and the Hub is offline",
    ),
    _message(
        r"Need to specify cache dir to merge adapters",
        "a `base+adapter` model needs --lora-merge-cache DIR (where the merged copy is kept)",
        (RuntimeError,),
    ),
    _message(
        r"(Torch not compiled with CUDA enabled|Found no NVIDIA driver|no CUDA GPUs are available)",
        "--cuda: no CUDA device here ({0}); run without --cuda",
    ),
    _message(
        r"Exactly one of 'models', 'slices', or 'modules' must be present",
        "the recipe needs exactly one of `models`, `slices` or `modules`",
        (RuntimeError,),
    ),
    _message(r"No output requested", "the recipe lists no models", (RuntimeError,)),
    _message(
        r'Unimplemented dtype "([^"]*)"',
        "dtype: unknown dtype {0!r} (use float32, float16 or bfloat16)",
        (RuntimeError,),
    ),
    _message(
        r"Unable to find model files at (.*)",
        "no weights in {0} (no *.safetensors or *.bin files): not a model directory",
        (RuntimeError,),
    ),
    _message(
        r"config file at '(.*?)' is not a valid JSON file",
        "{0} is not valid JSON: not a model directory",
        (OSError,),
    ),
    _message(
        r"Tensor size mismatch for (\S+): \[(.*?)\]\. Align vocabulary",
        "{0}: the models' vocabularies differ in size ({1}); add `tokenizer: {{source: base}}` "
        "to the recipe to align them",
        (ValueError,),
    ),
    _message(
        r"Tensor (\S+) required but not present in model (\S+)",
        "{1} has no tensor {0}: the models are not of one architecture, or a checkpoint is "
        "incomplete",
        (RuntimeError,),
    ),
    _message(
        r"size mismatch for base_model\.model\.(\S+?)\.(lora_[AB])\S*: copying a param with shape "
        r"torch\.Size\(\[(\d+), (\d+)\]\) from checkpoint, the shape in current model is "
        r"torch\.Size\(\[(\d+), (\d+)\]\)",
        "a LoRA adapter does not fit its base model: {0}.{1} is {2}×{3}, the base model needs "
        "{4}×{5} (the adapter was trained on another model)",
        (RuntimeError,),
    ),
    _safetensors,
    _os_error,
)


# --- undoing a failed run's output ---------------------------------------------------------------


def run_cleanups() -> None:
    """A command is failing: undo what the current merge (if any) wrote so far."""
    run = runs.current()
    if run is not None:
        run.fail()


def show_traceback() -> bool:
    """The user asked for full tracebacks: the env variable, or -v/--verbose on the command."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return any(arg in ("-v", "--verbose") or re.fullmatch(r"-v+", arg) for arg in sys.argv[1:])


def exit_on_terminate(signum: int, _frame: Any) -> None:
    """SIGTERM (a scheduler's kill, ``timeout``) ends a command as Ctrl-C does: the stack unwinds
    (temporary files and staging directories go), and once it has, what the current merge wrote
    is removed (a merge that finished, whose config.json is written, is left)."""
    atexit.register(run_cleanups)
    sys.exit(128 + signum)


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """:func:`exit_on_terminate` for SIGTERM while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def install_excepthook() -> None:
    """Print a user mistake that escapes a mergekit command as one line (exit status stays 1),
    and let SIGTERM remove a merge's partial output as Ctrl-C does (:func:`exit_on_terminate`)."""
    previous = sys.excepthook
    if getattr(previous, "_mergekit_safety", False):
        return
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, exit_on_terminate)

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        run_cleanups()
        message = None if show_traceback() else explain(error, tb)
        if message is None:
            previous(kind, error, tb)
            return
        print(f"{PREFIX} {message}", file=sys.stderr)

    hook._mergekit_safety = True  # type: ignore[attr-defined]
    sys.excepthook = hook
