"""The watcher thread: everything that touches the disk or the machine, off the event loop.

Every `interval` it reads the followed run's new train.log bytes; every `status_every` the study file's stat
(re-read when it changed) and the run folders (status, events, scores; only what changed); every `tick_every`
it lets the scheduler start queued runs (not while the study file has problems); every `telemetry_every` it
reads the GPUs and the host. Results go to the app as messages, in batches.
It polls rather than relying on inotify, which does not see writes made on another NFS client.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Callable

from textual.message import Message

from flux_tui.core.config import Study
from flux_tui.core.fsutil import TailReader
from flux_tui.core.runs import RUNNING, run_dir
from flux_tui.core.scheduler import Scheduler
from flux_tui.core.studyfile import StudyFile
from flux_tui.core.telemetry import Telemetry, process_tree
from flux_tui.tui.messages import (
    LogLines,
    RunsChanged,
    RunsStarted,
    StudyChanged,
    TelemetryRead,
    WatcherFailed,
)
from flux_tui.tui.runview import MAX_LOG_LINES, RunGpu, RunTracker

LOG_INITIAL_BYTES = 512 * 1024  # of a long log, the first read shows only its end
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(line: str) -> str:
    """What a terminal would show of a log line: the last carriage-return frame of a progress bar, no
    colour codes or other control characters (they would garble the pane's frame)."""
    if "\r" in line:
        frames = [f for f in line.split("\r") if f.strip()]
        line = frames[-1] if frames else ""
    return _CONTROL.sub("", line.expandtabs(4))


class Watcher(threading.Thread):
    def __init__(
        self,
        study: Study,
        post: Callable[[Message], object],
        *,
        scheduler: Scheduler | None = None,
        telemetry: Telemetry | None = None,
        study_file: StudyFile | None = None,
        interval: float = 0.1,
        status_every: float = 0.25,
        tick_every: float = 1.0,
        telemetry_every: float = 2.0,
    ) -> None:
        super().__init__(name="flux-tui-watcher", daemon=True)
        self.study = study
        self.post = post
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.study_file = study_file
        self._study_generation = study_file.generation if study_file else 0
        self.interval = interval
        self.status_every = status_every
        self.tick_every = tick_every
        self.telemetry_every = telemetry_every
        self.trackers = {e.name: RunTracker(run_dir(study, e.name), e) for e in study.experiments}
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._follow: str | None = None
        self._follow_changed = False
        self._log: TailReader | None = None
        self._errors = 0

    # -- called from the event loop
    def follow(self, name: str | None) -> None:
        """Tail this run's train.log from now on (its recent end is sent first)."""
        with self._lock:
            if name != self._follow:
                self._follow, self._follow_changed = name, True
        self._wake.set()

    def poke(self) -> None:
        """Do a full cycle now (after a user action changed the folders)."""
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    # -- the thread
    def run(self) -> None:
        last_status = last_tick = last_tele = 0.0
        first = True
        while not self._halt.is_set():
            now = time.monotonic()
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                self._read_log()
                if first or woken or now - last_status >= self.status_every:
                    self._read_study()
                if self._can_launch() and (woken or now - last_tick >= self.tick_every):
                    last_tick = now
                    started = self.scheduler.tick()
                    if started:
                        self.post(RunsStarted(started))
                        woken = True
                if first or woken or now - last_status >= self.status_every:
                    last_status = now
                    self._read_runs(first)
                    first = False
                if self.telemetry is not None and now - last_tele >= self.telemetry_every:
                    last_tele = now
                    self._read_machine()
            except Exception:  # keep watching; say what broke once in a while
                self._errors += 1
                if self._errors <= 3:
                    self.post(WatcherFailed(traceback.format_exc(limit=3)))
            self._wake.wait(self.interval)

    def _can_launch(self) -> bool:
        return self.scheduler is not None and not (self.study_file and self.study_file.problems)

    def _read_study(self) -> None:
        """Follow the study file: new trackers for new runs, staleness judged against the new settings, the
        scheduler launching with them; the app hears of it (or of the file's problems)."""
        sf = self.study_file
        if sf is None:
            return
        sf.check()  # the app may have checked it too, right before a launch: the generation tells
        if sf.generation == self._study_generation:
            return
        self._study_generation = sf.generation
        if sf.problems:
            self.post(StudyChanged(None, list(sf.problems), {}))
            return
        study = sf.study
        if study is not self.study:
            self.study = study
            if self.scheduler is not None:
                self.scheduler.study = study
            trackers = {}
            for exp in study.experiments:
                tracker = self.trackers.get(exp.name)
                if tracker is None or tracker.run.path != run_dir(study, exp.name).path:
                    tracker = RunTracker(run_dir(study, exp.name), exp)
                tracker.set_experiment(exp)
                tracker.poll()
                trackers[exp.name] = tracker
            self.trackers = trackers
        self.post(StudyChanged(study, list(study.warnings), {n: t.view for n, t in self.trackers.items()}))

    def _read_log(self) -> None:
        with self._lock:
            name, changed = self._follow, self._follow_changed
            self._follow_changed = False
        if changed:
            self._log = TailReader(run_dir(self.study, name).train_log, LOG_INITIAL_BYTES) if name else None
            lines = self._log.read_lines() if self._log else []
            self.post(LogLines(name, [clean_line(x) for x in lines[-MAX_LOG_LINES:]], reset=True))
            return
        if self._log is None:
            return
        lines = self._log.read_lines()
        if lines:
            self.post(
                LogLines(name, [clean_line(x) for x in lines[-MAX_LOG_LINES:]], reset=len(lines) > MAX_LOG_LINES)
            )

    def _read_runs(self, first: bool) -> None:
        changed = {n for n, t in self.trackers.items() if t.poll()}
        queued = sorted(  # a run with a batch job is in the batch system's queue, not ours
            (t.view.status.queued_at or 0.0, n)
            for n, t in self.trackers.items()
            if t.view.state == "queued" and not t.view.status.job_id
        )
        positions = {n: i + 1 for i, (_, n) in enumerate(queued)}
        changed |= {n for n, t in self.trackers.items() if t.set_queue_pos(positions.get(n))}
        if changed or first:
            names = self.trackers if first else changed
            self.post(RunsChanged({n: self.trackers[n].view for n in names}, first))

    def _read_machine(self) -> None:
        assert self.telemetry is not None
        sample = self.telemetry.sample()
        runs = []
        for name, t in self.trackers.items():
            st = t.view.status
            if st.state == RUNNING and st.job_id:  # on a compute node: what its own events say
                runs.append(RunGpu(name, None, st.device, t.view.mem_peak or 0, st.job_id, st.host))
                continue
            if st.state != RUNNING or not st.pid:
                continue
            mem = sample.gpu_mem_of(process_tree(st.pid)) if sample.gpus else 0
            runs.append(RunGpu(name, st.pid, st.device, mem))
        self.post(TelemetryRead(sample, runs))
