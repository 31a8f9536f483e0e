"""The playground (the study's demo): a client for the generation process, and its folder in the workspace.

The dashboard never loads torch, so generation happens in `python -m flux_tui.engine.playground_server`, a child
process in its own session that keeps the pipeline loaded between prompts. `PlaygroundClient` starts it,
sends JSON-line requests, reads its events from a thread (handing each to `on_event`), and shuts it down.

The requests and the folder are described in `playground_folder`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flux_tui.core.playground_folder import LOG, OPS, playground_dir

# -- the client ------------------------------------------------------------------------------------


class PlaygroundError(Exception):
    """The engine refused a request (the message says why) or is gone."""


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.event: dict[str, Any] | None = None


class PlaygroundClient:
    """Starts the engine process and talks to it. `on_event` runs on the reader thread for every event
    (progress, result, error, ready, exit); a Textual app hands it on with `call_from_thread`."""

    def __init__(
        self,
        workspace: Path,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.on_event = on_event
        self.python = python
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self.ready = threading.Event()
        self.pid: int | None = None

    @property
    def log_path(self) -> Path:
        return playground_dir(self.workspace) / LOG

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _read when the process ends
        self._log.write(f"\n=== playground started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._log.flush()
        self.ready.clear()
        # Its own session: a Ctrl-C in the terminal or a dying dashboard never leaves it half-killed, and
        # close() signals its whole group. stderr goes to a file, so an unread pipe can never block it.
        self.proc = subprocess.Popen(
            [self.python, "-u", "-m", "flux_tui.engine.playground_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=self.workspace, env={**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"},
            text=True, encoding="utf-8", bufsize=1, start_new_session=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, args=(self.proc,), name="playground-reader", daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # the engine sends only JSON here; anything else is not ours to interpret
            if not isinstance(event, dict):
                continue
            if event.get("event") == "ready":
                self.ready.set()
            if event.get("event") in ("result", "error"):
                with self._lock:
                    pending = self._pending.pop(event.get("id"), None)  # type: ignore[arg-type]
                if pending:
                    pending.event = event
                    pending.done.set()
            self._notify(event)
        code = proc.wait()
        with self._lock:
            orphans, self._pending = self._pending, {}
        message = f"the playground process exited (code {code}); its log: {self.log_path}"
        for rid, pending in orphans.items():
            pending.event = {"event": "error", "id": rid, "message": message}
            pending.done.set()
        if self._log:
            self._log.close()
        self._notify({"event": "exit", "code": code, "message": message})

    def _notify(self, event: dict[str, Any]) -> None:
        if self.on_event:
            try:
                self.on_event(event)
            except Exception as exc:  # a broken listener must not kill the reader
                print(f"playground: on_event failed: {exc!r}", file=sys.stderr)

    def request(self, op: str, **params: Any) -> int:
        """Send a request without waiting; its answer arrives as an event (and through `wait`)."""
        return self._send(op, params)[0]

    def _send(self, op: str, params: dict[str, Any]) -> tuple[int, _Pending]:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} (one of {', '.join(OPS)})")
        if not self.alive:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        rid = next(self._ids)
        pending = _Pending()
        with self._lock:
            self._pending[rid] = pending
        try:
            self.proc.stdin.write(json.dumps({"id": rid, "op": op, **params}, default=str) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            with self._lock:
                self._pending.pop(rid, None)
            raise PlaygroundError(f"the playground process is gone ({exc}); its log: {self.log_path}") from None
        return rid, pending

    def wait(self, rid: int, timeout: float | None = None) -> dict[str, Any]:
        """The answer to request `rid`; raises PlaygroundError for an error answer, TimeoutError if late."""
        with self._lock:
            pending = self._pending.get(rid)
        if pending is None:
            raise KeyError(f"no request {rid} is waiting (answered already, or never sent)")
        return self._await(rid, pending, timeout)

    @staticmethod
    def _await(rid: int, pending: _Pending, timeout: float | None) -> dict[str, Any]:
        if not pending.done.wait(timeout):
            raise TimeoutError(f"no answer to request {rid} within {timeout} s")
        event = pending.event or {}
        if event.get("event") == "error":
            raise PlaygroundError(event.get("message", "unknown error"))
        return event

    def call(self, op: str, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Send a request and wait for its answer (blocking: call it from a worker thread). Holding the
        pending entry from before the send means a fast answer cannot slip past the wait."""
        rid, pending = self._send(op, params)
        return self._await(rid, pending, timeout)

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask the process to exit; SIGTERM then SIGKILL its group if it does not. Returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self.request("shutdown")
                assert proc.stdin is not None
                proc.stdin.close()
            except (PlaygroundError, OSError, ValueError):
                pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    try:
                        os.killpg(proc.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        break
                try:
                    proc.wait(timeout if sig is None else 3.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        return proc.poll()
