"""The local executor: runs as processes of this machine, placed on its GPUs (or its CPU).

Each run is a supervisor process (`core/supervisor.py`, no torch) in its own session, which starts the
trainer in a session of its own, records how it ended and starts the next queued run: the queue advances
with no dashboard open. Stop signals go to the trainer's process group only.

Placement: at most `runs_per_gpu` of the workspace's runs per GPU. A run goes to a GPU with a free slot,
the least busy first and among those the one with the most free memory (with one run per GPU, the default,
that is simply the most free memory), pinned with CUDA_VISIBLE_DEVICES in PCI bus order, which is NVML's
order. Without an NVIDIA GPU runs go to the CPU, `runs_per_gpu` at a time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from flux_tui.core import launch, procs
from flux_tui.core.config import Study
from flux_tui.core.executor import LOCAL, Executor, GpusFn, Outcome, name_of
from flux_tui.core.runs import RUNNING, RunDir, Status
from flux_tui.core.telemetry import GpuStat

CPU = "cpu"
KILL_WAIT_S = 5.0  # how long a SIGKILL'd run is given to be gone and recorded


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


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class LocalExecutor(Executor):
    name = LOCAL

    def __init__(self, gpus: GpusFn):
        self._gpus = gpus
        self._children: list[subprocess.Popen] = []  # supervisors we started, reaped when they end

    def busy(self, statuses: Mapping[str, Status]) -> Counter[str]:
        """Running runs of this machine per device; one that did not record its device counts on the
        default one (a foreground `flux-tui run` on the first GPU)."""
        gpus = list(self._gpus())
        default = device_name(gpus[0]) if gpus else CPU
        here = socket.gethostname()
        return Counter(
            (st.device or default)
            for st in statuses.values()
            if st.state == RUNNING and name_of(st) == LOCAL and st.host in (None, here)
        )

    def free_slot(self, busy: Counter[str], study: Study) -> str | None:
        return choose_device(list(self._gpus()), busy, study.workspace.runs_per_gpu)

    def submit(self, run: RunDir, slot: str, study: Study) -> None:
        self._reap()
        self._children.append(launch.start(run, env=device_env(slot), device=slot))

    def poll(self, run: RunDir, status: Status) -> Status:
        self._reap()
        return run.reconcile()

    def _reap(self) -> None:
        self._children = [p for p in self._children if p.poll() is None]

    def cancel(self, run: RunDir, status: Status, *, kill: bool = False) -> Outcome:
        name, st = run.name, status
        if st.host and st.host != socket.gethostname():
            return Outcome(False, f"{name} runs on {st.host}; stop it there", name)
        if not run.is_process_alive(st):
            run.reconcile()
            return Outcome(False, f"{name}'s process is already gone", name)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        # Under the run's launch lock, so that its supervisor records the end only once the request is noted.
        with launch.run_lock(run):
            if not procs.signal_group(st.pgid, st.pid, sig):
                return Outcome(False, f"could not signal {name} (pid {st.pid})", name)
            if kill:
                # Written once the trainer is gone, so that no last write of its own can undo it.
                _wait(lambda: not procs.is_alive(st.pid, st.process_start), KILL_WAIT_S)
                now = run.status()
                if now.state == RUNNING and now.pid == st.pid:
                    run.write_status(stop_signal=signal.SIGKILL.name)
        if not kill:
            how = "it saves a checkpoint, then stops"
            return Outcome(True, f"sent SIGTERM to {name} (pid {st.pid}): {how}", name)
        # Its supervisor records the end; a run without one (its supervisor killed too) is reconciled here.
        _wait(lambda: run.status().state != RUNNING or not run.is_owned(), KILL_WAIT_S)
        self._reap()
        run.reconcile()
        lost = "work since its last checkpoint is lost"
        return Outcome(True, f"sent SIGKILL to {name} (pid {st.pid}); {lost}", name)
