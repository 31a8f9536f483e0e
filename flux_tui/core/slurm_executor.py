"""The Slurm executor: each run is one batch job, `sbatch runs/<name>/slurm.sbatch` (core/slurm.py).

The run folder (on the shared filesystem) stays the truth: the trainer writes its state there from the
compute node. Slurm answers only what the folder cannot know, through `squeue`/`sacct`, for the runs whose
job is not settled yet (queued or running in the folder, or stopped by a signal nobody here asked for):
- a job still PENDING, and why (Resources, Priority, QOSMaxJobsPerUserLimit, PartitionDown, ...): the run
  stays `queued`, with `job_state`/`job_reason` and a message saying so;
- a job that started while the trainer has not said so yet: `running`, stage `starting`, on its node;
- a job that ended before its trainer started (a failing setup line, a node failure) or without its trainer
  recording the end (Slurm's memory limit, a kill at the time limit, an admin's scancel): failed, oom or
  cancelled, with Slurm's words. No run stays `queued` or `running` once Slurm no longer runs its job;
- a job that Slurm requeued itself (node failure, preemption; the script asks for --requeue): `queued` again;
- a trainer that its time limit stopped (it saved a checkpoint and ended `cancelled`, and nobody here asked
  for the stop: status.json's `stop_signal` is empty): queued again in its old place, so the queue submits
  it anew (the same script) and it resumes. Only while it gets further: a run whose newest checkpoint is no
  newer than when its last job was submitted (`job_from_step`) stays `cancelled`, saying why, instead of
  being resubmitted forever.
When Slurm does not answer (SlurmError), nothing is changed: a run is never failed for the controller's sake.

`max_jobs` ([slurm]) bounds the sweep's runs that hold a job (queued with a job id, or running), counted
from status.json after Slurm's answer is folded in. The queue advances without anybody logged in: the batch
script, after its trainer, runs `python -m flux_tui.core.slurm_tick` on the node, which ticks the queue
with this executor knowing that job is ending (`own_job`): it does not count, and what it submits waits
for it to end (`--dependency=afterany`), so the sweep never has more than `max_jobs` jobs running.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from flux_tui.core import launch, slurm
from flux_tui.core.config import Study
from flux_tui.core.executor import SLURM, Executor, Outcome, Unavailable, name_of
from flux_tui.core.runs import CANCELLED, FAILED, NEW, OOM, QUEUED, RUNNING, LaunchError, RunDir, Status
from flux_tui.core.slurm import JobInfo, SlurmError, SlurmRefused

SLOT = "slurm"
CACHE_S = 5.0  # an answer of squeue is reused this long while the folder agrees (dashboards tick each second)
TRAINED = 1 << 40  # progress of a run whose LoRA is written: more than any step
QUEUEABLE = frozenset({NEW, FAILED, CANCELLED, OOM})
ALIVE = slurm.PENDING_STATES | slurm.RUNNING_STATES


def job_of(status: Status) -> str | None:
    """The run's job id when status.json holds a valid one (it is outside data)."""
    job = status.job_id
    if isinstance(job, int) and not isinstance(job, bool):
        job = str(job)
    return job if isinstance(job, str) and job.isdigit() else None


def progress(run: RunDir) -> int:
    """How far the run has got, for the resubmission guard: its newest checkpoint's step (0: none); a
    trained LoRA counts as more than any step (a relaunch only evaluates it)."""
    if run.lora_file.exists():
        return TRAINED
    ckpt = run.latest_checkpoint()
    return int(ckpt.name.rsplit("-", 1)[1]) if ckpt else 0


def _settled(status: Status) -> bool:
    """Nothing left for Slurm to tell about this run's job."""
    if name_of(status) != SLURM or job_of(status) is None:
        return True
    if status.state in (QUEUED, RUNNING):
        return False
    # A trainer stopped by a TERM that nobody here sent: its time limit, unless Slurm says otherwise.
    return status.state != CANCELLED or bool(status.stop_signal) or status.job_state not in (None, *ALIVE)


def submit_env() -> dict[str, str] | None:
    """sbatch's environment: inside a job (the queue step, an salloc shell), without that job's SLURM_*
    variables, which the new job would otherwise inherit (SLURM_CONF stays: it says where the cluster is)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


class SlurmExecutor(Executor):
    name = SLURM

    def __init__(self, *, own_job: str | None = None, cache_s: float = CACHE_S):
        """`own_job`: the job this process runs in, its trainer ended (the batch script's queue step)."""
        self.own_job = own_job
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, JobInfo]] = {}

    # -- how full
    def busy(self, statuses: Mapping[str, Status]) -> Counter[str]:
        held = sum(
            1 for st in statuses.values()
            if name_of(st) == SLURM and st.state in (QUEUED, RUNNING)
            and job_of(st) not in (None, self.own_job)
        )  # fmt: skip
        return Counter({SLOT: held}) if held else Counter()

    def free_slot(self, busy: Counter[str], study: Study) -> str | None:
        limit = study.slurm.max_jobs
        return SLOT if limit is None or busy[SLOT] < limit else None

    # -- submitting
    def submit(self, run: RunDir, slot: str, study: Study) -> None:
        try:
            script = slurm.write_batch_script(run, study.slurm)
        except SlurmError as exc:  # a setting that cannot go into a script
            raise LaunchError(str(exc)) from None
        options = [f"--dependency=afterany:{self.own_job}"] if self.own_job else []
        start = progress(run)
        try:
            # A job of this run that status.json does not name (a queue step killed right after its sbatch,
            # the script submitted by hand): taken as the run's job rather than a second trainer.
            live = [j for j in slurm.live_jobs_of(run) if j != self.own_job]
            job = live[0] if live else slurm.submit(script, options=options, env=submit_env())
        except SlurmRefused as exc:
            if "submit limit" in str(exc):  # the QOS's or account's MaxSubmitJobs: wait for jobs to end
                raise Unavailable(str(exc)) from None
            raise LaunchError(str(exc)) from None
        except SlurmError as exc:  # not installed here, or the controller does not answer
            raise Unavailable(str(exc)) from None
        with launch.run_lock(run):
            run.write_status(
                executor=SLURM, job_id=job, job_state="PENDING", job_reason=None, job_from_step=start,
                stop_signal=None, message=f"submitted to Slurm as job {job}",
            )  # fmt: skip

    # -- what Slurm knows
    def poll(self, run: RunDir, status: Status) -> Status:
        return self.poll_many([(run, status)])[0]

    def poll_many(self, items: Sequence[tuple[RunDir, Status]]) -> list[Status]:
        out = [st for _, st in items]
        todo = {i: job for i, (_, st) in enumerate(items) if not _settled(st) and (job := job_of(st))}
        if not todo:
            return out
        try:
            infos = self._ask(list(todo.values()))
            stale = [job for i, job in todo.items() if not self._agrees(items[i][1], infos[job])]
            if stale:  # act only on a fresh answer
                infos.update(self._ask(stale, fresh=True))
        except SlurmError:
            return out  # the controller does not answer: change nothing
        for i, job in todo.items():
            run, st = items[i]
            out[i] = self._fold(run, st, infos[job])
        return out

    def _ask(self, jobs: list[str], *, fresh: bool = False) -> dict[str, JobInfo]:
        now = time.monotonic()
        cached = (
            {}
            if fresh
            else {j: c[1] for j in jobs if (c := self._cache.get(j)) and now - c[0] < self.cache_s}
        )
        missing = [j for j in jobs if j not in cached]
        if missing:
            answer = slurm.query(missing)
            self._cache.update({j: (now, info) for j, info in answer.items()})
            cached.update(answer)
        return cached

    def _agrees(self, st: Status, info: JobInfo) -> bool:
        """The folder and Slurm tell the same story (nothing to do on an answer a few seconds old)."""
        own = job_of(st) == self.own_job
        return not own and (st.state == QUEUED and info.pending or st.state == RUNNING and info.running)

    def _fold(self, run: RunDir, st: Status, info: JobInfo) -> Status:
        own = self.own_job is not None and job_of(st) == self.own_job  # ending: its trainer is gone
        if not own and (info.pending or info.running):
            changes = _alive(run, st, info)
        elif st.state == QUEUED:
            changes = _never_started(run, st, info, own)
        elif st.state == RUNNING:
            changes = _unrecorded_end(run, st, info, own)
        else:
            changes = _stopped_by_slurm(run, st, info, own)
        return _write_if_unchanged(run, st, changes) if changes else st

    # -- stopping
    def cancel(self, run: RunDir, status: Status, *, kill: bool = False) -> Outcome:
        name, job = run.name, job_of(status)
        if job is None or status.state not in (QUEUED, RUNNING):
            return Outcome(False, f"{name} is not running ({status.state})", name)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        with launch.run_lock(run):  # noted first: whoever sees the job end knows the stop was asked for
            run.write_status(stop_signal=sig.name)
        try:
            sent = slurm.cancel(job, kill=kill)
        except SlurmError as exc:
            with launch.run_lock(run):
                if run.status().job_id == job:
                    run.write_status(stop_signal=None)
            return Outcome(False, f"could not stop {name}: {exc}", name)
        self._cache.pop(job, None)
        after = self.poll(run, run.status())
        if status.state == QUEUED and after.state not in (QUEUED, RUNNING):
            return Outcome(
                True, f"{name}: Slurm job {job} taken off Slurm's queue (back to {after.state})", name
            )
        if not sent:
            return Outcome(False, f"{name}'s Slurm job {job} had already ended ({after.state})", name)
        if kill:
            lost = (
                "Slurm sends TERM, then KILL after its KillWait: work since the last checkpoint may be lost"
            )
            return Outcome(True, f"cancelled {name}'s Slurm job {job}; {lost}", name)
        where = f" on {after.host}" if after.host else ""
        return Outcome(
            True, f"sent SIGTERM to {name} (Slurm job {job}{where}): it saves a checkpoint, then stops", name
        )


# -- what to write, given the folder and Slurm's answer (None: nothing) --------------------------------


def _alive(run: RunDir, st: Status, info: JobInfo) -> dict[str, Any] | None:
    """The job is pending or running in Slurm."""
    job = job_of(st)
    if info.pending and st.state in (RUNNING, CANCELLED):  # Slurm requeued it (node failure, preemption)
        return {
            "state": QUEUED, "stage": None, "pid": None, "pgid": None, "process_start": None,
            "job_state": info.state, "job_reason": info.reason,
            "message": f"requeued by Slurm ({info.describe()}): it resumes from its newest checkpoint",
        }  # fmt: skip
    if info.pending and st.state == QUEUED:
        message = f"Slurm job {job} is {info.describe()}"
        if (st.job_state, st.job_reason, st.message) == (info.state, info.reason, message):
            return None
        return {"job_state": info.state, "job_reason": info.reason, "message": message}
    if info.running and st.state == QUEUED:  # started; its trainer has not said so yet
        return run.launch_changes(state=RUNNING, stage="starting", host=info.node, job_state=info.state,
                                  job_reason=None)  # fmt: skip
    if info.running and st.state == RUNNING and st.job_state != info.state:
        return {"job_state": info.state, "job_reason": None}
    return None  # running, or a stopped trainer's job in its queue step: that step decides


def _ended(info: JobInfo, own: bool) -> tuple[str, bool]:
    """(how Slurm ended the job, in words; whether it was cancelled in Slurm: scancel, by a user or an
    admin). Inside its own job, an ending job that Slurm cancelled already says COMPLETING."""
    if own:
        cancelled = info.state in ("COMPLETING", "CANCELLED")
        return ("CANCELLED" if cancelled else "ENDED"), cancelled
    if not info.known:
        return "UNKNOWN", False
    return info.state or "UNKNOWN", info.state == "CANCELLED"


def _finished(run: RunDir, state: str, message: str, job_state: str, **more: Any) -> dict[str, Any]:
    tail = run.log_tail(20) if state in (FAILED, OOM) else []
    return run.end_changes({"state": state, "finished_at": time.time(), "message": message, "log_tail": tail,
                            "job_state": job_state, "job_reason": None, **more})  # fmt: skip


def _never_started(run: RunDir, st: Status, info: JobInfo, own: bool) -> dict[str, Any]:
    """Queued with a job that is over: it ended before its trainer started."""
    job, (how, cancelled) = job_of(st), _ended(info, own)
    if st.stop_signal:  # our stop took it off Slurm's queue: back to where it was before it was queued
        back = st.queued_from if st.queued_from in QUEUEABLE else NEW
        return {"state": back, "job_id": None, "job_state": None, "job_reason": None, "stop_signal": None,
                "queued_at": None, "queued_from": None,
                "message": f"taken off Slurm's queue before it started (job {job} cancelled)"}  # fmt: skip
    if cancelled:
        why = f"Slurm job {job} was cancelled before its trainer started (scancel outside flux-tui)"
        return _finished(run, CANCELLED, why, how)
    if not info.known and not own:
        return _finished(run, FAILED, f"Slurm no longer knows job {job}, and its trainer never started", how)
    where = "" if own else f": {info.describe()}"
    return _finished(
        run, FAILED, f"Slurm job {job} ended before its trainer started{where}; see train.log", how
    )


def _unrecorded_end(run: RunDir, st: Status, info: JobInfo, own: bool) -> dict[str, Any] | None:
    """Running in the folder, but the job is over: its trainer was killed before it could record its end."""
    job, (how, cancelled) = job_of(st), _ended(info, own)
    lost = "work since the last checkpoint is lost"
    if st.stop_signal:
        return _finished(
            run, CANCELLED, f"stopped on request ({st.stop_signal}, Slurm job {job}); {lost}", how
        )
    if info.state == "OUT_OF_MEMORY":
        why = f"Slurm killed job {job} for using more memory than it asked for: raise [slurm] mem"
        return _finished(run, OOM, why, how)
    if info.state == "TIMEOUT":
        why = f"Slurm job {job} reached its time limit before a checkpoint; {lost}"
        return {**_finished(run, CANCELLED, why, how), **(_resubmit(run, st) or {})}
    if cancelled:
        return _finished(
            run, CANCELLED, f"Slurm job {job} was cancelled outside flux-tui (scancel); {lost}", how
        )
    if not info.known and not own:
        return _finished(
            run, FAILED, f"Slurm no longer knows job {job}; its trainer never recorded an end", how
        )
    where = "" if own else f" ({info.describe()})"
    why = f"Slurm job {job} ended{where} while the run was {st.stage or 'running'}; see train.log"
    return _finished(run, FAILED, why, how)


def _stopped_by_slurm(run: RunDir, st: Status, info: JobInfo, own: bool) -> dict[str, Any]:
    """The trainer ended `cancelled` on a TERM nobody here asked for: the time limit's (or a preemption's)
    unless the job was cancelled in Slurm."""
    job, (how, cancelled) = job_of(st), _ended(info, own)
    if cancelled:
        return {"job_state": how, "message": f"{st.message}; its Slurm job {job} was cancelled (scancel)"}
    if not info.known and not own:
        return {
            "job_state": how,
            "message": f"{st.message}; Slurm no longer knows job {job}: submit it again",
        }
    return _resubmit(run, st) or _no_progress(run, st, how)


def _resubmit(run: RunDir, st: Status) -> dict[str, Any] | None:
    """Back in the queue, in its old place, to be submitted again (the same script) and resume, if it got
    further than when its last job was submitted."""
    before = st.job_from_step if isinstance(st.job_from_step, int) else 0
    if progress(run) <= before:
        return None
    ckpt = run.latest_checkpoint()
    resume = f"resumes from {ckpt.name}" if ckpt and not run.lora_file.exists() else "finishes its evaluation"
    return {
        "state": QUEUED, "stage": None, "job_id": None, "job_state": None, "job_reason": None, "pid": None,
        "pgid": None, "process_start": None, "queued_at": st.queued_at or time.time(),
        "queued_from": CANCELLED, **({} if run.is_trained(st) else {"finished_at": None}),
        "message": f"stopped by Slurm's TERM (its time limit); queued again: it {resume}",
        "log_tail": [],
    }  # fmt: skip


def _no_progress(run: RunDir, st: Status, how: str) -> dict[str, Any]:
    ckpt = run.latest_checkpoint()
    at = f"its newest checkpoint is still {ckpt.name}" if ckpt else "it has no checkpoint yet"
    why = (
        f"stopped by Slurm's TERM (its time limit) without getting further than its last job ({at}): not "
        "resubmitted; raise [slurm] time or save checkpoints more often (checkpointing_steps)"
    )
    return {"job_state": how, "message": why}


def _write_if_unchanged(run: RunDir, seen: Status, changes: dict[str, Any]) -> Status:
    """Write `changes` unless the run moved on since `seen` was read (its trainer wrote meanwhile)."""
    with launch.run_lock(run):
        now = run.status()
        if (now.state, now.job_id, now.stop_signal) != (seen.state, seen.job_id, seen.stop_signal):
            return now
        return run.write_status(**changes)
