"""Background work in the dashboard, and what happens when it fails.

One rule for every Textual worker: it runs with `exit_on_error=False` (Textual's default would close the app
on any exception in it), and a failure is reported by the app's one `Worker.StateChanged` handler
(`FluxApp.on_worker_state_changed`): a notification, and the traceback appended to the dashboard's log,
`<workspace>/.flux-tui/dashboard.log`. Use `background(...)` instead of `@work`, and `exit_on_error=False`
with `run_worker`; a screen or widget that runs workers mixes in `RelayWorkerErrors`, because Textual posts a
worker's state only to the node that started it (the message does not bubble). tests/test_tui_robust.py
checks the rule over the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.widget import Widget
from textual.worker import Worker, WorkerState

LOG_NAME = "dashboard.log"


def background(*, group: str = "default", exclusive: bool = True):
    """`@work` for the dashboard: in a thread, never closing the app when it raises."""
    return work(thread=True, exclusive=exclusive, group=group, exit_on_error=False)


def after_first_frame(widget: Widget, callback: Callable[[], object]) -> None:
    """Call `callback` on the event loop once the app's first frame is on the terminal (the `drawn` event
    FluxApp sets on Textual's `Ready`); at once when it is there already, or in an app without that event.
    Textual's `call_after_refresh` is not enough: the first frame takes several refreshes, and a thread
    started from one holds the GIL half the time while the frame is laid out."""
    drawn = getattr(widget.app, "drawn", None)
    if not isinstance(drawn, asyncio.Event) or drawn.is_set():
        callback()
        return

    async def when_drawn() -> None:
        await drawn.wait()
        callback()

    widget.run_worker(when_drawn(), group="first-frame", exclusive=False, exit_on_error=False)


class RelayWorkerErrors:
    """For a screen or widget that runs workers: hands a failed worker's state on to the app."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        app = self.app  # type: ignore[attr-defined]
        if event.state is WorkerState.ERROR and app is not self:
            app.post_message(Worker.StateChanged(event.worker, event.state))


def log_path(workspace: Path) -> Path:
    return Path(workspace) / ".flux-tui" / LOG_NAME


def describe(worker: Worker) -> str:
    """`leaderboard (LeaderboardScreen): ValueError: ...`: which work failed, and how."""
    what = worker.group if worker.group != "default" else worker.name
    err = worker.error
    why = f"{type(err).__name__}: {err}" if err is not None else "failed"
    return f"{what} ({type(worker.node).__name__}): {why}"


def append_log(path: Path, headline: str, error: BaseException | None = None) -> bool:
    """Append a dated entry (and the traceback) to the dashboard's log; False when it cannot be written."""
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S')} {headline}\n"]
    if error is not None:
        lines += traceback.format_exception(type(error), error, error.__traceback__)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(lines)
        return True
    return False
