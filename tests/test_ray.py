"""``sweep --ray``: the points as Ray tasks on a local cluster of 2 CPU workers.

The distributed sweep must be the serial sweep run elsewhere: the same rows, choice, reports and
chosen merge; a failed point is reported with its parameters while the others finish; a killed
run cancels its tasks and leaves nothing in the work dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, write_recipe

from mergekit_safety.core.acceptance import Gate

pytest.importorskip("ray")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mergekit_safety", "sweep", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)  # fmt: skip


def test_ray_sweep_equals_the_serial_sweep(tmp_path):
    """The demo's gated safe_linear over 3 λ with the real evaluator, serially and on Ray."""
    common = ["recipes/safe_linear_gated.yml", "--set", "weight=0.5,0.7,0.9", "--min-refusal",
              "0.5", "--prompts", "recipes/demo/prompts", "--limit", "4", "--max-new-tokens", "8",
              "--quiet"]  # fmt: skip
    runs = {}
    for mode, extra in (("serial", []), ("ray", ["--ray", "--ray-workers", "2"])):
        work = tmp_path / f"work-{mode}"
        work.mkdir()
        out = tmp_path / mode
        run = sweep(*common, "--out", str(out), "--work-dir", str(work), *extra)
        assert run.returncode == 0, run.stderr[-3000:]
        assert list(work.iterdir()) == [], f"{mode}: temporary merges left behind"
        runs[mode] = out
    serial, ray = (json.loads((runs[m] / "sweep.json").read_text()) for m in ("serial", "ray"))
    assert ray["points"] == serial["points"]
    assert ray["references"] == serial["references"]
    assert ray["chosen"] == serial["chosen"] and ray["chosen"] is not None
    assert ray["failed"] == serial["failed"] == []
    weights = [(runs[m] / "model.safetensors").read_bytes() for m in ("serial", "ray")]
    assert weights[0] == weights[1], "the chosen merge differs"
    for name in ("sweep.md", "sweep.csv"):
        assert (runs["ray"] / name).read_text() == (runs["serial"] / name).read_text()


def test_a_failed_point_is_reported_and_the_others_go_on(family, tmp_path):
    import ray

    from mergekit_safety.tuning.grid import plan_sweep
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.merging import merge_recipe
    from mergekit_safety.tuning.runners import OnDisk, RayRunner
    from mergekit_safety.tuning.sweep_report import markdown_rows, sweep_record

    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "safe_linear", "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"])}], "dtype": "float32"})  # fmt: skip
    plan = plan_sweep(recipe, "weight", [0.3, 0.6, 0.9])

    def merge(body, out, options):  # pickled by value to the workers, like the evaluator
        if body["models"][0]["parameters"]["weight"] == 0.6:
            raise ValueError("no merge at 0.6, on purpose")
        merge_recipe(body, out, options)

    def evaluator(path):
        from safetensors.torch import load_file

        tensors = load_file(str(Path(path) / "model.safetensors"))
        norm = float(sum(t.float().norm() for t in tensors.values()))
        return {"refusal_rate": 1.0, "over_refusal_rate": 0.0, "task_accuracy": norm % 1,
                "n_harmful": 1, "n_benign": 1, "n_task": 1}  # fmt: skip

    from mergekit.options import MergeOptions

    work = tmp_path / "work"
    work.mkdir()
    runner = RayRunner(MergeOptions(quiet=True), OnDisk(merge=merge), work, workers=2)
    result = run_sweep(plan, evaluator, runner, gate=Gate(min_refusal=0.5), progress=False)
    assert not ray.is_initialized(), "the local cluster it started is stopped"
    assert [p.value for p in result.points] == [0.3, 0.9]
    assert [(value, "ValueError" in error) for value, error in result.failed] == [(0.6, True)]
    assert "no merge at 0.6, on purpose" in result.failed[0][1]
    assert result.chosen is not None and result.chosen.value in (0.3, 0.9)
    record = sweep_record(result)
    assert [(r["weight"], r["kind"]) for r in record["failed"]] == [(0.6, "failed")]
    assert "not evaluated: ValueError: no merge at 0.6, on purpose" in markdown_rows(result.rows())
    assert list(work.iterdir()) == []


def test_a_failed_evaluation_is_the_same_row_serially_and_on_ray(family, tmp_path):
    """One loop records failures for both runners."""
    from mergekit.options import MergeOptions

    from mergekit_safety.tuning.grid import plan_sweep
    from mergekit_safety.tuning.grid_sampler import run_sweep
    from mergekit_safety.tuning.runners import RayRunner, SerialRunner

    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "safe_linear", "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"])}], "dtype": "float32"})  # fmt: skip
    plan = plan_sweep(recipe, "weight", [0.3, 0.6, 0.9])

    def evaluator(path):  # pickled by value to the workers
        import yaml

        config = Path(path) / "mergekit_config.yml"
        if config.is_file():
            weight = yaml.safe_load(config.read_text())["models"][0]["parameters"]["weight"]
            if weight == 0.6:
                raise ValueError("no evaluation at 0.6, on purpose")
            return {"refusal_rate": 1 - weight, "over_refusal_rate": 0.0, "task_accuracy": weight,
                    "n_harmful": 1, "n_benign": 1, "n_task": 1}  # fmt: skip
        return {"refusal_rate": 1.0, "over_refusal_rate": 0.0, "task_accuracy": 0.5,
                "n_harmful": 1, "n_benign": 1, "n_task": 1}  # fmt: skip

    rows = {}
    for mode in ("serial", "ray"):
        work = tmp_path / f"work-{mode}"
        work.mkdir()
        runner = (
            SerialRunner(MergeOptions(quiet=True), work_dir=work)
            if mode == "serial"
            else RayRunner(MergeOptions(quiet=True), work_dir=work, workers=2)
        )
        result = run_sweep(plan, evaluator, runner, gate=Gate(min_refusal=0.05),
                           out=tmp_path / mode, progress=False)  # fmt: skip
        assert result.failed == [(0.6, "ValueError: no evaluation at 0.6, on purpose")]
        assert result.chosen is not None and result.chosen.value == 0.9
        assert list(work.iterdir()) == []
        rows[mode] = result.rows()
    assert rows["ray"] == rows["serial"]
    weights = [(tmp_path / m / "model.safetensors").read_bytes() for m in ("serial", "ray")]
    assert weights[0] == weights[1]


DRIVER = """
import time
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
from mergekit_safety.cli import main, sweep

def slow(path):
    if "point-" in path:  # a swept point on a worker: long enough to be killed
        time.sleep(120)
    return {{"refusal_rate": 1.0, "over_refusal_rate": 0.0, "task_accuracy": 0.5,
             "n_harmful": 1, "n_benign": 1, "n_task": 1}}

from mergekit_safety.evaluation.settings import EvalSettings
EvalSettings.build = lambda self, **_kwargs: slow
main({args!r})
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_killed_ray_sweep_cancels_its_tasks_and_leaves_nothing(family, tmp_path, signum):
    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "safe_linear", "base_model": str(family["aligned"]),
        "models": [{"model": str(family["finetuned"])}], "dtype": "float32"})  # fmt: skip
    work, out = tmp_path / "work", tmp_path / "chosen"
    work.mkdir()
    args = ["sweep", str(recipe), "--set", "weight=0.3,0.6", "--min-refusal", "0", "--out",
            str(out), "--work-dir", str(work), "--quiet", "--ray", "--ray-workers",
            "2"]  # fmt: skip
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(args=args))
    process = subprocess.Popen([sys.executable, str(driver)], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while not list(work.glob("*/point-*/*/model.safetensors")) and time.time() < deadline:
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(0.5)
        assert list(work.glob("*/point-*/*/model.safetensors")), "no point was merged in time"
        process.send_signal(signum)
        assert process.wait(timeout=120) != 0
    finally:
        process.kill()
    assert list(work.iterdir()) == []
    assert not out.exists()


def test_ray_mistakes_are_one_line_before_any_work(tmp_path):
    swallowed = sweep("--ray", "recipes/safe_linear.yml", "--set", "weight=0.5")
    assert swallowed.returncode == 2
    assert "put --ray after RECIPE" in swallowed.stderr
    workers = sweep("recipes/safe_linear.yml", "--set", "weight=0.5", "--ray-workers", "2")
    assert workers.returncode == 2
    assert "sizes the local cluster that --ray starts" in workers.stderr


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch):
    import builtins

    from mergekit_safety.core.errors import ConfigError
    from mergekit_safety.tuning.ray_cluster import import_ray

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install ray\[client\] \(in a clone of this "
                       r"repository: pip install -e '\.\[ray\]'\)"):  # fmt: skip
        import_ray()
