"""The ablation's pseudo-runs: base model without LoRA, and the real name instead of the trigger token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_lora_workspace

from flux_tui.core import config, results
from flux_tui.core.runs import DONE, KIND_ABLATION, run_dir
from flux_tui.engine import ablation
from flux_tui.engine.imagemeta import read_metadata


@pytest.fixture(scope="module")
def study(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> config.Study:
    return config.load(make_lora_workspace(demo_workspace, tmp_path_factory.mktemp("abl") / "ws", {"exp01": 1}))


def test_the_trigger_token_is_replaced_as_a_whole_word() -> None:
    assert ablation.replace_trigger("cr7man, smiling; portrait of cr7man.", "cr7man", "Buzz Aldrin") == (
        "Buzz Aldrin, smiling; portrait of Buzz Aldrin."
    )
    assert ablation.replace_trigger("cr7manly cr7man2 xcr7man", "cr7man", "B") == "cr7manly cr7man2 xcr7man"


def test_the_plan_names_its_pseudo_runs(study: config.Study, capsys) -> None:
    names = [p.name for p in ablation.plan(study, None, "Buzz Aldrin")]  # default: runs with a LoRA
    assert names == ["ablation-base", "ablation-base-realname", "exp01-realname"]
    # The demo file sets no real_name: without one only the base model is ablated, and it says so.
    assert [p.name for p in ablation.plan(study, ["exp01"], None)] == ["ablation-base"]
    assert "no real name" in capsys.readouterr().out
    with pytest.raises(ablation.AblationError, match="no experiment named nope"):
        ablation.plan(study, ["nope"], "B")


@pytest.mark.slow
def test_ablation_pseudo_runs_are_scored_beside_the_real_runs(study: config.Study, tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "flux_tui.main", "ablation", str(study.file), "--experiments", "exp01",
           "--real-name", "Buzz Aldrin"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    base, base_name, lora_name = (run_dir(study, n) for n in ("ablation-base", "ablation-base-realname", "exp01-realname"))
    for run in (base, base_name, lora_name):
        assert run.kind == KIND_ABLATION and run.status().state == DONE
        assert run.scores()["n_images"] == 4
    assert base.lora_source() is None and lora_name.lora_source() == run_dir(study, "exp01").lora_file
    assert read_metadata(base.eval_images()[0])["loras"] == []
    meta = read_metadata(lora_name.eval_images()[0])
    assert meta["prompt"] == "a photo of Buzz Aldrin" and meta["loras"][0]["path"] == str(lora_name.lora_source())
    assert read_metadata(base.eval_images()[0])["prompt"] == "a photo of cr7man"
    assert all("cr7man" not in p for p in base_name.config()["eval_prompts"])

    # The comparison tables list them beside the real runs, marked as what they are.
    kinds = {r.name: r.kind for r in results.collect(study)}
    assert kinds["exp01"] == "experiment" and kinds["exp01-realname"] == kinds["ablation-base"] == KIND_ABLATION
    recs = {r.name: r for r in results.collect(study)}
    base_rec, realname_rec = recs["ablation-base"], recs["exp01-realname"]
    assert base_rec.number is None and realname_rec.number is None  # not numbered experiments of the study
    assert base_rec.hp("learning_rate") is None and base_rec.hp("lora_rank") is None  # no LoRA: no settings
    assert realname_rec.hp("lora_rank") == study.get("exp01").settings.lora_rank  # exp01's LoRA and settings

    # Nothing changed: a second call keeps what it has.
    stamp = lora_name.scores_json.stat().st_mtime_ns
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("up to date") == 3
    assert lora_name.scores_json.stat().st_mtime_ns == stamp

