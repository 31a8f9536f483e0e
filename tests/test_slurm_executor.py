"""The Slurm executor (flux_tui/core/slurm_executor.py) against a real one-node Slurm (scripts/local-slurm.sh):
`flux-tui submit`/`status`/`stop` and the dashboard on a workspace with `executor = "slurm"`.

Every job is a real batch job running the real batch script, whose queue step (core/slurm_tick.py) advances
the queue from inside the job. Most tests run the stand-in trainer (tests/standin_trainer.py, through launch's
FLUX_TUI_TRAINER switch, which sbatch hands to the job with the rest of the environment): it speaks the
trainer's folder protocol in a second. The slow tests at the end run the real trainer on the demo's tiny model.
Without a cluster every test here skips (the `slurm_cluster` fixture says how to start one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_helpers import Cluster, wait_for
from tui_helpers import FixedTelemetry

from flux_tui.core import config, slurm
from flux_tui.core.runs import CANCELLED, DONE, FAILED, NEW, QUEUED, RUNNING, RunDir
from flux_tui.core.scheduler import Scheduler

STANDIN = Path(__file__).with_name("standin_trainer.py").resolve()

STUDY = """\
[workspace]
executor = "slurm"

[slurm]
gres = ""
{slurm}

[defaults]
data_dir = "photos"
resolution = 64
max_train_steps = 20
"""


def make_study(root: Path, names: list[str], slurm_lines: str = "") -> config.Study:
    root.mkdir(parents=True)
    (root / "photos").mkdir()
    rows = "".join(f'\n[[experiment]]\nname = "{n}"\nlora_rank = {4 + i}\n' for i, n in enumerate(names))
    (root / "experiments.toml").write_text(STUDY.format(slurm=slurm_lines) + rows)
    return config.load(root / "experiments.toml")


def cli(study: config.Study, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`flux-tui ARGS -f FILE` with the stand-in trainer (the jobs it submits inherit this environment)."""
    extra = {"FLUX_TUI_TRAINER": str(STANDIN), "STANDIN_STEPS": "20", "STANDIN_SLEEP": "0.05", **env}
    return subprocess.run([sys.executable, "-m", "flux_tui", *args, "-f", str(study.file)], cwd=study.file.parent,
                          capture_output=True, text=True, timeout=180, env={**os.environ, **extra})  # fmt: skip


def run_of(study: config.Study, name: str) -> RunDir:
    return RunDir(study.workspace.runs_dir / name)


def submitted_pending(root: Path, cluster: Cluster) -> tuple[config.Study, RunDir, str]:
    """A one-run study ("a") submitted to the cluster's down partition: its job waits (PartitionDown)."""
    study = make_study(root, ["a"], f'partition = "{cluster.down_partition}"')
    assert cli(study, "submit", "a").returncode == 0
    run = run_of(study, "a")
    return study, run, run.status().job_id


def jobs_under(root: Path, *, every_state: bool = False) -> list[dict[str, str]]:
    """The jobs whose folder is under `root` as squeue lists them now: id, name, state, reason."""
    cmd = ["squeue", "--noheader", "--Format=JobID:|,Name:|,State:|,Reason:|,WorkDir:|"]
    out = subprocess.run(cmd + (["--states=all"] if every_state else []), capture_output=True, text=True,
                         timeout=30).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line.count("|") >= 5]
    keys = ("id", "name", "state", "reason")
    return [dict(zip(keys, (c.strip() for c in r[:4]), strict=True)) for r in rows if r[4].startswith(str(root))]


def job_ended(job: str) -> slurm.JobInfo | None:
    info = slurm.query_one(job)
    return info if info.ended else None


def jobs_in_log(run: RunDir) -> list[str]:
    return re.findall(r"^=== slurm job (\d+) on ", run.train_log.read_text(), re.M)


@pytest.fixture
def slurm_root(slurm_cluster: Cluster, tmp_path: Path) -> Iterator[Path]:
    """A folder for the test's workspace; afterwards nothing queued is left to submit and its jobs are gone."""
    root = tmp_path / "ws"
    yield root
    runs_dir = root / "runs"
    for _ in range(5):  # a job's queue step may submit the next run while we clean up: until none is left
        if runs_dir.is_dir():
            for folder in runs_dir.iterdir():
                run = RunDir(folder)
                if folder.is_dir() and run.status().state == QUEUED:
                    run.write_status(state=NEW)
        jobs = [j["id"] for j in jobs_under(root)]
        if not jobs:
            break
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
        wait_for(lambda: not jobs_under(root), 60, "the test's jobs to end")


class JobSampler(threading.Thread):
    """Samples squeue for the sweep's jobs until stopped: what Slurm held at each moment."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.samples, self.halt = root, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append(jobs_under(self.root))
            self.halt.wait(0.2)

    def active(self) -> list[list[str]]:
        """Per sample, the jobs that were running or waiting for a node (not for another job to end)."""
        busy = slurm.RUNNING_STATES - {"COMPLETING"}
        return [[j["id"] for j in s if j["state"] in busy or j["state"] == "PENDING" and j["reason"] != "Dependency"]
                for s in self.samples]  # fmt: skip


# -- submit, status: one job per run, max_jobs, the queue advancing from the jobs -------------------------


def test_submit_all_sends_each_run_as_one_job_and_the_jobs_advance_the_queue_within_max_jobs(
    slurm_root: Path,
) -> None:
    study = make_study(slurm_root, ["a", "b", "c"], "max_jobs = 1")
    sampler = JobSampler(slurm_root)
    sampler.start()
    out = cli(study, "submit", "--all")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    first = run_of(study, "a").status().job_id
    assert lines[:3] == [f"a submitted to Slurm as job {first}", "b queued: waits for a free slot",
                         "c queued: waits for a free slot"]  # fmt: skip
    # Nobody else is looking: each job's queue step submits the next run.
    wait_for(lambda: all(run_of(study, n).status().state == DONE for n in study.names), 120, "the sweep")
    sampler.halt.set()
    sampler.join()
    jobs = [run_of(study, n).status().job_id for n in study.names]
    assert len(set(jobs)) == 3 and all(j and j.isdigit() for j in jobs)
    for name, job in zip(study.names, jobs, strict=True):
        assert jobs_in_log(run_of(study, name)) == [job]  # one job per run, the one status.json names
        info = wait_for(lambda j=job: job_ended(j), 60, f"job {job} to end")
        assert (info.state, info.exit_code) == ("COMPLETED", 0)
    # Never more than max_jobs = 1 of the sweep's jobs running or waiting for a node; each seen by squeue.
    assert max(len(s) for s in sampler.active()) == 1
    assert {j for s in sampler.active() for j in s} == set(jobs)
    log = run_of(study, "a").train_log.read_text()
    assert f"submitted b as Slurm job {jobs[1]}" in log  # from a's job, on the node

    status = cli(study, "status")
    row = {line.split()[1]: line for line in status.stdout.splitlines()[1:4]}
    assert all(f"job {j}" in row[n] and "done" in row[n] for n, j in zip(study.names, jobs, strict=True))
    js = {r["name"]: r for r in json.loads(cli(study, "status", "--json").stdout)}
    assert js["c"]["job_id"] == jobs[2] and js["c"]["executor"] == "slurm"


def test_a_pending_job_shows_slurms_reason_and_stop_takes_it_off_slurms_queue(
    slurm_root: Path, slurm_cluster: Cluster
) -> None:
    study, run, job = submitted_pending(slurm_root, slurm_cluster)
    row = wait_for(lambda: (r := json.loads(cli(study, "status", "--json").stdout)[0])["job_reason"] and r, 60,
                   "the pending reason")  # fmt: skip
    assert (row["state"], row["job_id"], row["job_state"], row["job_reason"]) == (
        QUEUED, job, "PENDING", "PartitionDown")  # fmt: skip
    assert row["message"] == f"Slurm job {job} is PENDING (PartitionDown)"
    text = cli(study, "status").stdout.splitlines()[1]
    assert f"job {job}" in text and "PENDING (PartitionDown)" in text

    out = cli(study, "stop", "a")
    assert out.returncode == 0 and f"a: Slurm job {job} taken off Slurm's queue (back to new)" in out.stdout
    st = run.status()
    assert (st.state, st.job_id, st.stop_signal) == (NEW, None, None)
    assert wait_for(lambda: job_ended(job), 60, "the job to end").state == "CANCELLED"
    assert not run.train_log.exists() or not jobs_in_log(run)  # it never ran


def test_a_run_whose_job_waits_in_slurms_queue_is_not_reset_until_it_is_taken_off(
    slurm_root: Path, slurm_cluster: Cluster
) -> None:
    study, run, job = submitted_pending(slurm_root, slurm_cluster)
    refused = cli(study, "reset", "a")
    assert refused.returncode != 0
    assert f"a is waiting in the batch queue as job {job}: take it off the queue first" in refused.stderr
    assert run.status().job_id == job and [j["id"] for j in jobs_under(slurm_root)] == [job]  # nothing moved

    assert cli(study, "stop", "a").returncode == 0
    wait_for(lambda: job_ended(job), 60, "the job to end")
    done = cli(study, "reset", "a")
    assert done.returncode == 0, done.stderr
    assert not run.path.exists() and any((study.workspace.runs_dir / ".old").iterdir())


def test_a_live_job_of_the_run_that_status_json_does_not_name_is_taken_not_doubled(
    slurm_root: Path, slurm_cluster: Cluster
) -> None:
    """As a queue step killed right after its sbatch leaves it (or the script submitted by hand)."""
    study = make_study(slurm_root, ["a"], f'partition = "{slurm_cluster.down_partition}"')
    scheduler = Scheduler(study)
    assert scheduler.enqueue(["a"])[0].ok
    run = run_of(study, "a")
    by_hand = slurm.submit(slurm.write_batch_script(run, study.slurm))
    assert scheduler.tick() == ["a"]
    assert run.status().job_id == by_hand and [j["id"] for j in jobs_under(slurm_root)] == [by_hand]


def test_an_invalid_partition_fails_the_runs_with_slurms_words_and_disturbs_nothing_else(
    slurm_root: Path,
) -> None:
    study = make_study(slurm_root, ["a", "b", "c"], 'partition = "nope"')
    done = run_of(study, "c")
    done.path.mkdir(parents=True)
    done.write_status(state=DONE, message="trained and evaluated")
    out = cli(study, "submit", "a", "b")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    words = "Slurm refused the job: invalid partition specified: nope; Invalid partition name specified"
    for name in ("a", "b"):
        assert f"{name} failed to start: {words}\n" in out.stderr
        st = run_of(study, name).status()
        assert (st.state, st.message, st.job_id) == (FAILED, words, None)
    assert done.status().state == DONE and not jobs_under(slurm_root, every_state=True)
    assert cli(study, "status").returncode == 0


def test_when_the_controller_does_not_answer_the_queue_waits_and_nothing_is_failed(
    slurm_root: Path, tmp_path: Path
) -> None:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    elsewhere = tmp_path / "slurm.conf"  # the same cluster, but its controller on a port nobody listens on
    elsewhere.write_text(conf + "\nSlurmctldPort=6899\nMessageTimeout=1\n")
    study = make_study(slurm_root, ["a"])
    out = cli(study, "submit", "a", SLURM_CONF=str(elsewhere))
    assert out.returncode == 0 and "Traceback" not in out.stderr
    st = run_of(study, "a").status()
    assert st.state == QUEUED and st.job_id is None
    # (squeue, asked first whether the run already has a job, is the command that finds no controller)
    assert re.match(r"waiting: (squeue|sbatch) failed: .*Unable to contact slurm controller", st.message)
    assert f"a queued: {st.message}" in out.stdout
    # Back on the real controller, the next tick submits it.
    assert cli(study, "submit", "a").returncode == 0
    assert wait_for(lambda: run_of(study, "a").status().state == DONE, 60, "the run")


# -- stopping: ours, an admin's, and a setup line that fails ---------------------------------------------


def test_stop_sends_term_the_run_ends_cancelled_is_not_resubmitted_and_submit_resumes_it(
    slurm_root: Path,
) -> None:
    study = make_study(slurm_root, ["a"])
    slow = {"STANDIN_STEPS": "60", "STANDIN_SLEEP": "0.1"}
    assert cli(study, "submit", "a", **slow).returncode == 0
    run = run_of(study, "a")
    job = run.status().job_id
    wait_for(lambda: len(list(run.iter_events("step"))) >= 3, 60, "step 3")
    out = cli(study, "stop", "a")
    assert out.returncode == 0 and f"sent SIGTERM to a (Slurm job {job} on " in out.stdout, out
    info = wait_for(lambda: job_ended(job), 60, f"job {job} to end")
    assert (info.state, info.exit_code) == ("FAILED", 143)  # as a time-limit stop would: hence stop_signal
    st = run.status()
    assert (st.state, st.stop_signal) == (CANCELLED, "SIGTERM") and "stopped by SIGTERM" in st.message
    assert run.latest_checkpoint() is not None
    assert jobs_in_log(run) == [job] and cli(study, "status").returncode == 0
    assert run.status().state == CANCELLED  # its queue step saw our stop: not resubmitted

    assert cli(study, "submit", "a", **slow).returncode == 0
    again = run.status().job_id
    assert again != job
    st = wait_for(lambda: (s := run.status()).state == DONE and s, 60, "the resumed run")
    assert jobs_in_log(run) == [job, again] and st.job_id == again
    steps = [e["step"] for e in run.iter_events("step")]
    assert steps == list(range(1, 61))  # the stand-in carries on from its last step


def test_kill_is_slurms_cancel_and_the_run_ends_cancelled(slurm_root: Path) -> None:
    study = make_study(slurm_root, ["a"])
    assert cli(study, "submit", "a", STANDIN_STEPS="600", STANDIN_SLEEP="0.1").returncode == 0
    run = run_of(study, "a")
    job = run.status().job_id
    wait_for(lambda: list(run.iter_events("step")), 60, "a step")
    out = cli(study, "stop", "a", "--kill")
    assert out.returncode == 0 and f"cancelled a's Slurm job {job}" in out.stdout
    assert wait_for(lambda: job_ended(job), 60, "the job to end").state == "CANCELLED"
    st = wait_for(lambda: (s := run.status()).state != RUNNING and s, 60, "the run's end")
    assert (st.state, st.stop_signal) == (CANCELLED, "SIGKILL")
    cli(study, "status")
    assert run.status().state == CANCELLED and jobs_in_log(run) == [job]


def test_a_job_cancelled_outside_flux_tui_is_cancelled_and_not_resubmitted(slurm_root: Path) -> None:
    study = make_study(slurm_root, ["a"])
    assert cli(study, "submit", "a", STANDIN_STEPS="600", STANDIN_SLEEP="0.1").returncode == 0
    run = run_of(study, "a")
    job = run.status().job_id
    wait_for(lambda: list(run.iter_events("step")), 60, "a step")
    subprocess.run(["scancel", job], check=True, timeout=30)  # an admin's (or the user's own) scancel
    wait_for(lambda: job_ended(job), 60, "the job to end")
    cli(study, "status")  # whoever looks next settles it, if its queue step could not
    st = run.status()
    assert st.state == CANCELLED and st.stop_signal is None, st
    assert f"its Slurm job {job} was cancelled" in st.message or "cancelled outside flux-tui" in st.message
    assert jobs_in_log(run) == [job] and not jobs_under(slurm_root)


def test_a_pending_job_cancelled_outside_flux_tui_leaves_the_run_cancelled_not_queued(
    slurm_root: Path, slurm_cluster: Cluster
) -> None:
    """The job never ran, so no queue step: whoever looks next learns it from Slurm."""
    study, run, job = submitted_pending(slurm_root, slurm_cluster)
    subprocess.run(["scancel", job], check=True, timeout=30)
    wait_for(lambda: job_ended(job), 60, "the job to end")
    row = json.loads(cli(study, "status", "--json").stdout)[0]
    assert (row["state"], row["job_id"]) == (CANCELLED, job)
    assert row["message"] == f"Slurm job {job} was cancelled before its trainer started (scancel outside flux-tui)"


def test_a_job_that_ends_before_its_trainer_starts_fails_the_run_and_the_queue_goes_on(slurm_root: Path) -> None:
    study = make_study(slurm_root, ["a", "b"], 'max_jobs = 1\nsetup = "no-such-module-command load cuda"')
    assert cli(study, "submit", "--all").returncode == 0
    a, b = run_of(study, "a"), run_of(study, "b")
    st = wait_for(lambda: (s := a.status()).state == FAILED and s, 60, "a to fail")
    assert st.message.startswith(f"Slurm job {st.job_id} ended before its trainer started: its setup lines exited")
    assert "no-such-module-command: command not found" in a.train_log.read_text()
    # Its job's queue step went on to b (which fails the same way: the setup is the sweep's).
    assert wait_for(lambda: b.status().state == FAILED, 60, "b to fail")
    assert b.status().job_id != st.job_id


# -- the time limit: checkpoint, resubmit, resume, until done; not forever ----------------------------------


def test_a_run_longer_than_its_time_limit_is_resubmitted_until_done(slurm_root: Path) -> None:
    """`time = "1"`: Slurm signals at its first time-limit check (within ~30 s); the stand-in checkpoints, the
    job's queue step resubmits the run, the next job resumes it, until it is done. The stand-in needs longer
    than the latest that signal can come (the limit less its 15 s grace, plus one 30 s check: 75 s), or one
    job may finish it before any signal."""
    steps = 900  # 0.1 s each: 90 s
    study = make_study(slurm_root, ["a"], 'time = "1"')
    assert cli(study, "submit", "a", STANDIN_STEPS=str(steps), STANDIN_SLEEP="0.1").returncode == 0
    run = run_of(study, "a")
    st = wait_for(lambda: (s := run.status()).state in (DONE, FAILED) and s, 600, "the run to finish")
    assert st.state == DONE, (st, run.train_log.read_text()[-3000:])
    jobs = jobs_in_log(run)
    assert len(jobs) >= 2 and len(set(jobs)) == len(jobs) and st.job_id == jobs[-1]
    log = run.train_log.read_text()
    for stopped, nxt in zip(jobs, jobs[1:], strict=False):
        info = wait_for(lambda j=stopped: job_ended(j), 60, f"job {stopped} to end")
        assert (info.state, info.exit_code) == ("FAILED", 143)  # stopped by the TERM before the limit
        assert f"=== slurm job {stopped} " in log and f"submitted a (again, to resume) as Slurm job {nxt}" in log
    assert [e["step"] for e in run.iter_events("step")] == list(range(1, steps + 1))


def test_a_run_stopped_by_its_time_limit_before_any_checkpoint_is_not_resubmitted(slurm_root: Path) -> None:
    study = make_study(slurm_root, ["a"], 'time = "1"')
    env = {"STANDIN_STEPS": "1000", "STANDIN_SLEEP": "0.1", "STANDIN_NO_CHECKPOINT": "1"}
    assert cli(study, "submit", "a", **env).returncode == 0
    run = run_of(study, "a")
    job = run.status().job_id
    wait_for(lambda: job_ended(job), 120, f"job {job} to end")
    cli(study, "status")
    st = run.status()
    assert st.state == CANCELLED and st.job_id == job, st
    assert "without getting further than its last job (it has no checkpoint yet): not resubmitted" in st.message
    assert "raise [slurm] time" in st.message
    assert jobs_in_log(run) == [job] and not jobs_under(slurm_root)


# -- the dashboard on a Slurm workspace --------------------------------------------------------------------


async def test_the_dashboard_shows_a_pending_job_with_its_reason_and_x_takes_it_off(
    slurm_root: Path, slurm_cluster: Cluster
) -> None:
    from tui_helpers import until

    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.widgets.gauges import GaugesPanel
    from flux_tui.tui.widgets.matrix import MatrixTable

    study = make_study(slurm_root, ["a", "b"], f'partition = "{slurm_cluster.down_partition}"\nmax_jobs = 1')
    Scheduler(study).queue_all()
    app = FluxApp(study, telemetry=FixedTelemetry(), interval=0.05, status_every=0.05, tick_every=0.2,
                  telemetry_every=0.2)  # fmt: skip
    async with app.run_test(size=(160, 45)) as pilot:
        table = app.screen.query_one(MatrixTable)
        a = run_of(study, "a")

        def cell(name: str, column: str) -> str:
            return str(table.get_cell(name, column))

        await until(pilot, lambda: cell("a", "state") == "PD PartitionDown", 60, "a pending in Slurm")
        job = a.status().job_id
        assert cell("a", "progress") == f"job {job}" and job in [j["id"] for j in jobs_under(slurm_root)]
        assert cell("b", "state") == "queued" and cell("b", "progress") == "queue #1"  # max_jobs = 1
        gauges = str(app.screen.query_one(GaugesPanel).render())
        assert "the runs train on the cluster; none is running now" in gauges
        assert "runs train on the CPU" not in gauges

        table.select("a")
        await pilot.press("x")
        await until(pilot, lambda: a.status().state == NEW, 60, "a taken off Slurm's queue")
        assert wait_for(lambda: job_ended(job), 60, "the job to end").state == "CANCELLED"
        await until(pilot, lambda: cell("a", "state") == "new", 60, "the matrix to follow")
        # Its slot is free: the dashboard's queue submits b.
        await until(pilot, lambda: cell("b", "state") == "PD PartitionDown", 60, "b submitted")
        Scheduler(study).stop("b")


async def test_the_gauges_show_running_jobs_node_and_gpu_memory_from_their_events(tmp_path: Path) -> None:
    """No cluster needed: a run folder as a Slurm job's trainer leaves it on its node."""
    from tui_helpers import until

    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.widgets.gauges import GaugesPanel

    study = make_study(tmp_path / "ws", ["a"])
    run = run_of(study, "a")
    run.path.mkdir(parents=True)
    run.write_status(state=RUNNING, stage="train", executor="slurm", job_id="4242", host="gpu-node7",
                     device="cuda:0", job_state="RUNNING")  # fmt: skip
    run.append_event("step", step=3, total=20, loss=0.5, mem_allocated=20 * 2**30, mem_peak=21 * 2**30)
    app = FluxApp(study, telemetry=FixedTelemetry(), run_queue=False, interval=0.05, status_every=0.05,
                  telemetry_every=0.1)  # fmt: skip
    async with app.run_test(size=(160, 45)) as pilot:
        panel = app.screen.query_one(GaugesPanel)
        text = await until(pilot, lambda: "job 4242" in str(panel.render()) and str(panel.render()), 10)
        assert "the runs train on the cluster: a (job 4242 on gpu-node7 cuda:0, peak 21.0 GiB)" in text
        assert "No NVIDIA GPU on this machine" in text and "runs train on the CPU" not in text


# -- the real trainer (the demo's tiny model) ----------------------------------------------------------------

DEMO = """\
[workspace]
executor = "slurm"

[slurm]
gres = ""
{slurm}

[defaults]
base_model = "models/tiny-flux"
clip_model = "models/tiny-clip"
face_weights = "weights/vggface2-standin.pt"
data_dir = "photos"
instance_prompt = "a photo of cr7man"
resolution = 64
learning_rate = 1e-3
lora_rank = 4
max_train_steps = {steps}
max_sequence_length = 32
checkpointing_steps = 100
sample_every = 0
eval_prompts = ["a photo of cr7man"]
images_per_prompt = 1
num_inference_steps = 2
"""


def demo_study(demo: Path, root: Path, names: list[str], steps: int, slurm_lines: str = "") -> config.Study:
    root.mkdir(parents=True)
    for part in ("models", "weights", "photos"):
        (root / part).symlink_to(demo / part)
    rows = "".join(f'\n[[experiment]]\nname = "{n}"\nlora_rank = {4 + i}\n' for i, n in enumerate(names))
    (root / "experiments.toml").write_text(DEMO.format(slurm=slurm_lines, steps=steps) + rows)
    return config.load(root / "experiments.toml")


def real_cli(study: config.Study, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "FLUX_TUI_TRAINER"}
    return subprocess.run([sys.executable, "-m", "flux_tui", *args, "-f", str(study.file)], cwd=study.file.parent,
                          capture_output=True, text=True, timeout=180, env={**clean, **env})  # fmt: skip


@pytest.mark.slow
def test_the_real_sweep_on_slurm_ends_done_with_scores_one_job_at_a_time(
    slurm_root: Path, demo_workspace: Path
) -> None:
    study = demo_study(demo_workspace, slurm_root, ["r1", "r2"], steps=3, slurm_lines="max_jobs = 1")
    sampler = JobSampler(slurm_root)
    sampler.start()
    out = real_cli(study, "submit", "--all")
    assert out.returncode == 0, out.stderr
    assert shutil.which("sbatch") and "r1 submitted to Slurm as job" in out.stdout
    wait_for(lambda: all(run_of(study, n).status().state in (DONE, FAILED) for n in study.names), 900, "the sweep")
    sampler.halt.set()
    sampler.join()
    for name in study.names:
        run = run_of(study, name)
        st = run.status()
        assert st.state == DONE and run.scores() is not None, (st, run.train_log.read_text()[-3000:])
        assert jobs_in_log(run) == [st.job_id]
        info = wait_for(lambda j=st.job_id: job_ended(j), 60, "the job in Slurm's records")
        assert (info.state, info.exit_code) == ("COMPLETED", 0)
    assert max(len(s) for s in sampler.active()) == 1


@pytest.mark.slow
def test_the_real_trainer_stopped_on_slurm_checkpoints_and_a_second_submit_resumes_it(
    slurm_root: Path, demo_workspace: Path
) -> None:
    study = demo_study(demo_workspace, slurm_root, ["r1"], steps=8)
    delay = {"FLUX_TUI_FAULT": "step_delay:1.5"}
    assert real_cli(study, "submit", "r1", **delay).returncode == 0
    run = run_of(study, "r1")
    wait_for(lambda: any(e.get("step", 0) >= 2 for e in run.iter_events("step")), 600, "step 2")
    out = real_cli(study, "stop", "r1")
    assert out.returncode == 0 and "it saves a checkpoint, then stops" in out.stdout
    st = wait_for(lambda: (s := run.status()).state != RUNNING and s, 120, "the stop")
    assert st.state == CANCELLED and st.stop_signal == "SIGTERM", (st, run.train_log.read_text()[-3000:])
    stopped_at = max(e["step"] for e in run.iter_events("step"))
    assert run.latest_checkpoint() is not None and run.latest_checkpoint().name == f"checkpoint-{stopped_at}"
    wait_for(lambda: job_ended(st.job_id), 60, "the job to end")
    assert run.status().state == CANCELLED  # not resubmitted

    assert real_cli(study, "submit", "r1").returncode == 0
    st = wait_for(lambda: (s := run.status()).state in (DONE, FAILED) and s, 600, "the resumed run")
    assert st.state == DONE and run.scores() is not None, run.train_log.read_text()[-3000:]
    assert [e["step"] for e in run.iter_events("resume")] == [stopped_at]
    assert len(jobs_in_log(run)) == 2


@pytest.mark.slow
def test_the_real_trainer_stopped_by_its_time_limit_is_resubmitted_and_resumes_to_done(
    slurm_root: Path, demo_workspace: Path
) -> None:
    """The job's time limit is cut short while it trains (`scontrol update TimeLimit`, as a user may do to
    their own job): Slurm's TERM before the limit (--signal=B:TERM) comes within its next check (~30 s),
    whatever this machine's speed. The trainer checkpoints, the job's own queue step resubmits the run
    (nobody else is looking), and the next job resumes it to done."""
    study = demo_study(demo_workspace, slurm_root, ["r1"], steps=16, slurm_lines='time = "10"')
    assert real_cli(study, "submit", "r1", FLUX_TUI_FAULT="step_delay:3").returncode == 0
    run = run_of(study, "r1")
    first = run.status().job_id
    wait_for(lambda: list(run.iter_events("step")), 600, "step 1")
    elapsed = subprocess.run(["squeue", "--noheader", "-j", first, "-O", "TimeUsed"], capture_output=True,
                             text=True, timeout=30).stdout.strip()  # fmt: skip
    minutes = sum(int(x) * m for x, m in zip(reversed(elapsed.split(":")), (1 / 60, 1, 60), strict=False))
    limit = int(minutes) + 2  # ends in 1 to 2 minutes: inside the 120 s grace + Slurm's ~60 s
    subprocess.run(["scontrol", "update", f"JobId={first}", f"TimeLimit={limit}"], check=True, timeout=30)
    st = wait_for(lambda: (s := run.status()).state in (DONE, FAILED) and s, 900, "the run to finish")
    log = run.train_log.read_text()
    assert st.state == DONE and run.scores() is not None, log[-3000:]
    jobs = jobs_in_log(run)
    assert jobs[0] == first and len(jobs) == 2 and st.job_id == jobs[1]
    info = wait_for(lambda: job_ended(first), 60, "the first job to end")
    assert (info.state, info.exit_code) == ("FAILED", 143)  # the trainer stopped itself on the TERM
    resumed = [e["step"] for e in run.iter_events("resume")]
    assert len(resumed) == 1 and 1 <= resumed[0] < 16
    assert f"submitted r1 (again, to resume) as Slurm job {jobs[1]}" in log
