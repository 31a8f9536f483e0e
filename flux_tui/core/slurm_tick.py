"""The last step of a run's Slurm batch script, on the compute node, once the trainer has ended (no torch):

    python -m flux_tui.core.slurm_tick RUN_DIR --pid PID --exit-code CODE

1. records how the trainer ended when it could not itself (killed by SIGKILL: Slurm's memory limit, ...);
2. ticks the sweep's queue, reading the study file afresh, with the Slurm executor knowing that this job is
   ending: a run its time limit stopped is queued again and resubmitted (it resumes from its checkpoint),
   and the next queued runs are submitted while `[slurm] max_jobs` allows, each waiting for this job to end
   (`--dependency=afterany`). So the queue advances with nobody logged in: compute nodes see the shared
   filesystem and may run sbatch, even where they cannot reach the login node.
It never fails the job: what goes wrong is said in train.log (the job's output) and the queue waits for the
next tick (a dashboard, `flux-tui submit`, another run's job). Stop signals are ignored: the trainer they
were meant for has ended.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from flux_tui.core import config, launch
from flux_tui.core.executor import LOCAL, SLURM, name_for_new_runs
from flux_tui.core.runs import FAILED, QUEUED, RUNNING, RunDir, Status
from flux_tui.core.supervisor import describe_exit


def _say(message: str) -> None:
    print(
        f"=== slurm job {os.environ.get('SLURM_JOB_ID', '?')} {time.strftime('%H:%M:%S')}: {message}",
        flush=True,
    )


def record_end(run: RunDir, job: str | None, pid: int, code: int) -> Status:
    """Record how the trainer `pid` ended (`code`: the shell's exit status, 128+N for signal N) unless it
    did itself; a run whose trainer never marked it started (queued, or `starting`) is this job's too."""
    with launch.run_lock(run):
        st = run.status()
        mine = job is not None and st.job_id == job
        started_here = st.state == RUNNING and (st.pid == pid or mine and st.pid is None)
        if not (started_here or st.state == QUEUED and mine):
            return st
        if pid == 0:  # the script ended before it started the trainer: a setup line failed
            why = f"Slurm job {job} ended before its trainer started: its setup lines exited with {code}"
            return run.mark_ended(FAILED, f"{why}; see train.log", code)
        state, message, exit_code = describe_exit(-(code - 128) if code > 128 else code, st.stop_signal)
        return run.mark_ended(state, message, exit_code)


def advance(run: RunDir, job: str | None) -> list[str]:
    """Tick the queue of the run's study; returns the runs submitted."""
    file = (run.read_run() or {}).get("study_file")
    if not file:
        return []
    try:
        study = config.load(file)
    except (config.ConfigError, OSError) as exc:
        _say(
            f"the queue waits: {file} cannot be read now ({exc}); a dashboard or `flux-tui submit` starts it"
        )
        return []
    from flux_tui.core.local_executor import LocalExecutor
    from flux_tui.core.scheduler import Scheduler
    from flux_tui.core.slurm_executor import SlurmExecutor

    scheduler = Scheduler(study, executors={LOCAL: LocalExecutor(lambda: []), SLURM: SlurmExecutor(own_job=job)})
    if name_for_new_runs(study.workspace) != SLURM:  # never start local runs on a compute node
        scheduler.reconcile()
        return []
    return scheduler.tick()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flux_tui.core.slurm_tick", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--pid", type=int, required=True, help="the trainer's pid (0: it never started)")
    p.add_argument(
        "--exit-code", type=int, required=True, help="the trainer's exit status, as the shell saw it"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    args = _parse(sys.argv[1:] if argv is None else argv)
    run = RunDir(args.run_dir.resolve())
    job = os.environ.get("SLURM_JOB_ID") or None
    try:
        status = record_end(run, job, args.pid, args.exit_code)
        started = advance(run, job)
    except Exception:  # noqa: BLE001 - the job's end is the trainer's; the next tick starts the queue
        _say(
            "could not advance the queue (a dashboard or `flux-tui submit` will):\n" + traceback.format_exc()
        )
        return 0
    for name in started:
        again = " (again, to resume)" if name == run.name else ""
        _say(f"submitted {name}{again} as Slurm job {RunDir(run.path.parent / name).status().job_id}")
    now = run.status()
    if (now.state, now.message) != (status.state, status.message) and run.name not in started:
        _say(f"{run.name}: {now.state}, {now.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
