"""The last bad inputs of issue #14, each through the real command's entry point (in process):
status, one line, no output."""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import make_adapter, mergekit_safety
from helpers import (
    PREFIX,
    REPO,
    cli_in_process,
    gated,
    mergekit_yaml,
    one_line,
    tiny_llama,
    write_recipe,
    yaml_in_process,
)


def test_adapter_for_another_width_stops_before_writing(tmp_path, family):
    wide = tiny_llama(tmp_path / "wide_aligned", seed=5, hidden=64)
    wide_unaligned = tiny_llama(tmp_path / "wide_unaligned", seed=6, hidden=64)
    adapter = make_adapter(wide, wide_unaligned, tmp_path / "wide_adapter", seed=7)
    recipe = write_recipe(
        tmp_path / "r.yml",
        {
            "merge_method": "safe_linear",
            "base_model": str(family["aligned"]),
            "models": [{"model": f"{family['aligned']}+{adapter}"}],
            "parameters": {"weight": 0.5},
        },
    )
    out = tmp_path / "out"
    result = cli_in_process("adapter", recipe, out)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "LoRA factors for a" in errors[0] and "trained on another model" in errors[0]
    assert not out.exists()


def test_top_k_above_the_matrix_count_stops_before_the_rho_pass(tmp_path, family):
    config = gated(family, top_k=500)
    del config["parameters"]["threshold"]
    recipe = write_recipe(tmp_path / "r.yml", config)
    result = yaml_in_process(recipe, tmp_path / "out")
    line = one_line(result)
    assert line.startswith("top_k=500 but only 14 matrices can be ranked"), line
    assert "counted from the file headers" in line
    assert "Scoring weights" not in result.stderr  # no rho pass ran
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_stops_before_planning(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = yaml_in_process(recipe, tmp_path / "out", "--cuda")
    assert one_line(result).startswith("--cuda: no CUDA device here")
    assert "Executing graph" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_overwrite_removes_what_the_old_model_owned_and_names_what_stays(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    out = tmp_path / "out"
    assert yaml_in_process(recipe, out).returncode == 0
    (out / "build_info.json").write_text("{}")
    (out / "tokenizer.json").write_text("stale")  # mergekit's file: replaced by the new merge
    result = yaml_in_process(recipe, out, env={"MERGEKIT_SAFETY_OVERWRITE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    note = [line for line in result.stderr.splitlines() if "left as they were" in line]
    assert note == [f"mergekit-safety: replacing the model in {out}; left as they were: "
                    "build_info.json"]  # fmt: skip
    assert (out / "tokenizer.json").read_text() != "stale"


def test_a_finished_merge_says_so_unless_quiet(tmp_path, family):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    result = yaml_in_process(recipe, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    done = [line for line in result.stderr.splitlines() if "mergekit-safety: wrote" in line]
    assert len(done) == 1, result.stderr[-2000:]
    assert done[0].startswith(f"mergekit-safety: wrote {tmp_path / 'out'} (safe_linear, ")
    assert done[0].endswith(" of 14 gated matrices merged)")
    quiet = yaml_in_process(recipe, tmp_path / "quiet", "--quiet")
    assert quiet.returncode == 0 and "mergekit-safety: wrote" not in quiet.stderr


def test_the_done_line_counts_what_the_gate_merged(tmp_path, family):
    """τ = 1 merges every gated matrix (ρ < 1), τ = 0 none."""
    for threshold, merged in ((1.0, 14), (0.0, 0)):
        recipe = write_recipe(tmp_path / f"r{threshold}.yml", gated(family, threshold=threshold))
        result = yaml_in_process(recipe, tmp_path / f"out{threshold}")
        assert f"(safe_linear, {merged} of 14 gated matrices merged)" in result.stderr


@pytest.mark.subprocess
def test_no_torch_dtype_deprecation_warning(tmp_path, family):
    """Fresh interpreters: transformers says this with ``warning_once``, once per process, so
    in process an earlier test could have used up the one warning and this would pass blind."""
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    merge = mergekit_yaml(recipe, tmp_path / "out")
    inspect = mergekit_safety("inspect", recipe)
    for result in (merge, inspect):
        assert result.returncode == 0, result.stderr[-2000:]
        assert "is deprecated! Use `dtype`" not in result.stderr


def test_option_errors_exit_2_as_the_readme_says(tmp_path):
    result = cli_in_process("eval", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr and "Traceback" not in result.stderr
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "exits with status 2" in readme
    assert PREFIX  # the other mistakes: status 1 (tests/test_bad_input.py)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["inspect", "adapter", "sweep"])
def test_our_commands_refuse_cuda_without_cuda_first(tmp_path, family, command):
    recipe = write_recipe(tmp_path / "r.yml", gated(family))
    extra = {"adapter": [tmp_path / "out"], "sweep": ["--set", "weight=0.5"]}.get(command, [])
    result = cli_in_process(command, recipe, *extra, "--cuda")
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: --cuda: no CUDA device here")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_install_of_the_chosen_merge_leaves_out_as_it_was(tmp_path, monkeypatch):
    """sweep and search install their choice all at once: Ctrl-C while the files move leaves
    the old model whole in --out and no staging sibling (issue 40)."""
    import shutil

    from mergekit_safety.tuning.merging import install

    out, merged = tmp_path / "out", tmp_path / "merged"
    out.mkdir()
    merged.mkdir()
    (out / "model.safetensors").write_text("old")
    (out / "README.md").write_text("old card")
    new = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
           "model.safetensors.index.json", "config.json")  # fmt: skip
    for name in new:
        (merged / name).write_text("new")
    real_move, moved = shutil.move, []

    def interrupted(source, target):
        if moved:
            raise KeyboardInterrupt
        moved.append(source)
        return real_move(source, target)

    monkeypatch.setattr(shutil, "move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        install(merged, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "out"]
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "model.safetensors": "old", "README.md": "old card"}  # fmt: skip

    monkeypatch.setattr(shutil, "move", real_move)
    for name in new:  # the next run's merge (the interrupted one is gone with its temp folder)
        (merged / name).write_text("new")
    install(merged, out)  # the old single file goes, the card stays
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json"]  # fmt: skip
