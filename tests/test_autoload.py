"""The methods reach an unmodified mergekit with no import of ours, and cost nothing otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, mergekit_multi

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}


def python(
    code: str, *flags: str, cwd: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    """A fresh interpreter outside the repository, so only site-packages can supply the hook."""
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_startup_imports_neither_torch_nor_mergekit(tmp_path):
    result = python("pass", "-X", "importtime", cwd=tmp_path)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "_mergekit_safety_autoload" in imported  # the .pth hook is installed and ran
    assert not {name for name in imported if name.split(".")[0] in {"torch", "mergekit"}}


def test_registry_lookup_and_merge_state_dicts_without_importing_us(tmp_path):
    code = """
import sys, torch
from mergekit.merge_methods import get, merge_state_dicts
assert "mergekit_safety" in sys.modules
print(get("safemerge").spec.name, get("safe_lora").spec.name)
a = {"w": torch.zeros(3, 2)}; f = {"w": torch.ones(3, 2)}
print(merge_state_dicts({"a": a, "f": f}, "safe_linear", base="a",
                        parameters={"weight": {"f": 0.25}})["w"][0, 0].item())
"""
    result = python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["safemerge", "safe_lora", "0.25"]


def test_registration_happens_once(tmp_path):
    code = """
import mergekit.merge_methods as mm
from _mergekit_safety_autoload import after_import
from mergekit_safety.plugin import activate
activate(after_import); activate(after_import)
names = [m.spec.name for m in mm.registered_methods()]
print(names.count("safe_linear"), names.count("safemerge"), names.count("safe_lora"))
"""
    result = python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1"]


def test_mergekit_pytorch_runs_our_method(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {"a": torch.zeros(4, 3), "f": torch.ones(4, 3), "u": torch.full((4, 3), -1.0)}
    for name, tensor in tensors.items():
        save_file({"w": tensor}, tmp_path / f"{name}.safetensors")
    (tmp_path / "r.yml").write_text(
        "merge_method: safe_linear\nbase_model: a.safetensors\nmodels:\n"
        "  - model: f.safetensors\n    parameters: {weight: 0.5}\n"
        "  - model: u.safetensors\n    parameters: {role: unaligned}\n"
    )
    command = Path(sys.executable).with_name("mergekit-pytorch")
    result = subprocess.run(
        [str(command), "r.yml", "out"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (merged,) = (tmp_path / "out").glob("*.safetensors")
    # V and Δ are parallel (ρ = 1 ≥ τ): the gate keeps the fine-tuned tensor.
    assert torch.equal(load_file(merged)["w"], tensors["f"])


def test_mergekit_multi_runs_our_method(tmp_path, family):
    recipe = (
        f"name: first\nmerge_method: safe_lora\nbase_model: {family['aligned']}\n"
        f"models:\n  - model: {family['finetuned']}\n"
        f"  - model: {family['unaligned']}\n    parameters: {{role: unaligned}}\n"
        f"---\nmerge_method: safe_linear\nbase_model: {family['aligned']}\n"
        f"models:\n  - model: first\n"
    )
    (tmp_path / "multi.yml").write_text(recipe)
    result = mergekit_multi("multi.yml", tmp_path, "--out-path", "final")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "inter" / "first" / "model.safetensors").exists()
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_built_wheel_ships_the_pth_hook(tmp_path):
    """A regular (non-editable) wheel carries the .pth line and the hook module at its root."""
    pytest.importorskip("hatchling")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("mergekit_safety-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mergekit_safety.pth", "_mergekit_safety_autoload.py"} <= names
    assert zipfile.ZipFile(wheel).read("mergekit_safety.pth").strip() == (
        b"import _mergekit_safety_autoload"
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    code = f"""
import site, sys
sys.path = [p for p in sys.path if "mergekit_safety" not in p and p != {str(REPO)!r}]
site.addsitedir({str(target)!r})
import mergekit.merge_methods as mm
import mergekit_safety
assert mergekit_safety.__file__.startswith({str(target)!r}), mergekit_safety.__file__
print(mm.get("safe_linear").spec.name)
"""
    result = python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "safe_linear"


def test_importing_the_package_imports_neither_torch_nor_mergekit(tmp_path):
    result = python("import mergekit_safety", "-X", "importtime", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "mergekit_safety" in imported
    assert not {name for name in imported if name.split(".")[0] in {"torch", "mergekit"}}


def test_importing_any_module_changes_neither_the_excepthook_nor_the_registry(tmp_path):
    """With the hook removed, importing every module of ours (mergekit loaded first) registers
    nothing and leaves sys.excepthook alone: only ``plugin.activate`` does either."""
    code = """
import pkgutil, sys, _mergekit_safety_autoload as hook
hook.uninstall()
import mergekit.merge_methods as mm, mergekit.merge, mergekit_safety
names, excepthook = [m.spec.name for m in mm.registered_methods()], sys.excepthook
modules = [m.name for m in pkgutil.walk_packages(mergekit_safety.__path__, "mergekit_safety.")
           if not m.name.endswith("__main__")]
for name in modules:
    __import__(name)
assert sys.excepthook is excepthook, "an import replaced sys.excepthook"
assert [m.spec.name for m in mm.registered_methods()] == names, "an import registered a method"
assert not getattr(mergekit.merge.MergePlanner.plan_to_disk, "_mergekit_safety", False)
from mergekit_safety.plugin import activate
activate(hook.after_import)
assert "safe_linear" in [m.spec.name for m in mm.registered_methods()]
assert sys.excepthook is excepthook, "activate outside a mergekit command set the excepthook"
import mergekit.scripts.run_yaml
assert sys.excepthook is not excepthook, "a mergekit command gets the one-line excepthook"
print(len(modules))
"""
    result = python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) > 50


@pytest.mark.parametrize(
    "first", ["mergekit_safety.recipe.scoring", "mergekit_safety.methods.base"]
)
def test_a_module_of_ours_imported_before_mergekit_still_activates(tmp_path, first):
    """Our module imports mergekit half-way through its own import: activation waits for it."""
    code = (
        f"import {first}\nfrom mergekit.merge_methods import get\nprint(get('safe_lora').spec.name)"
    )
    result = python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "safe_lora"
