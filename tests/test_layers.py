"""The package's imports run one way: math → methods → recipe machinery → reporting → commands
→ the plugin entry → the ``.pth`` hook.

Read from the source (every import statement, module level or inside a function), so a lazy
import that runs back up is caught as well as a top-level one. The hook
(``_mergekit_safety_autoload``, beside the package) counts as a module of its own, on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_safety"

HOOK = "_mergekit_safety_autoload"
LAYERS = (
    ("math", {"", "errors", "stats", "subspace", "roles", "selection", "parameters", "preflight",
              "calibration",
              "acceptance", "runs", "hub_card", "outputs"}),
    ("the door into mergekit", {"mergekit_internals"}),
    ("methods", {"methods"}),
    ("recipe machinery", {"recipe", "lora_cache", "scoring", "planning", "adapter", "inspection",
                          "recipe_keys"}),
    ("evaluation and reporting", {"evaluation", "sweep", "search", "card", "plot", "demo"}),
    ("commands and the plugin entry", {"cli", "__main__", "plugin"}),
    ("the .pth hook", {HOOK}),
)  # fmt: skip
"""Each top-level module (or subpackage) of mergekit_safety and its floor; "" is the root."""

MERGEKIT_PUBLIC = (
    "mergekit.merge_methods",  # the method API: register, @merge_method, TensorGroup, get, ...
    "mergekit.config",  # MergeConfiguration, what run_merge takes
    "mergekit.options",  # MergeOptions, likewise
    "mergekit.common",  # ModelReference, the recipe's model entries
    "mergekit.merge",  # run_merge
)
INTERNAL = {"mergekit.merge_methods.task_adapter", "mergekit.merge_methods.dtype"}


def modules() -> dict[str, Path]:
    found = {HOOK: PACKAGE.parent / f"{HOOK}.py"}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules of ours, mergekit modules) that ``name`` imports anywhere in its source."""
    ours, theirs = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    package = "" if name == HOOK else package
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([p for p in base if p] + ([node.module] if node.module else []))
                module = f"mergekit_safety.{module}" if module else "mergekit_safety"
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule sub, not (only) the package
            subs = [f"{module}.{alias.name}" for alias in node.names]
            if module.startswith("mergekit_safety"):
                targets = [t for t in subs if t.removeprefix("mergekit_safety.") in known]
                targets = targets or [module]
            else:  # a name imported from mergekit: `_private` ones are internals
                targets = [module, *subs]
        else:
            continue
        for target in targets:
            if target == "mergekit_safety" or target.startswith("mergekit_safety."):
                local = target.removeprefix("mergekit_safety").removeprefix(".")
                while local and local not in known:
                    local = local.rpartition(".")[0]
                if local != name:
                    ours.add(local)
            elif target == "mergekit" or target.startswith("mergekit."):
                theirs.add(target)
            elif target == HOOK and name != HOOK:
                ours.add(HOOK)
    return ours, theirs


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known)[0] for name, path in known.items()}


def floor(module: str) -> int:
    top = module.split(".")[0]
    for index, (_label, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"mergekit_safety.{module} is in no layer: add it to LAYERS")


def test_no_import_runs_up_a_layer():
    upward = [
        f"{module} ({LAYERS[floor(module)][0]}) imports {target} ({LAYERS[floor(target)][0]})"
        for module, targets in graph().items()
        for target in targets
        if floor(target) > floor(module)
    ]
    assert not upward, "imports that run up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_at_most_seven_layers_and_every_module_in_one():
    assert len(LAYERS) <= 7
    for module in modules():
        floor(module)


def test_the_root_package_imports_nothing():
    """Importing any submodule runs the package's __init__: it holds the version and nothing."""
    assert graph()[""] == set()


def test_only_the_hook_imports_the_plugin_entry_and_nothing_imports_the_hook():
    importers = {module for module, targets in graph().items() if "plugin" in targets}
    assert importers == {HOOK}
    assert not [module for module, targets in graph().items() if HOOK in targets]


def test_mergekit_internals_are_used_in_one_module_only():
    known = modules()
    outside = []
    for name, path in known.items():
        if name == "mergekit_internals":
            continue
        for target in imports(name, path, known)[1]:
            public = target == "mergekit" or any(
                target == p or target.startswith(p + ".") for p in MERGEKIT_PUBLIC
            )
            internal = any(target == i or target.startswith(i + ".") for i in INTERNAL)
            if not public or internal or target.startswith("mergekit.merge._"):
                outside.append(f"{name}: {target}")
    assert not outside, "mergekit internals outside mergekit_internals:\n" + "\n".join(outside)


def test_no_frame_walking():
    words = ("_getframe", "f_back", "f_locals", "tb_frame", "currentframe")
    found = [
        f"{path.relative_to(PACKAGE)}: {word}"
        for path in PACKAGE.rglob("*.py")
        for word in words
        if word in path.read_text(encoding="utf-8")
    ]
    assert not found, found
