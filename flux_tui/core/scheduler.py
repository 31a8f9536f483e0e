"""The run queue: which run starts next and where, and how runs are stopped, through the executors.

Core wing. The queue lives on disk: a queued run's `status.json` says `queued`, ordered by `queued_at`, so
anyone may carry it on: a run's supervisor when its run ends, `flux-tui submit`, a dashboard. Every change to
the queue and every launch happens under one workspace lock (`runs/.queue.lock`, flock), and a launch takes
the run's own lock, so two of them never launch the same run twice nor overfill a device.

A launch reads the study file afresh (a run never starts with settings older than the file) and goes to the
executor the workspace names (local by default). Stopping, checking and placing a running run go to the
executor its status.json names; nothing here or above knows how an executor works.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from flux_tui.core import config, executor, launch, runs
from flux_tui.core.config import Study
from flux_tui.core.executor import Executor, Outcome
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import CANCELLED, DONE, FAILED, NEW, OOM, QUEUED, RUNNING, RunDir, Status
from flux_tui.core.telemetry import GpuStat

__all__ = ["QUEUEABLE", "Outcome", "Scheduler"]

# States from which a run may be (re)queued: a cancelled, failed or oom run resumes from its last checkpoint.
QUEUEABLE = frozenset({NEW, FAILED, CANCELLED, OOM})


class Scheduler:
    """Queue, launch and stop the runs of one study. Safe across processes through file locks. `tick()`
    starts queued runs while slots are free: supervisors call it when their run ends, the CLI after
    queueing, and the dashboard every second."""

    def __init__(
        self,
        study: Study,
        gpus: Callable[[], Sequence[GpuStat]] | None = None,
        executors: Mapping[str, Executor] | None = None,
    ):
        self.study = study
        self.executors = dict(executors or executor.executors(gpus or (lambda: [])))

    # -- folders
    @property
    def runs_dir(self) -> Path:
        return self.study.workspace.runs_dir

    def run(self, name: str) -> RunDir:
        return runs.run_dir(self.study, name)

    def folders(self) -> list[RunDir]:
        """Every run folder of the workspace, the study's and others' (they share the GPUs)."""
        names = set(self.study.names)
        if self.runs_dir.is_dir():
            names |= {p.name for p in self.runs_dir.iterdir() if (p / "run.json").exists()}
        return [self.run(n) for n in sorted(names)]

    @contextlib.contextmanager
    def _queue_lock(self) -> Iterator[None]:
        with file_lock(self.runs_dir / ".queue.lock"):
            yield

    def executor_of(self, status: Status) -> Executor | None:
        return self.executors.get(executor.name_of(status))

    # -- state
    def reconcile(self) -> dict[str, Status]:
        """Every run's status, with what its executor knows folded in (a run whose process vanished is
        failed)."""
        out: dict[str, Status] = {}
        asks: dict[str, list[tuple[RunDir, Status]]] = {}  # per executor, so a batch system is asked once
        for run in self.folders():
            st = out[run.name] = run.status()
            if (st.state == RUNNING or st.job_id) and self.executor_of(st) is not None:
                asks.setdefault(executor.name_of(st), []).append((run, st))
        for name, items in asks.items():
            for (run, _), st in zip(items, self.executors[name].poll_many(items), strict=True):
                out[run.name] = st
        return out

    def queue(self, statuses: dict[str, Status] | None = None) -> list[str]:
        """Queued runs in the order they will start (a run an executor already holds is not waiting)."""
        statuses = statuses if statuses is not None else {r.name: r.status() for r in self.folders()}
        queued = [(st.queued_at or 0.0, n) for n, st in statuses.items() if st.state == QUEUED and not st.job_id]
        return [name for _, name in sorted(queued)]

    def running(self, statuses: dict[str, Status] | None = None) -> list[str]:
        statuses = statuses if statuses is not None else {r.name: r.status() for r in self.folders()}
        return [n for n, st in statuses.items() if st.state == RUNNING]

    # -- the queue
    def enqueue(self, names: Iterable[str], *, first: bool = False) -> list[Outcome]:
        """Put runs in the queue (at its end, or before every other queued run with first=True)."""
        out = []
        with self._queue_lock():
            statuses = {r.name: r.status() for r in self.folders()}
            order = self.queue(statuses)
            head = min((statuses[n].queued_at or 0.0 for n in order), default=time.time())
            for i, name in enumerate(names):
                at = head - 1 + i * 1e-3 if first else None
                out.append(self._enqueue_one(name, statuses.get(name, Status()), at))
        return out

    def _enqueue_one(self, name: str, st: Status, at: float | None) -> Outcome:
        try:
            exp = self.study.get(name)
        except KeyError:
            return Outcome(False, f"{name} is not in {self.study.file.name}", name)
        if st.state == RUNNING:
            return Outcome(False, f"{name} is already running", name)
        if st.state == DONE:
            return Outcome(False, f"{name} is done (to train it again, reset it: `R`, or `flux-tui reset {name}`)", name)
        if st.state == QUEUED and at is None:
            return Outcome(True, f"{name} is already queued", name)
        try:
            run = runs.prepare(self.study, exp)
        except runs.LaunchError as exc:
            return Outcome(False, str(exc), name)
        trained, ckpt = run.is_trained(st), run.latest_checkpoint()
        then = ("will be evaluated (its LoRA is trained)" if trained
                else f"will resume from {ckpt.name}" if ckpt else "")  # fmt: skip
        # queued_at orders the queue; "run next" puts the run just before the earliest queued one. A trained
        # run waits to be evaluated: its training's end stays.
        run.write_status(
            state=QUEUED, stage=None, queued_at=at if at is not None else time.time(), pid=None, pgid=None,
            process_start=None, exit_code=None, log_tail=[], job_id=None, stop_signal=None,
            job_state=None, job_reason=None, **({} if trained else {"finished_at": None}),
            queued_from=st.queued_from if st.state == QUEUED else st.state,
            message=then or "waiting for a free slot",
        )  # fmt: skip
        return Outcome(True, f"{name} queued" + (f", {then}" if then else ""), name)

    def queue_all(self) -> list[Outcome]:
        """Queue every run of the study that is not done, running or queued yet."""
        statuses = {r.name: r.status() for r in self.folders()}
        todo = [n for n in self.study.names if statuses.get(n, Status()).state in QUEUEABLE]
        return self.enqueue(todo)

    def submit(self, name: str) -> Outcome:
        """Run `name` now if a slot is free, else first in the queue (the dashboard's `enter`)."""
        result = self.enqueue([name], first=True)[0]
        if not result.ok:
            return result
        if name in self.tick():
            run = self.run(name)
            st, ckpt, trained = run.status(), run.latest_checkpoint(), run.lora_file.exists()
            if st.job_id:
                how = ", to evaluate its trained LoRA" if trained else f", to resume from {ckpt.name}" if ckpt else ""
                return Outcome(True, f"{name} submitted to Slurm as job {st.job_id}{how}", name)
            device = (st.evaluation or {}).get("device") if st.evaluating else st.device
            how = "evaluating its trained LoRA" if trained else f"resumed from {ckpt.name}" if ckpt else "started"
            return Outcome(True, f"{name} {how} on {device or 'cpu'} (pid {st.pid})", name)
        st = self.run(name).status()
        if st.state == QUEUED:
            return Outcome(True, f"{name} is next in the queue: every slot is busy", name)
        return Outcome(st.state not in (FAILED,), f"{name}: {st.state} {st.message}".strip(), name)

    def tick(self) -> list[str]:
        """Start queued runs while slots are free, as the study file says now. Returns the names started."""
        started: list[str] = []
        if not self.runs_dir.is_dir():
            return started  # no run folder yet, so nothing queued or running
        with self._queue_lock():
            statuses = self.reconcile()
            order = self.queue(statuses)
            if not order:
                return started
            study = self._fresh_study(order)
            if study is None:
                return started
            ex = self.executors.get(executor.name_for_new_runs(study.workspace))
            if ex is None:
                self._hold(order, f"waiting: no executor named {executor.name_for_new_runs(study.workspace)!r}")
                return started
            busy = ex.busy(statuses)
            studies = {Path(study.file).resolve(): study}
            for i, name in enumerate(order):
                slot = ex.free_slot(busy, study)
                if slot is None:
                    break
                own = self._study_of(name, studies)
                try:
                    launched = own is not None and self._launch(own, ex, name, slot)
                except executor.Unavailable as exc:
                    self._hold(order[i:], f"waiting: {exc}")
                    break
                if launched:
                    busy[slot] += 1
                    started.append(name)
        return started

    def _fresh_study(self, order: list[str], file: Path | None = None) -> Study | None:
        """The study file as it is now; None (the queued runs saying why) when it cannot be used."""
        file = file or self.study.file
        try:
            return config.load(file)
        except config.ConfigError as exc:
            first = exc.problems[0] if exc.problems else exc
            self._hold(order, f"waiting: {Path(file).name} cannot be used ({first}); `flux-tui check` says why")
            return None

    def _study_of(self, name: str, studies: dict[Path, Study]) -> Study | None:
        """The study a queued run belongs to (another file may share the workspace), read afresh once."""
        recorded = (self.run(name).read_run() or {}).get("study_file")
        file = Path(recorded).resolve() if recorded else Path(self.study.file).resolve()
        if file not in studies:
            fresh = self._fresh_study([name], file)
            if fresh is None:
                return None
            studies[file] = fresh
        return studies[file]

    def _hold(self, order: list[str], message: str) -> None:
        for name in order:
            run = self.run(name)
            if run.status().message != message:
                run.write_status(message=message)

    def _launch(self, study: Study, ex: Executor, name: str, slot: str) -> bool:
        run = runs.run_dir(study, name)
        st = run.status()
        if st.state != QUEUED:  # taken off the queue or started meanwhile
            return False
        try:
            exp = study.get(name)
        except KeyError:
            self._unqueue(run, st, f"no longer in {study.file.name}; taken off the queue")
            return False
        try:
            runs.prepare(study, exp)
            ex.submit(run, slot, study)
        except runs.LaunchError as exc:
            run.mark_finished(FAILED, str(exc))
            return False
        except launch.AlreadyRunning:
            return False
        except OSError as exc:
            run.mark_finished(FAILED, f"could not start the process: {exc}")
            return False
        return True

    def _unqueue(self, run: RunDir, st: Status, message: str) -> str:
        """Back to the state the run had before it was queued (`new` for a run that never ran)."""
        state = st.queued_from if st.queued_from in QUEUEABLE else NEW
        run.write_status(state=state, queued_at=None, queued_from=None, message=message)
        return state

    # -- stopping
    def stop(self, name: str, *, kill: bool = False) -> Outcome:
        """Take a queued run off the queue (back to where it was: `new` if it never ran), or have its executor
        stop a running run: SIGTERM (it saves a checkpoint and ends `cancelled`) or, with kill=True, SIGKILL
        (progress since the last checkpoint is lost; recorded `cancelled` too)."""
        run = self.run(name)
        with self._queue_lock():
            st = run.status()
            if st.state == QUEUED and not st.job_id:
                state = self._unqueue(run, st, "taken off the queue before it started")
                return Outcome(True, f"{name} taken off the queue (back to {state})", name)
        if st.state != RUNNING and not st.job_id:
            return Outcome(False, f"{name} is not running ({st.state})", name)
        ex = self.executor_of(st)
        if ex is None:
            return Outcome(False, f"{name} runs under executor {executor.name_of(st)!r}, unknown here", name)
        return ex.cancel(run, st, kill=kill)
