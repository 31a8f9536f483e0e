"""Where a run's process lives: the one interface behind the scheduler, the CLI and the dashboard.

An executor places, starts, stops and checks runs. The run folder stays the truth (the trainer writes its
state there, wherever it runs); an executor only answers what the folder cannot know: a process that
vanished, a job the batch system still holds and why, a job that died before its trainer started. Every
run's status.json names the executor that runs it (`executor`, with `job_id` where it has one), so stopping
or checking a run goes to the right one; nothing above the scheduler ever asks which.

    submit(run, slot, study)  start the run there (or hand it to the batch system, with the study's
                        settings as the file says now); when it returns, status.json says who owns the run
    cancel(run, status) SIGTERM (it checkpoints, ends `cancelled`) or SIGKILL; a batch job: scancel
    poll(run, status)   fold what only the executor knows into the status (written to the folder);
                        poll_many does it for several runs at once (one question to a batch system)
    busy / free_slot    how full it is, and where the next run goes under the study's limits (None: wait)

The local executor (`local_executor.py`): each run a supervisor process in its own session, placed on the
GPUs of this machine. The Slurm executor (`slurm_executor.py`): each run one batch job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from flux_tui.core.config import Study, Workspace
from flux_tui.core.runs import RunDir, Status

if TYPE_CHECKING:  # the engine imports launch, which imports this: keep NVML out of its processes
    from flux_tui.core.telemetry import GpuStat

LOCAL, SLURM = "local", "slurm"
GpusFn = Callable[[], Sequence["GpuStat"]]


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words a user can read in a notification."""

    ok: bool
    message: str
    name: str = ""


class Unavailable(Exception):
    """The executor cannot take runs now (its batch system does not answer, its commands are missing): the
    queued runs wait, saying why, and nothing is marked failed."""


class Executor(ABC):
    name: ClassVar[str]

    @abstractmethod
    def busy(self, statuses: Mapping[str, Status]) -> Counter[str]:
        """How many of these runs this executor holds, per slot (a device, a partition)."""

    @abstractmethod
    def free_slot(self, busy: Counter[str], study: Study) -> str | None:
        """Where the next run goes given `busy`, under the study file's limits (`runs_per_gpu`, a batch
        system's `max_jobs`); None when every slot is taken."""

    @abstractmethod
    def submit(self, run: RunDir, slot: str, study: Study) -> None:
        """Start the run on `slot`, with `study` as the file says now. When this returns, status.json names
        the run's owner (a pid, a job id). Raises launch.AlreadyRunning (someone owns the run),
        runs.LaunchError (this run cannot start: it is marked failed with the message), Unavailable (no run
        can start now: the queue waits) or OSError."""

    @abstractmethod
    def cancel(self, run: RunDir, status: Status, *, kill: bool = False) -> Outcome:
        """Stop a run this executor holds: SIGTERM lets it save a checkpoint and end `cancelled`; kill=True
        ends it at once (work since the last checkpoint is lost) and it is recorded `cancelled` too."""

    @abstractmethod
    def poll(self, run: RunDir, status: Status) -> Status:
        """The run's status with what only the executor knows folded in (and written to the folder)."""

    def poll_many(self, items: Sequence[tuple[RunDir, Status]]) -> list[Status]:
        """`poll` for several runs, in their order (a batch system answers for all of them at once)."""
        return [self.poll(run, status) for run, status in items]


def executors(gpus: GpusFn) -> dict[str, Executor]:
    """Every executor this build knows, by the name status.json records."""
    from flux_tui.core.local_executor import LocalExecutor
    from flux_tui.core.slurm_executor import SlurmExecutor

    return {LOCAL: LocalExecutor(gpus), SLURM: SlurmExecutor()}


def name_for_new_runs(workspace: Workspace) -> str:
    """The executor that new runs of this workspace go to (the study file's choice; local by default)."""
    return workspace.executor or LOCAL


def name_of(status: Status) -> str:
    """The executor that runs (or ran) this run; runs from before executors were recorded are local."""
    return status.executor or LOCAL
