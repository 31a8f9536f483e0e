"""The run queue: which run starts next, where, and how runs are stopped.

Core wing. The queue lives on disk: a queued run's `status.json` says `queued`, ordered by `queued_at`, so a
dashboard that restarts (or a second dashboard on the same workspace) carries on with it. Every change to
the queue and every launch happens under one workspace lock (`runs/.queue.lock`, flock), and `launch.start`
takes the run's own lock, so two dashboards never launch the same run twice nor overfill a GPU.

Placement: at most `runs_per_gpu` of the workspace's runs per GPU. A run goes to a GPU with a free slot,
the least busy first and among those the one with the most free memory (with one run per GPU, the default,
that is simply the most free memory), pinned with CUDA_VISIBLE_DEVICES in PCI bus order, which is NVML's
order. Without an NVIDIA GPU runs go to the CPU, `runs_per_gpu` at a time.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flux_tui.core import launch, procs, runs
from flux_tui.core.config import Study
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import CANCELLED, DONE, FAILED, NEW, OOM, QUEUED, RUNNING, RunDir, Status
from flux_tui.core.telemetry import GpuStat

CPU = "cpu"
# States from which a run may be (re)queued: a cancelled, failed or oom run resumes from its last checkpoint.
QUEUEABLE = frozenset({NEW, FAILED, CANCELLED, OOM})
KILL_WAIT_S = 3.0

StartFn = Callable[..., subprocess.Popen]


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words a user can read in a notification."""

    ok: bool
    message: str
    name: str = ""


def device_name(gpu: GpuStat | None) -> str:
    return CPU if gpu is None else f"cuda:{gpu.index}"


def device_env(device: str) -> dict[str, str]:
    """Environment that pins a run's process to its device."""
    if device.startswith("cuda:"):
        # PCI_BUS_ID makes CUDA number the GPUs as NVML does (its default puts the fastest first).
        return {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1], "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return {}


def choose_device(gpus: Sequence[GpuStat], busy: Counter[str], per_device: int) -> str | None:
    """The device for the next run, or None when every slot is taken."""
    if not gpus:
        return CPU if busy[CPU] < per_device else None
    free = [g for g in gpus if busy[device_name(g)] < per_device]
    if not free:
        return None
    best = min(free, key=lambda g: (busy[device_name(g)], -g.mem_free, g.index))
    return device_name(best)


class Scheduler:
    """Queue, launch and stop the runs of one study. Thread-safe across processes through file locks; call
    `tick()` regularly (the dashboard does it every second) to start queued runs as slots free up."""

    def __init__(
        self,
        study: Study,
        gpus: Callable[[], Sequence[GpuStat]] | None = None,
        start: StartFn = launch.start,
    ):
        self.study = study
        self._gpus = gpus or (lambda: [])
        self._start = start
        self._children: dict[str, subprocess.Popen] = {}  # processes this scheduler started, to reap

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

    # -- state
    def reconcile(self) -> dict[str, Status]:
        """Reap our finished children, mark runs whose process vanished as failed. Returns every status."""
        for name, proc in list(self._children.items()):
            code = proc.poll()
            if code is None:
                continue
            self._children.pop(name, None)
            run = self.run(name)
            st = run.status()
            if st.state == RUNNING and st.pid == proc.pid:
                # It died before it could say why (an import error, a kill): keep the code and the log tail.
                run.mark_finished(FAILED, f"process {proc.pid} exited with code {code} (see train.log)", code)
        return {run.name: run.reconcile() for run in self.folders()}

    def queue(self, statuses: dict[str, Status] | None = None) -> list[str]:
        """Queued runs in the order they will start."""
        statuses = statuses if statuses is not None else {r.name: r.status() for r in self.folders()}
        queued = [(st.queued_at or 0.0, name) for name, st in statuses.items() if st.state == QUEUED]
        return [name for _, name in sorted(queued)]

    def busy(self, statuses: dict[str, Status], gpus: Sequence[GpuStat]) -> Counter[str]:
        """Running runs per device. A run that did not record its device counts on the default one."""
        default = device_name(gpus[0]) if gpus else CPU
        here = socket.gethostname()
        return Counter(
            (st.device or default)
            for st in statuses.values()
            if st.state == RUNNING and (st.host in (None, here))
        )

    # -- the queue
    def enqueue(self, names: Iterable[str], *, first: bool = False) -> list[Outcome]:
        """Put runs in the queue (at its end, or before every other queued run with first=True)."""
        out = []
        with self._queue_lock():
            statuses = {r.name: r.status() for r in self.folders()}
            order = self.queue(statuses)
            head = min((statuses[n].queued_at or 0.0 for n in order), default=time.time())
            for i, name in enumerate(names):
                out.append(
                    self._enqueue_one(
                        name, statuses.get(name, Status()), head - 1 + i * 1e-3 if first else None
                    )
                )
        return out

    def _enqueue_one(self, name: str, st: Status, at: float | None) -> Outcome:
        try:
            exp = self.study.get(name)
        except KeyError:
            return Outcome(False, f"{name} is not in {self.study.file.name}", name)
        if st.state == RUNNING:
            return Outcome(False, f"{name} is already running", name)
        if st.state == DONE:
            return Outcome(False, f"{name} is done (delete runs/{name} to train it again)", name)
        if st.state == QUEUED and at is None:
            return Outcome(True, f"{name} is already queued", name)
        try:
            run = runs.prepare(self.study, exp)
        except runs.LaunchError as exc:
            return Outcome(False, str(exc), name)
        ckpt = run.latest_checkpoint()
        # queued_at orders the queue; "run next" puts the run just before the earliest queued one.
        run.write_status(
            state=QUEUED, stage=None, queued_at=at if at is not None else time.time(), pid=None, pgid=None,
            process_start=None, finished_at=None, exit_code=None, log_tail=[],
            message=f"will resume from {ckpt.name}" if ckpt else "waiting for a free slot",
        )  # fmt: skip
        return Outcome(True, f"{name} queued" + (f", will resume from {ckpt.name}" if ckpt else ""), name)

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
            st = self.run(name).status()
            ckpt = self.run(name).latest_checkpoint()
            how = f"resumed from {ckpt.name}" if ckpt else "started"
            return Outcome(True, f"{name} {how} on {st.device or CPU} (pid {st.pid})", name)
        st = self.run(name).status()
        if st.state == QUEUED:
            return Outcome(True, f"{name} is next in the queue: every slot is busy", name)
        return Outcome(st.state not in (FAILED,), f"{name}: {st.state} {st.message}".strip(), name)

    def tick(self) -> list[str]:
        """Start queued runs while slots are free. Returns the names started."""
        started: list[str] = []
        if not self.runs_dir.is_dir():
            return started  # no run folder yet, so nothing queued or running
        with self._queue_lock():
            statuses = self.reconcile()
            order = self.queue(statuses)
            if not order:
                return started
            gpus = list(self._gpus())
            busy = self.busy(statuses, gpus)
            per = self.study.workspace.runs_per_gpu
            for name in order:
                device = choose_device(gpus, busy, per)
                if device is None:
                    break
                if self._launch(name, device):
                    busy[device] += 1
                    started.append(name)
        return started

    def _launch(self, name: str, device: str) -> bool:
        run = self.run(name)
        if run.status().state != QUEUED:  # taken off the queue or started meanwhile
            return False
        try:
            exp = self.study.get(name)
        except KeyError:
            run.mark_finished(
                FAILED, f"{name} is no longer in {self.study.file.name}; it was taken off the queue"
            )
            return False
        try:
            runs.prepare(self.study, exp)
            proc = self._start(run, env=device_env(device), device=device)
        except runs.LaunchError as exc:
            run.mark_finished(FAILED, str(exc))
            return False
        except launch.AlreadyRunning:
            return False
        except OSError as exc:
            run.mark_finished(FAILED, f"could not start the process: {exc}")
            return False
        self._children[name] = proc
        return True

    # -- stopping
    def stop(self, name: str, *, kill: bool = False) -> Outcome:
        """Take a queued run off the queue, or signal a running run's process group: SIGTERM (it saves a
        checkpoint and ends `cancelled`) or, with kill=True, SIGKILL (progress since the last checkpoint is
        lost; the run is marked cancelled here since it cannot say so itself)."""
        run = self.run(name)
        with self._queue_lock():
            st = run.status()
            if st.state == QUEUED:
                run.mark_finished(CANCELLED, "taken off the queue before it started")
                return Outcome(True, f"{name} taken off the queue", name)
        if st.state != RUNNING:
            return Outcome(False, f"{name} is not running ({st.state})", name)
        if st.host and st.host != socket.gethostname():
            return Outcome(False, f"{name} runs on {st.host}; stop it there", name)
        if not run.is_process_alive(st):
            run.reconcile()
            return Outcome(False, f"{name}'s process is already gone", name)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        if not procs.signal_group(st.pgid, st.pid, sig):
            return Outcome(False, f"could not signal {name} (pid {st.pid})", name)
        if not kill:
            return Outcome(
                True, f"sent SIGTERM to {name} (pid {st.pid}): it saves a checkpoint, then stops", name
            )
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and procs.is_alive(st.pid, st.process_start):
            self._reap(name)
            time.sleep(0.05)
        self._reap(name)
        after = run.status()
        if after.state == RUNNING and not run.is_process_alive(after):
            run.mark_finished(
                CANCELLED, "killed with SIGKILL from the dashboard; work since the last checkpoint is lost"
            )
        return Outcome(True, f"sent SIGKILL to {name} (pid {st.pid})", name)

    def _reap(self, name: str) -> None:
        proc = self._children.get(name)
        if proc is not None and proc.poll() is not None:
            self._children.pop(name, None)

    def running(self, statuses: dict[str, Status] | None = None) -> list[str]:
        statuses = statuses if statuses is not None else {r.name: r.status() for r in self.folders()}
        return [n for n, st in statuses.items() if st.state == RUNNING]
