"""The package's imports run one way, and its sub-packages are the layers: ``core`` → the door
into mergekit → ``methods`` → ``recipe`` and ``adapter`` → ``evaluation``, ``publish``,
``tuning``, ``demo`` → ``cli`` and the plugin entry → the ``.pth`` hook.

Read from the source (every import statement, module level or inside a function), so a lazy
import that runs back up is caught as well as a top-level one. The hook
(``_mergekit_safety_autoload``, beside the package) counts as a module of its own, on top.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_safety"

HOOK = "_mergekit_safety_autoload"
LAYERS = (
    ("what every layer shares", {"", "core"}),
    ("the door into mergekit", {"mergekit_internals"}),
    ("methods", {"methods"}),
    ("recipe machinery", {"recipe", "adapter"}),
    ("evaluation and reporting", {"evaluation", "publish", "tuning", "demo"}),
    ("commands and the plugin entry", {"cli", "__main__", "plugin"}),
    ("the .pth hook", {HOOK}),
)  # fmt: skip
"""Each sub-package (or top-level module) of mergekit_safety and its floor; "" is the root."""

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
            # `from pkg import sub` runs pkg's face (its __init__) and imports the submodule sub
            subs = [f"{module}.{alias.name}" for alias in node.names]
            if module.startswith("mergekit_safety"):
                targets = [t for t in subs if t.removeprefix("mergekit_safety.") in known]
                targets.append(module)  # the face, counted: it may import the importer back
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


def circles_in(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of a graph (module → the modules it imports), as found by a DFS."""
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
    return circles


def test_no_import_circle():
    circles = circles_in(graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_import_circle_in_the_study():
    """benchmarks/efficacy's modules import one way too (any import, at any depth)."""
    study = PACKAGE.parent / "benchmarks" / "efficacy"
    names = {path.stem for path in study.glob("*.py") if path.stem != "__init__"}
    edges: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((study / f"{name}.py").read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "benchmarks.efficacy":
                    found |= {alias.name for alias in node.names}
                elif node.module.startswith("benchmarks.efficacy."):
                    found.add(node.module.rsplit(".", 1)[1])
        edges[name] = (found & names) - {name}
    assert edges["run"], "the graph was read"
    circles = circles_in(edges)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_at_most_seven_layers_and_every_module_in_one():
    assert len(LAYERS) <= 7
    for module in modules():
        floor(module)


def test_no_two_modules_share_a_name():
    """A module's name says what it holds, once: ``from x import report`` cannot mean two files."""
    stems = Counter(path.stem for path in PACKAGE.rglob("*.py") if path.stem != "__init__")
    repeated = {stem for stem, count in stems.items() if count > 1}
    assert not repeated, sorted(repeated)


def test_the_sub_packages_hold_the_modules():
    """The root holds the entry points and the door; everything else lives in a sub-package."""
    root = {path.stem for path in PACKAGE.glob("*.py")}
    assert root == {"__init__", "__main__", "plugin", "mergekit_internals"}, sorted(root)


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


FOREIGN = ("mergekit", "transformers", "torch", "peft", "safetensors", "huggingface_hub")
"""Packages whose private names and objects only the door touches."""
HOOK_PATCHES = (
    "the .pth hook runs before any module of ours may be imported (stdlib only): until the "
    "plugin activates, it has mergekit's method lookups (`get`, `registered_methods`) activate "
    "it first, and puts them back after"
)
"""The one patch of mergekit outside the door, and why it cannot live there."""


def foreign_names(tree: ast.AST) -> set[str]:
    """Names bound to a foreign module or object: imports, and ``sys.modules[...]`` lookups."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FOREIGN:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in FOREIGN:
                names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign) and "sys.modules" in ast.unparse(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(tree):  # f(sys.modules[...]): f's parameter holds a foreign module
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called = functions.get(node.func.id)
            for index, argument in enumerate(node.args):
                if called is not None and "sys.modules" in ast.unparse(argument):
                    names.add(called.args.args[index].arg)
    return names


def door_breaches(name: str, path: Path) -> list[str]:
    """Private attributes read (``x._name`` on anything but ``self``/``cls`` and our own
    ``_mergekit_safety`` markers) and foreign objects patched (attribute assignment,
    ``setattr``/``delattr``) in ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    foreign = foreign_names(tree)
    found = []

    def base(node: ast.AST) -> str:
        while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node.id if isinstance(node, ast.Name) else ""

    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            private = not node.attr.startswith("__") and "mergekit_safety" not in node.attr
            if private and base(node.value) not in ("self", "cls"):
                found.append(f"{where} reads {ast.unparse(node)}")
        targets = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "delattr"):
            targets = node.args[:1]
        for target in targets:
            if isinstance(target, ast.Attribute | ast.Name) and base(target) in foreign:
                if isinstance(target, ast.Attribute) or isinstance(node, ast.Call):
                    found.append(f"{where} patches {ast.unparse(target)}")
    return found


def test_private_names_and_patches_of_mergekit_only_in_the_door():
    breaches = [
        breach
        for name, path in modules().items()
        if name != "mergekit_internals"
        for breach in door_breaches(name, path)
    ]
    hook = [b for b in breaches if b.startswith(f"{HOOK}:")]
    assert hook and all(" patches " in b for b in hook), HOOK_PATCHES  # the one known exception
    others = [b for b in breaches if not b.startswith(f"{HOOK}:")]
    assert not others, "outside mergekit_internals:\n" + "\n".join(others)


def test_the_door_test_catches_a_private_read_and_a_patch(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import mergekit.merge_methods as mm\n"
        "from mergekit.common import ModelReference\n"
        "def f(reference):\n"
        "    mm.get = None\n"
        "    setattr(ModelReference, 'x', 1)\n"
        "    return reference.model._unique_id()\n"
    )
    found = door_breaches("sample", source)
    assert len(found) == 3, found


def test_foreign_message_texts_only_in_the_door():
    """mergekit's, transformers' and torch's error texts are matched in the door alone."""
    from mergekit_safety.mergekit_internals import FOREIGN_PATTERNS

    sources = {
        name: path.read_text(encoding="utf-8")
        for name, path in modules().items()
        if name != "mergekit_internals"
    }
    leaked = [
        f"{name}: {pattern[:40]}"
        for pattern in FOREIGN_PATTERNS
        for name, text in sources.items()
        if pattern[:30] in text
    ]
    assert FOREIGN_PATTERNS and not leaked, leaked


def test_no_frame_walking():
    words = ("_getframe", "f_back", "f_locals", "tb_frame", "currentframe")
    found = [
        f"{path.relative_to(PACKAGE)}: {word}"
        for path in PACKAGE.rglob("*.py")
        for word in words
        if word in path.read_text(encoding="utf-8")
    ]
    assert not found, found
