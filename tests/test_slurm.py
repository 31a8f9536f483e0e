"""Slurm's low-level layer (flux_tui/core/slurm.py) against a real one-node Slurm (scripts/local-slurm.sh).

Most jobs run a probe instead of the trainer: the script's interpreter is a two-line wrapper that `exec`s
tests' Python on the probe, so the process chain is the real one (slurmstepd -> batch shell -> exec) and the
probe reports what the trainer would see: its arguments, folder, job name, parent, and the signals it gets.
The slow test at the end runs the real trainer on the demo's tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from slurm_helpers import Cluster, cluster_or_skip, wait_for

from flux_tui.core import config, runs, slurm
from flux_tui.core.config import SlurmSettings
from flux_tui.core.runs import CANCELLED, DONE, RunDir
from flux_tui.core.slurm import SlurmError, SlurmMissing

PROBE = """\
import json, os, signal, sys, time
run = sys.argv[-1]
def record(**data):
    tmp = os.path.join(run, ".probe.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, os.path.join(run, "probe.json"))
with open(f"/proc/{os.getppid()}/comm") as fh:
    parent = fh.read().strip()
info = dict(argv=sys.argv[1:], cwd=os.getcwd(), job_name=os.environ.get("SLURM_JOB_NAME"), parent=parent,
            setup=os.environ.get("PROBE_SETUP"), signals=[])
def on_signal(sig, frame):
    info["signals"].append(signal.Signals(sig).name)
    record(**info)
    print("probe: got", signal.Signals(sig).name, "- checkpointing", flush=True)
    sys.exit(128 + sig)
signal.signal(signal.SIGTERM, on_signal)
record(**info)
print("probe: started", flush=True)
time.sleep(float(os.environ.get("PROBE_SECONDS", "0")))
print("probe: finished", flush=True)
"""


@pytest.fixture
def probe_python(tmp_path: Path) -> str:
    """An executable that stands where the script's Python stands and execs tests' Python on the probe."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {probe} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def make_run(root: Path, name: str = "exp01") -> RunDir:
    run = RunDir(root / "runs" / name)
    run.path.mkdir(parents=True)
    return run


def probe_record(run: RunDir) -> dict:
    path = run.path / "probe.json"
    return json.loads(path.read_text()) if path.exists() else {}


def submit(cluster: Cluster, run: RunDir, settings: SlurmSettings, python: str | None = None) -> str:
    """Write the run's batch script and submit it; the job is cancelled after the test."""
    return cluster.track(slurm.submit(slurm.write_batch_script(run, settings, python=python)))


def ended(job_id: str) -> slurm.JobInfo | None:
    info = slurm.query_one(job_id)
    return info if info.ended else None


# -- the batch script (no cluster needed) -----------------------------------------------------------

FULL = SlurmSettings(
    partition="gpu", account="lab", qos="normal", time="4:00:00", gres="gpu:a100:1", cpus_per_task=8,
    mem="64G", constraint="a100|h100", max_jobs=2, sbatch_args=["--exclusive", "--comment=two words"],
    setup=["module load cuda/12.1", "source /opt/venv/bin/activate"],
)  # fmt: skip


def test_the_batch_script_holds_every_setting_runs_the_trainer_then_the_queue_step(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = slurm.write_batch_script(run, FULL, python="/opt/venv/bin/python")
    assert path == run.path / "slurm.sbatch"
    text = path.read_text()
    directives = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert directives == [
        "--job-name=flux-tui/exp01", f"--output={run.train_log}", "--open-mode=append", f"--chdir={run.path}",
        "--signal=B:TERM@120", "--requeue", "--partition=gpu", "--account=lab", "--qos=normal",
        "--time=4:00:00", "--gres=gpu:a100:1", "--cpus-per-task=8", "--mem=64G", "--constraint=a100|h100",
        "--exclusive", '--comment="two words"',
    ]  # fmt: skip
    body = text.splitlines()
    setup_at = body.index("module load cuda/12.1")
    assert body[setup_at + 1] == "source /opt/venv/bin/activate"
    trainer = body.index(f"/opt/venv/bin/python -u -m flux_tui.engine.train {run.path} &")
    assert setup_at < trainer and "set -e" in text.split("module load")[0] and body[trainer - 4] == "set +e"
    # However the script ends, the queue step runs (with flux-tui's own Python, whatever the trainer's), and
    # the job ends as the trainer (or the failing setup line) did.
    tick = f"{sys.executable} -u -m flux_tui.core.slurm_tick {run.path}"
    assert f'    {tick} --pid "${{trainer:-0}}" --exit-code "$1" || true' in body
    assert body.index("trap 'queue_step $?' EXIT") < setup_at and body[-1] == 'exit "$code"'
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_the_signal_comes_two_minutes_before_the_limit_or_in_its_last_quarter() -> None:
    assert slurm.grace_seconds(SlurmSettings()) == 120
    assert slurm.grace_seconds(SlurmSettings(time="8:00:00")) == 120
    assert slurm.grace_seconds(SlurmSettings(time="2")) == 30
    assert slurm.grace_seconds(SlurmSettings(time="0:30")) == 7


def test_a_folder_with_blanks_or_percent_signs_is_quoted_and_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path / "my work 100%")
    text = slurm.batch_script(run, SlurmSettings(gres=""), python="/usr/bin/python3")
    assert f'#SBATCH --output="{tmp_path}/my work 100%%/runs/exp01/train.log"' in text
    assert f'#SBATCH --chdir="{run.path}"' in text
    assert "--gres" not in text
    assert f"\n/usr/bin/python3 -u -m flux_tui.engine.train '{run.path}' &\n" in text


def test_missing_slurm_commands_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Slurm
    assert not slurm.available()
    with pytest.raises(SlurmMissing, match=r"sbatch is not on PATH.*login node"):
        slurm.submit(tmp_path / "slurm.sbatch")
    with pytest.raises(SlurmMissing, match="squeue is not on PATH"):
        slurm.query(["12"])


# -- against the cluster --------------------------------------------------------------------------


def test_a_trivial_batch_job_runs_and_finishes(slurm_cluster: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "hello.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/out.log\necho hello from $SLURM_JOB_ID\n")
    job = slurm_cluster.track(slurm.submit(script))
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert (info.state, info.exit_code, info.signal, info.node) == ("COMPLETED", 0, None, slurm_cluster.node)
    assert (tmp_path / "out.log").read_text() == f"hello from {job}\n"


def test_a_run_job_runs_its_trainer_in_the_run_folder_and_appends_to_its_log(
    slurm_cluster: Cluster, tmp_path: Path, probe_python: str
) -> None:
    run = make_run(tmp_path)
    run.train_log.write_text("an earlier launch\n")
    settings = SlurmSettings(setup="export PROBE_SETUP=yes\necho setup ran")
    job = submit(slurm_cluster, run, settings, probe_python)
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert (info.state, info.exit_code) == ("COMPLETED", 0), run.train_log.read_text()
    probe = probe_record(run)
    assert probe["argv"] == ["-u", "-m", "flux_tui.engine.train", str(run.path)]
    assert probe["cwd"] == str(run.path) and probe["job_name"] == "flux-tui/exp01" and probe["setup"] == "yes"
    assert probe["parent"] == "slurm_script"  # the batch shell: it passes signals on, runs the queue step after
    log = run.train_log.read_text().splitlines()
    assert log[:2] == ["an earlier launch", ""]
    assert log[2].startswith(f"=== slurm job {job} on {slurm_cluster.node}: ")
    assert log[3:] == ["setup ran", "probe: started", "probe: finished"]


def test_a_failing_setup_line_ends_the_job_before_the_trainer(
    slurm_cluster: Cluster, tmp_path: Path, probe_python: str
) -> None:
    run = make_run(tmp_path)
    settings = SlurmSettings(setup=["module-that-is-not-here load cuda", "echo not reached"])
    job = submit(slurm_cluster, run, settings, probe_python)
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert (info.state, info.exit_code) == ("FAILED", 127)
    assert "module-that-is-not-here: command not found" in run.train_log.read_text()
    assert not (run.path / "probe.json").exists()


def test_stop_sends_term_to_the_trainer_which_checkpoints_and_ends_the_job(
    slurm_cluster: Cluster, tmp_path: Path, probe_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_SECONDS", "300")  # sbatch hands the submitter's environment to the job
    run = make_run(tmp_path)
    job = submit(slurm_cluster, run, SlurmSettings(), probe_python)
    wait_for(lambda: probe_record(run), 60, "the probe to start")
    running = slurm.query_one(job)
    assert running.running and running.node == slurm_cluster.node
    assert running.describe() == f"RUNNING on {slurm_cluster.node}"
    assert slurm.cancel(job) is True
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert probe_record(run)["signals"] == ["SIGTERM"]
    # The trainer's own exit code: Slurm cannot tell this from a time-limit stop (see core/slurm.py).
    assert (info.state, info.exit_code, info.signal) == ("FAILED", 143, None)
    assert "probe: got SIGTERM - checkpointing" in run.train_log.read_text()
    assert slurm.cancel(job) is False  # already over


def test_kill_is_slurms_own_cancel(
    slurm_cluster: Cluster, tmp_path: Path, probe_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_SECONDS", "300")
    run = make_run(tmp_path)
    job = submit(slurm_cluster, run, SlurmSettings(), probe_python)
    wait_for(lambda: probe_record(run), 60, "the probe to start")
    assert slurm.cancel(job, kill=True) is True
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert info.state == "CANCELLED"
    # TERM first here too (to every process, so the trainer may get the shell's copy as well), KILL after KillWait
    assert set(probe_record(run)["signals"]) == {"SIGTERM"}


def test_a_pending_job_shows_its_reason_and_cancel_removes_it(slurm_cluster: Cluster, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    settings = SlurmSettings(partition=slurm_cluster.down_partition)
    job = submit(slurm_cluster, run, settings)
    info = wait_for(lambda: (i := slurm.query_one(job)).reason and i, 60, "a pending reason")
    assert info.pending and not info.running and not info.ended
    assert (info.state, info.reason, info.node) == ("PENDING", "PartitionDown", None)
    assert info.describe() == "PENDING (PartitionDown)"
    assert slurm.cancel(job) is True
    info = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert info.state == "CANCELLED"
    assert not run.train_log.exists()  # it never ran


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (SlurmSettings(partition="nope"), "Invalid partition name specified"),
        (SlurmSettings(partition="closed"), "Required partition not available (inactive or drain)"),
        (SlurmSettings(gres="gpu:99"), "Requested node configuration is not available"),
        (SlurmSettings(mem="900000G"), "Memory specification can not be satisfied"),
    ],
    ids=["unknown-partition", "closed-partition", "too-many-gpus", "too-much-memory"],
)
def test_a_refused_job_raises_slurms_words(
    slurm_cluster: Cluster, tmp_path: Path, settings: SlurmSettings, words: str
) -> None:
    run = make_run(tmp_path)
    with pytest.raises(SlurmError) as info:
        slurm.submit(slurm.write_batch_script(run, settings))
    message = str(info.value)
    assert message.startswith("Slurm refused the job: ") and words in message
    assert "sbatch: error" not in message and "Traceback" not in message and "\n" not in message


def test_jobs_slurm_does_not_know_are_reported_unknown(slurm_cluster: Cluster) -> None:
    info = slurm.query_one("987654")
    assert (info.known, info.pending, info.running, info.ended) == (False, False, False, False)
    assert slurm.cancel("987654") is False
    with pytest.raises(ValueError, match="not a Slurm job id"):
        slurm.query(["12; rm -rf /"])


def test_a_controller_that_does_not_answer_is_an_error_not_an_unknown_job(
    slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    elsewhere = tmp_path / "slurm.conf"  # the same cluster, but its controller on a port nobody listens on
    elsewhere.write_text(conf + "\nSlurmctldPort=6899\nMessageTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(elsewhere))
    with pytest.raises(SlurmError, match=r"^squeue failed: .*Unable to contact slurm controller"):
        slurm.query(["1"])
    with pytest.raises(SlurmError, match=r"^sbatch failed: Unable to contact slurm controller"):
        slurm.submit(slurm.write_batch_script(make_run(tmp_path), SlurmSettings()))


def test_a_finished_job_is_still_found_once_squeue_has_forgotten_it(
    slurm_cluster: Cluster, tmp_path: Path
) -> None:
    script = tmp_path / "fail.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/out.log\nexit 3\n")
    job = slurm_cluster.track(slurm.submit(script))
    from_squeue = wait_for(lambda: ended(job), 60, f"job {job} to end")
    assert (from_squeue.source, from_squeue.state, from_squeue.exit_code) == ("squeue", "FAILED", 3)
    # squeue forgets a job MinJobAge after it ends (30 s on the local cluster): ask the accounting directly.
    from_sacct = wait_for(lambda: slurm._sacct([job]).get(job), 60, "the job in sacct")
    assert from_sacct.source.startswith("sacct")
    assert (from_sacct.state, from_sacct.exit_code, from_sacct.node) == ("FAILED", 3, slurm_cluster.node)


@pytest.mark.slow
def test_a_short_time_limit_signals_the_trainer_before_the_end(
    slurm_cluster: Cluster, tmp_path: Path, probe_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One minute (Slurm's smallest limit), a grace of a quarter of it: TERM comes 15 s before the limit or up
    to a minute earlier (the controller checks limits every 30 s or so), never after."""
    monkeypatch.setenv("PROBE_SECONDS", "300")
    run = make_run(tmp_path)
    script = slurm.write_batch_script(run, SlurmSettings(time="1"), python=probe_python)
    assert "#SBATCH --signal=B:TERM@15" in script.read_text()
    job = slurm_cluster.track(slurm.submit(script))
    info = wait_for(lambda: ended(job), 120, f"job {job} to end")
    assert probe_record(run)["signals"] == ["SIGTERM"]
    assert (info.state, info.exit_code) == ("FAILED", 143)  # it ended itself: not TIMEOUT


# -- the real trainer ------------------------------------------------------------------------------

STUDY = """\
[workspace]
executor = "slurm"

[slurm]
sbatch_args = ["--export=ALL,FLUX_TUI_FAULT=step_delay:0.4"]

[defaults]
base_model = "models/tiny-flux"
clip_model = "models/tiny-clip"
face_weights = "weights/vggface2-standin.pt"
eval_prompts = ["a photo of cr7man"]
gradient_checkpointing = false
resolution = 64
lora_rank = 4
max_train_steps = 10
mixed_precision = "no"
max_sequence_length = 32
checkpointing_steps = 100
sample_every = 0
num_inference_steps = 2
guidance_scales = [3.5]

[[experiment]]
name = "onslurm"
"""


@pytest.mark.slow
def test_the_real_trainer_stops_on_slurm_with_a_checkpoint_and_a_resubmission_finishes(
    slurm_cluster: Cluster, demo_workspace: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    for part in ("models", "photos", "weights"):
        shutil.copytree(demo_workspace / part, root / part, symlinks=True)
    (root / "experiments.toml").write_text(textwrap.dedent(STUDY))
    study = config.load(root / "experiments.toml")
    run = runs.prepare(study, study.get("onslurm"))
    script = slurm.write_batch_script(run, study.slurm)

    job = slurm_cluster.track(slurm.submit(script))
    wait_for(lambda: any(e.get("step", 0) >= 2 for e in run.iter_events("step")), 240, "step 2")
    # Whoever stops a run records that it asked (as `flux-tui stop` does): else the job's queue step takes
    # the TERM for the time limit's and resubmits the run (tests/test_slurm_executor.py).
    run.write_status(stop_signal="SIGTERM")
    assert slurm.cancel(job) is True
    info = wait_for(lambda: ended(job), 120, f"job {job} to end")
    assert (info.state, info.exit_code) == ("FAILED", 143), run.train_log.read_text()
    status = run.status()
    assert status.state == CANCELLED and "SIGTERM" in status.message, status
    stopped_at = max(e["step"] for e in run.iter_events("step"))
    assert run.latest_checkpoint() is not None and run.latest_checkpoint().name == f"checkpoint-{stopped_at}"

    # The same script, submitted again (as a user would by hand), resumes from the checkpoint and finishes.
    again = slurm_cluster.track(slurm.submit(script))
    info = wait_for(lambda: ended(again), 400, f"job {again} to end")
    assert (info.state, info.exit_code) == ("COMPLETED", 0), run.train_log.read_text()
    assert [e["step"] for e in run.iter_events("resume")] == [stopped_at]
    assert run.status().state == DONE and run.scores_json.exists()
    assert run.train_log.read_text().count("=== slurm job ") == 2


def test_without_slurm_the_tests_skip_naming_the_script_and_fail_on_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no sbatch
    monkeypatch.delenv("FLUX_TUI_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"install slurm-wlm munge; start it with `scripts/local-slurm.sh start`"):
        cluster_or_skip()
    # .ci/run sets FLUX_TUI_REQUIRE_SLURM=1 once its cluster is up: a cluster that went away then fails.
    monkeypatch.setenv("FLUX_TUI_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="FLUX_TUI_REQUIRE_SLURM=1 but Slurm is not installed"):
        cluster_or_skip()
