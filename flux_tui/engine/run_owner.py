"""A process owns a run: `owned_run()` is the one place that knows what that means.

    with owned_run(run, "prepare", resumable=True) as owner:
        ...                       # the work: train, evaluate
    return owner.exit_code

Entering it, the process
  - takes the run's ownership lock (`core.runlock`) for as long as the block lasts: the lock its launcher
    handed down, or its own. When another process holds it, it raises `RunBusy` (a `NotOwned`, exit 4)
    naming that pid, before touching anything. The lock, not status.json, decides: status.json can be damaged, and after a crash
    it may still name a process on another machine (a Slurm job requeued elsewhere must not be refused);
  - marks the run running at `stage` (an evaluation, standalone or the relaunch of a trained run, keeps the
    run's training record and writes its own under `evaluation`: `RunDir.mark_evaluation_started`);
  - removes the half-written images (`.<name>.png.tmp`) that a killed owner left under samples/;
  - installs its handlers for SIGTERM, SIGINT and SIGHUP (before marking the run: a stop while it takes the
    run ends it `cancelled` and raises `NotOwned` with the exit code): a signal raises `Cancelled` at once,
    except inside `owner.signals.deferred()`, where it is only noted and the work stops at its next safe point.

Leaving it, whatever happened, the run ends in one finished state with its exit code:

    done        0       the block ended normally (`owner.done_message` is the message)
    failed      1       an EngineError (its message alone) or anything else (type, message, traceback)
    oom         3       the device ran out of memory (`device.is_oom`); `owner.oom_advice` says what to lower
    cancelled   128+N   signal N (SIGTERM 143, SIGINT 130, SIGHUP 129)

and status.json holds the message and, for failed and oom, the last lines of train.log. Exceptions end
there: the caller reads `owner.exit_code`.
"""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType

from flux_tui.core import runlock
from flux_tui.core.launch import run_lock
from flux_tui.core.runs import CANCELLED, DONE, FAILED, OOM, RunDir, Status
from flux_tui.engine.device import is_oom
from flux_tui.engine.errors import EngineError
from flux_tui.engine.imagemeta import TEMP_SUFFIX
from flux_tui.engine.runlog import log

EXIT_DONE, EXIT_FAILED, EXIT_OOM = 0, 1, 3
EXIT_USAGE = 2  # the input cannot be worked on (not a run folder, nothing to evaluate); nothing was touched
EXIT_BUSY = 4  # another live process owns the run; nothing was touched
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_code_for_signal(signum: int) -> int:
    return 128 + signum


def signal_of(exit_code: int) -> int | None:
    """The signal that cancelled a run, from its exit code (None: it was not cancelled)."""
    return exit_code - 128 if exit_code > 128 else None


class NotOwned(EngineError):
    """The `with` block did not run; `exit_code` says why (the outcome, if any, is recorded already)."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


class RunBusy(NotOwned):
    """Another live process owns the run; the message names its pid. Nothing was touched."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_BUSY)


class Cancelled(BaseException):
    """A stop signal arrived. BaseException so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, step: int | None = None):
        self.signum = signum
        self.step = step
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """The process's handlers for SIGTERM, SIGINT and SIGHUP. A first signal raises Cancelled at once,
    unless the work is `deferred()`: then it is only noted (`received`) for the work to act on."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._defer = False
        self._previous: dict[int, object] = {}

    def install(self, deferred: bool = False) -> None:
        self._defer = deferred
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def arm(self) -> int | None:
        """From now on a signal raises Cancelled at once. Returns a signal noted before (None: none)."""
        self._defer = False
        return self.received

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def hold(self) -> None:
        """From now on only note signals: the outcome is being recorded."""
        self._defer = True

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals inside the block are only noted; the work checks `received` at its safe points."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def _handle(self, signum: int, frame: object) -> None:
        first = self.received is None
        self.received = self.received or signum
        if first and not self._defer:
            raise Cancelled(signum)


class OwnedRun:
    """The ownership of one run by this process, for the length of a `with` block (see the module doc)."""

    def __init__(self, run: RunDir, stage: str, *, evaluation: bool | None = False, resumable: bool = False,
                 device: str | None = None) -> None:  # fmt: skip
        self.run = run
        self.stage = stage
        # An evaluation keeps the training record. None: decided when the run is taken (the trainer's: a trained
        # run, relaunched after its evaluation failed or was stopped, is only evaluated; RunDir.is_trained).
        self.evaluation = evaluation
        self.resumable = resumable  # a cancelled run resumes from its newest checkpoint when relaunched
        self.device = device
        self.signals = StopSignals()
        self.step: int | None = None  # the training step under way, for the messages
        self.done_message = ""
        self.oom_advice: Callable[[BaseException], str] | None = None
        self.state: str | None = None
        self.exit_code: int | None = None
        self.message = ""
        self._before = Status()
        self._lock: contextlib.AbstractContextManager[None] | None = None

    # -- entering --------------------------------------------------------------------------------------
    def __enter__(self) -> OwnedRun:
        # The handlers go in first, so that no stop is lost from here on; until the run is ours (locked and
        # marked running) they only note a signal.
        self.signals.install(deferred=True)
        lock = runlock.adopt_or_acquire(self.run.path)
        try:
            lock.__enter__()
        except BaseException as exc:
            self.signals.restore()
            if isinstance(exc, runlock.RunLocked):
                raise RunBusy(str(exc)) from None
            raise
        self._lock = lock
        try:
            with run_lock(self.run):  # a launcher writes the run's first status under it: wait for that
                self._before = self.run.status()
                if self.evaluation is None:
                    self.evaluation = self.run.is_trained(self._before)
                self._mark_started()
        except BaseException:
            self.signals.restore()
            self._release()
            raise
        try:
            self._remove_leftovers()
            if (pending := self.signals.arm()) is not None:
                raise Cancelled(pending)
            return self
        except Cancelled as exc:  # a stop while the run was being taken: it ends cancelled at once
            self.__exit__(Cancelled, exc, exc.__traceback__)
            assert self.exit_code is not None
            raise NotOwned(self.message, self.exit_code) from None

    def _mark_started(self) -> None:
        if self.evaluation:
            self.run.mark_evaluation_started(self.stage, device=self.device)
        else:
            self.run.mark_started(self.stage, device=self.device)

    def _remove_leftovers(self) -> None:
        """Images a killed owner was writing: `.<name>.tmp` files under samples/ (see imagemeta.save_png)."""
        if not self.run.samples_dir.is_dir():
            return
        for tmp in self.run.samples_dir.rglob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                log(f"removed {tmp.relative_to(self.run.path)}, left half-written by a process that was stopped")

    def record_device(self, device: str) -> None:
        """The device, once known (the trainer chooses it after it owns the run)."""
        self.device = device
        if self.evaluation:
            record = dict(self.run.status().evaluation or {})
            self.run.write_status(evaluation={**record, "device": device})
        else:
            self.run.write_status(device=device)

    # -- leaving ---------------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:  # fmt: skip
        self.signals.hold()  # a second signal must not interrupt the recording of the outcome
        try:
            self.state, self.exit_code, self.message = self._outcome(exc)
            if self.state != DONE:
                log(f"{self.state}: {self.message}")
            if self.run.exists():  # the folder may have been deleted under us: do not recreate it
                self._mark_finished()
        finally:
            self.signals.restore()
            self._release()
        return True  # the outcome is recorded and the exit code says it: nothing more to raise

    def _outcome(self, exc: BaseException | None) -> tuple[str, int, str]:
        if exc is None:
            return DONE, EXIT_DONE, self.done_message
        if isinstance(exc, Cancelled | KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, Cancelled) else signal.SIGINT
            step = exc.step if isinstance(exc, Cancelled) else None
            return CANCELLED, exit_code_for_signal(signum), self._cancel_message(signum, step)
        if is_oom(exc):
            traceback.print_exception(exc)
            advice = self.oom_advice(exc) if self.oom_advice else f"out of memory: {exc}"
            return OOM, EXIT_OOM, self._in_stage(advice)
        if isinstance(exc, EngineError):  # expected: its message is the whole story
            return FAILED, EXIT_FAILED, self._in_stage(str(exc))
        traceback.print_exception(exc)
        return FAILED, EXIT_FAILED, self._in_stage(f"{type(exc).__name__}: {exc}")

    def _cancel_message(self, signum: int, step: int | None) -> str:
        where = f" at step {step}" if step else ""
        ckpt = self.run.latest_checkpoint() if self.resumable else None
        if self.resumable and self.run.lora_file.exists():  # stopped while evaluating: a relaunch only evaluates
            resume = "; relaunch to evaluate it (its LoRA is kept)"
        else:
            resume = f"; relaunch to resume from {ckpt.name}" if ckpt else ""
        return f"stopped by {signal.Signals(signum).name}{where}{resume}"

    def _in_stage(self, message: str) -> str:
        """A standalone evaluation's failure says which stage failed (`score: ...`)."""
        return f"{self.run.status().stage or self.stage}: {message}" if self.evaluation else message

    def _mark_finished(self) -> None:
        assert self.state is not None
        if self.evaluation:
            keep = self._before.state == DONE  # a re-evaluation that works keeps the training's message
            self.run.mark_evaluation_finished(self.state, self.message, self.exit_code, keep_message=keep)
        else:
            self.run.mark_finished(self.state, self.message, self.exit_code)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None


def owned_run(run: RunDir, stage: str, *, evaluation: bool | None = False, resumable: bool = False,
              device: str | None = None) -> OwnedRun:  # fmt: skip
    """This process owns `run` for the `with` block; see the module doc. Raises NotOwned on entering when
    the block cannot run (RunBusy: another process owns the run)."""
    return OwnedRun(run, stage, evaluation=evaluation, resumable=resumable, device=device)
