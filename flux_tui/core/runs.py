"""Run folders: the one module through which every wing reads and writes `runs/<name>/`.

The folder is the truth. A run's process writes `status.json` (atomically), `events.jsonl` and `train.log`;
the dashboard and the CLI only read them, and rebuild everything from disk after a restart.

status.json: `state`, `stage`, `exit_code`, `message` and `log_tail` say where the run is and why (the outcome
of the last process that owned it; `pid`, `pgid`, `process_start`, `host` name that process). `started_at`,
`finished_at` and `device` are the training's. An evaluation (`flux-tui evaluate`, the ablation, or a launch
of a trained run whose evaluation failed or was stopped: `is_trained`) leaves those alone and records its
own times, device, state, exit code and message under `evaluation`; a
run without a training of its own (an ablation pseudo-run) shows the evaluation's times at the top too.

    runs/<name>/
        run.json        resolved config, its hashes, where it came from
        status.json     state, stage, pid + process start time, timestamps, exit code, message
        train.log       everything the process printed
        events.jsonl    one JSON record per line: steps, samples, checkpoints, stages
        lora/           pytorch_lora_weights.safetensors (diffusers format); best/ the same for the best
                        step of the score curve
        curve/          step-<N>/: the LoRA at each evaluated step while training (best/ is copied from
                        here when training ends, then the folder goes)
        checkpoints/    checkpoint-<step>/
        samples/        step_<N>/*.png, eval/*.png, curve/step-<N>/*.png (the curve's images)
        scores.json     evaluation scores
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic validates only this one on Python 3.11

from flux_tui.core import curve as curves
from flux_tui.core import procs, runfiles, runlock
from flux_tui.core.config import EVAL_KEYS, RUNTIME_KEYS, Experiment, Study
from flux_tui.core.fsutil import append_jsonl, append_jsonl_records, atomic_write_json
from flux_tui.core.runfiles import Count, Int, Pid, Read, Text, Texts, Time

# States a run can be in. `new` is a run with no folder (or no status yet).
NEW, QUEUED, RUNNING, DONE, FAILED, CANCELLED, OOM = "new", "queued", "running", "done", "failed", "cancelled", "oom"
STATES = (NEW, QUEUED, RUNNING, DONE, FAILED, CANCELLED, OOM)  # what status.json may say
# Never written: a run whose status.json or run.json cannot be used (or whose status.json is missing while
# its events or scores say it ran). Launching it is refused until the user decides.
DAMAGED = "damaged"
FINISHED = frozenset({DONE, FAILED, CANCELLED, OOM})
STAGES = ("prepare", "train", "generate", "score")
KIND_EXPERIMENT, KIND_ABLATION = "experiment", "ablation"  # run.json "kind"; absent means experiment
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name for a LoRA in a folder
BEST = "best"  # `runs/exp03@best`: the LoRA of a run's best step


def _known_state(v: str) -> str:
    if v not in STATES:
        raise ValueError(f"expected one of {', '.join(STATES)}")
    return v


State = Annotated[str, Field(strict=True), AfterValidator(_known_state)]


class Evaluation(TypedDict, total=False):
    """status.json's `evaluation`: the last standalone evaluation's own record (validated like the rest; a key
    it does not know means the record is not ours)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    state: State
    stage: Text | None
    pid: Pid | None
    started_at: Time | None
    finished_at: Time | None
    device: Text | None
    exit_code: Int | None
    message: Text
READ_ONLY = ("damage", "recovered")  # Status fields found when reading, never written to status.json


@dataclass
class Status:
    __pydantic_config__ = ConfigDict(allow_inf_nan=False, defer_build=True)  # status.json is validated against these fields

    state: State = NEW
    stage: Text | None = None
    pid: Pid | None = None
    pgid: Pid | None = None
    process_start: Time | None = None  # psutil create_time of `pid`, to tell a reused pid apart
    host: Text | None = None
    queued_at: Time | None = None
    started_at: Time | None = None
    updated_at: Time | None = None
    finished_at: Time | None = None
    exit_code: Int | None = None
    message: Text = ""
    log_tail: Texts = field(default_factory=list)
    device: Text | None = None  # "cpu" or "cuda:N" (the physical GPU index)
    executor: Text | None = None  # which executor runs it ("local"; None: local, as before executors)
    job_id: Text | None = None  # the executor's handle where it has one (a batch job); local runs: None
    stop_signal: Text | None = None  # "SIGKILL" when a stop killed it: whoever records the end says cancelled
    queued_from: Text | None = None  # the state it had when queued: taking it off the queue goes back to it
    # The last standalone evaluation: {state, stage, pid, started_at, finished_at, device, exit_code, message}.
    evaluation: Evaluation | None = None
    # A batch job's side (Slurm): what the batch system last said of `job_id` (PENDING, RUNNING, FAILED, ...)
    # and why (Resources, PartitionDown, ...), and how far the run was when the job was submitted (the newest
    # checkpoint's step), so a run that its time limit stopped is resubmitted only while it gets further.
    job_state: Text | None = None
    job_reason: Text | None = None
    job_from_step: Count | None = None
    damage: str | None = None  # why the folder's record cannot be trusted (status.json or run.json unusable)
    recovered: str | None = None  # for a damaged run: the state its other files show (scores.json: done)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Status:
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if not isinstance(values.get("evaluation"), dict):
            values["evaluation"] = None
        return cls(**values)

    @property
    def evaluating(self) -> bool:
        """A standalone evaluation owns the run now (or did, if its process vanished)."""
        return self.state == RUNNING and (self.evaluation or {}).get("state") == RUNNING

    def to_file(self) -> dict[str, Any]:
        """What status.json holds (the fields found on reading left out)."""
        return {k: v for k, v in asdict(self).items() if k not in READ_ONLY}

    @property
    def label(self) -> str:
        """What a table shows: the state, with the stage while running (`running:train`), with what a damaged
        run's files still show (`damaged (done)`)."""
        if self.state == RUNNING and self.stage:
            return f"{self.state}:{self.stage}"
        if self.state == DAMAGED and self.recovered:
            return f"{self.state} ({self.recovered})"
        return self.state


STATUS_FILE: TypeAdapter[Status] = TypeAdapter(Status)


class RunDir:
    """One run's folder. Cheap to construct; every read goes to disk."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- paths
    run_json = property(lambda self: self.path / "run.json")
    status_json = property(lambda self: self.path / "status.json")
    train_log = property(lambda self: self.path / "train.log")
    events_jsonl = property(lambda self: self.path / "events.jsonl")
    lora_dir = property(lambda self: self.path / "lora")
    lora_file = property(lambda self: self.path / "lora" / LORA_FILE)
    best_lora_dir = property(lambda self: self.path / "lora" / "best")  # the LoRA of the curve's best step
    best_lora_file = property(lambda self: self.path / "lora" / "best" / LORA_FILE)
    curve_dir = property(lambda self: self.path / "curve")  # LoRAs of the evaluated steps, while training
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    samples_dir = property(lambda self: self.path / "samples")
    eval_dir = property(lambda self: self.path / "samples" / "eval")
    data_dir = property(lambda self: self.path / "data")  # the prepared training images
    scores_json = property(lambda self: self.path / "scores.json")
    slurm_script = property(lambda self: self.path / "slurm.sbatch")  # the batch script of a Slurm run

    def exists(self) -> bool:
        return self.run_json.exists()

    # -- config
    def read_run(self) -> dict[str, Any] | None:
        """run.json, validated; None when it is missing or unusable (`status()` then says `damaged`)."""
        return runfiles.read_run(self.run_json).value

    def config(self) -> dict[str, Any]:
        """The resolved settings the run was (or will be) trained with; {} when run.json is missing or
        damaged (`status()` then says `damaged`, and `config.settings_from_dict` refuses {})."""
        run = self.read_run() or {}
        return dict(run.get("config", {}))

    @property
    def kind(self) -> str:
        """`experiment` for a run of the study file; pseudo-runs (the ablation's) say what they are."""
        return str((self.read_run() or {}).get("kind", KIND_EXPERIMENT))

    def lora_source(self) -> Path | None:
        """The LoRA this run evaluates: its own trained file, or for a pseudo-run what run.json's `lora`
        names (null: the base model without any LoRA)."""
        run = self.read_run() or {}
        if "lora" in run:
            return Path(run["lora"]) if run["lora"] else None
        return self.lora_file

    def write_run(self, experiment: Experiment, study: Study, extra: dict[str, Any] | None = None) -> None:
        """Write run.json; `extra` adds keys (a pseudo-run's `kind`, `lora`, `source_run`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.run_json,
            {
                "name": experiment.name,
                "number": experiment.number,
                "group": experiment.group,
                "description": experiment.description,
                "config": experiment.config_dict(),
                "config_hash": experiment.config_hash,
                "train_hash": experiment.train_hash,
                "study_file": str(Path(study.file).resolve()),
                "workspace": str(study.workspace.root),
                "cache_dir": str(study.workspace.cache_dir),
                "created_at": time.time(),
                **(extra or {}),
            },
        )

    def changed_keys(self, experiment: Experiment) -> list[str]:
        """Settings whose value differs between the run's folder and the file now (empty: not stale). Runtime
        settings (`torch_compile`) are left out: they change how a run computes, not what it trains."""
        stored = self.config()
        if not stored:
            return []
        current = experiment.config_dict()
        keys = (set(stored) | set(current)) - RUNTIME_KEYS
        return sorted(k for k in keys if stored.get(k) != current.get(k))

    def stale(self, experiment: Experiment) -> str | None:
        """None when the folder matches the file, else a one-line reason naming the changed keys."""
        keys = self.changed_keys(experiment)
        if not keys:
            return None
        train = [k for k in keys if k not in EVAL_KEYS]
        which = "training" if train else "evaluation"
        return f"{which} settings changed since it ran: {', '.join(train or keys)}"

    # -- status
    def _read_status(self) -> Read[Status]:
        read = runfiles.read_strict(self.status_json, STATUS_FILE, required=("state",))
        if read.value is None:
            return read
        return Read(replace(read.value, damage=None, recovered=None), True)

    def status(self) -> Status:
        """The run's state. status.json when it and run.json are sound; else what can be told without them:
        `running` while a live process holds the run's lock, `damaged` (with the reason and what the events
        and scores still show) when the files cannot be trusted, `new` when nothing says the run ever ran."""
        read = self._read_status()
        run = runfiles.read_run(self.run_json)
        if read.value is not None and not run.damaged:
            return read.value
        return _recover(self, read, run)

    def write_status(self, **changes: Any) -> Status:
        """Merge `changes` into status.json, written atomically. Returns the new status. A damaged status.json
        is kept aside (status.json.damaged-<time>) rather than overwritten: nothing is lost."""
        read = self._read_status()
        current = read.value if read.value is not None else self.status()
        if current.state == DAMAGED:
            current = replace(current, state=current.recovered or NEW, message="")
        if read.damaged:
            _set_aside(self.status_json)
        data = {**current.to_file(), **changes, "updated_at": time.time()}
        status = Status.from_dict({k: v for k, v in data.items() if k not in READ_ONLY})
        atomic_write_json(self.status_json, status.to_file())
        return status

    def mark_started(self, stage: str, pid: int | None = None, device: str | None = None) -> Status:
        pid = pid or os.getpid()
        return self.write_status(
            state=RUNNING,
            stage=stage,
            pid=pid,
            pgid=_pgid(pid),
            process_start=procs.start_time(pid),
            host=socket.gethostname(),
            started_at=time.time(),
            finished_at=None,
            exit_code=None,
            message="",
            log_tail=[],
            device=device,
            evaluation=None,  # a new training: an earlier standalone evaluation no longer describes it
            **self._owner_now(),
        )

    def _owner_now(self) -> dict[str, Any]:
        """Who runs the process now starting: inside this run's own Slurm batch job (its job name says so),
        that job, keeping a stop asked for while it was starting (submitting it cleared any older one);
        anywhere else a local process, which owes nothing to a job status.json still names (a standalone
        evaluation after a Slurm run). Executor names as in core/executor.py."""
        job = os.environ.get("SLURM_JOB_ID", "")
        if os.environ.get("SLURM_JOB_NAME") == f"flux-tui/{self.name}" and job.isdigit():
            same = self.status().job_id == job
            return {"executor": "slurm", "job_id": job, **({} if same else {"stop_signal": None})}
        if self.status().job_id:
            return {"executor": "local", "job_id": None, "stop_signal": None}
        return {"stop_signal": None}

    def has_training_record(self, status: Status) -> bool:
        """Whether the top of status.json describes a training (the evaluation must keep it): an experiment
        that has run, and whose times are not an earlier evaluation's."""
        if status.started_at is None or self.kind != KIND_EXPERIMENT:
            return False
        return (status.evaluation or {}).get("started_at") != status.started_at

    def is_trained(self, status: Status) -> bool:
        """Whether a process that starts on the run now only evaluates it: its LoRA is there and the top of
        status.json is the training that made it (a relaunch after a failed or stopped evaluation)."""
        return self.lora_file.exists() and self.has_training_record(status)

    def launch_changes(self, **started: Any) -> dict[str, Any]:
        """What a launcher (the local one, a Slurm job as it starts) writes to status.json for the process it
        starts, from `started` (state, stage, pid, host, device...): the launch's time, no outcome yet. A
        trained run is only evaluated (`is_trained`): its training's times, device and message stay, and the
        launch is recorded under `evaluation`, as a standalone evaluation's is."""
        now = time.time()
        changes = {"started_at": now, "finished_at": None, "exit_code": None, "message": "", "log_tail": [],
                   **started}  # fmt: skip
        if not self.is_trained(self.status()):
            return changes
        record = {"state": RUNNING, "stage": changes.get("stage"), "pid": changes.get("pid"), "started_at": now,
                  "finished_at": None, "device": changes.get("device"), "exit_code": None, "message": ""}  # fmt: skip
        training = ("started_at", "finished_at", "device", "message")
        return {**{k: v for k, v in changes.items() if k not in training}, "evaluation": record}

    def mark_evaluation_started(self, stage: str, pid: int | None = None, device: str | None = None) -> Status:
        """A standalone evaluation takes the run: running at `stage` with its pid (what every reader checks),
        its own record under `evaluation`, the training's times, device and message kept."""
        pid = pid or os.getpid()
        now = time.time()
        current = self.status()
        record = {"state": RUNNING, "stage": stage, "pid": pid, "started_at": now, "finished_at": None,
                  "device": device, "exit_code": None, "message": ""}  # fmt: skip
        changes: dict[str, Any] = dict(
            state=RUNNING, stage=stage, pid=pid, pgid=_pgid(pid), process_start=procs.start_time(pid),
            host=socket.gethostname(), exit_code=None, log_tail=[], evaluation=record, **self._owner_now(),
        )  # fmt: skip
        if not self.has_training_record(current):
            changes.update(started_at=now, finished_at=None, device=device, message="")
        return self.write_status(**changes)

    def mark_evaluation_finished(self, state: str, message: str = "", exit_code: int | None = None,
                                 keep_message: bool = False) -> Status:  # fmt: skip
        """The evaluation's outcome: the run's state, exit code and (unless it is done and `keep_message`)
        message; its record under `evaluation`. The training's times and device stay."""
        return self.write_status(**self._as_evaluation_end(self._end(state, message, exit_code), keep_message))

    def mark_ended(self, state: str, message: str = "", exit_code: int | None = None) -> Status:
        """How a run's process ended, recorded by someone other than that process (its supervisor, a reader
        that finds it gone): an evaluation's end under `evaluation`, the training's record kept."""
        return self.write_status(**self.end_changes(self._end(state, message, exit_code)))

    def mark_finished(self, state: str, message: str = "", exit_code: int | None = None) -> Status:
        return self.write_status(**self._end(state, message, exit_code))

    def _end(self, state: str, message: str, exit_code: int | None) -> dict[str, Any]:
        return {"state": state, "finished_at": time.time(), "exit_code": exit_code, "message": message,
                "log_tail": self.log_tail(20) if state in (FAILED, OOM) else []}  # fmt: skip

    def end_changes(self, changes: dict[str, Any]) -> dict[str, Any]:
        """`changes` that record a process's end (state, finished_at, message...), as an evaluation's end
        when the run is being evaluated (a Slurm job's end is written this way)."""
        return self._as_evaluation_end(changes) if self.status().evaluating else changes

    def _as_evaluation_end(self, changes: dict[str, Any], keep_message: bool = False) -> dict[str, Any]:
        current = self.status()
        record = {**(current.evaluation or {}), "state": changes["state"], "stage": current.stage,
                  "finished_at": changes["finished_at"], "exit_code": changes.get("exit_code"),
                  "message": changes.get("message", "")}  # fmt: skip
        out = {**changes, "evaluation": record}
        if self.has_training_record(current):  # the top stays the training's: its end, and a done one's message
            del out["finished_at"]
            if changes["state"] == DONE and keep_message:
                out.pop("message", None)
        return out

    def is_process_alive(self, status: Status | None = None) -> bool:
        status = status or self.status()
        if status.host and status.host != socket.gethostname() or status.job_id:
            return True  # another machine's process or a batch job's: we cannot tell, so we do not touch it
        return procs.is_alive(status.pid, status.process_start)

    def is_owned(self) -> bool:
        """Some live process of this machine still holds the run's lock (its supervisor, about to record how
        the trainer ended, or the trainer's own helpers)."""
        return runlock.holder(self.path) is not None

    def reconcile(self) -> Status:
        """A run marked running whose process is gone, and which nobody owns any more (so nobody is left to
        record how it ended), is failed with the reason, or cancelled when a stop killed it. A status recovered
        from a damaged folder is only shown, never written back."""
        status = self.status()
        if status.damage:
            return status
        if status.state == RUNNING and not self.is_process_alive(status) and not self.is_owned():
            if status.stop_signal:
                return self.mark_ended(
                    CANCELLED, f"killed with {status.stop_signal} on request; work since the last checkpoint is lost"
                )
            where = status.stage or "running"
            return self.mark_ended(FAILED, f"process {status.pid} vanished while {where} (killed or crashed)")
        return status

    # -- events, logs, results
    def events(self) -> list[dict[str, Any]]:
        return list(self.iter_events())

    def iter_events(self, kind: str | None = None, problems: runfiles.EventProblems | None = None) -> Iterator[dict[str, Any]]:
        """The records of events.jsonl that validate (`runfiles.parse_event`); the others are skipped (and
        counted in `problems`). A half-written last line is skipped too."""
        try:
            fh = open(self.events_jsonl, encoding="utf-8", errors="replace")  # noqa: SIM115 - generator owns it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        with fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                ev, why = runfiles.parse_event(line)
                if ev is None:
                    if problems is not None and line.endswith("\n"):
                        problems.add(line_no, why or "")
                    continue
                if kind is None or ev.get("type") == kind:
                    yield ev

    def append_event(self, kind: str, **data: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.events_jsonl, {"type": kind, "t": round(time.time(), 3), **data})

    def append_events(self, kind: str, records: Iterable[dict[str, Any]]) -> None:
        """Several records of one kind in one write (the trainer's steps since it last reported)."""
        self.path.mkdir(parents=True, exist_ok=True)
        t = round(time.time(), 3)
        append_jsonl_records(self.events_jsonl, ({"type": kind, "t": t, **data} for data in records))

    def log_tail(self, n: int = 20) -> list[str]:
        try:
            with open(self.train_log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                lines = fh.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[-n:]

    def read_scores(self) -> Read[dict[str, Any]]:
        """scores.json validated: its sound values, and in `problem` what was left out or why it is unusable."""
        return runfiles.read_scores(self.scores_json)

    def scores(self) -> dict[str, Any] | None:
        return self.read_scores().value

    def checkpoints(self) -> list[Path]:
        """Saved checkpoints, oldest first (by step)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def checkpoint_eval_dir(self, step: int) -> Path:
        """Evaluation images of checkpoint `step` (with `eval_checkpoints`): samples/eval/checkpoint-<step>/."""
        return self.eval_dir / f"checkpoint-{step}"

    def eval_images(self, step: int | None = None) -> list[Path]:
        """The evaluation PNGs of the final LoRA (or of checkpoint `step`), by name."""
        folder = self.eval_dir if step is None else self.checkpoint_eval_dir(step)
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    def curve_lora_dir(self, step: int) -> Path:
        return self.curve_dir / f"step-{step}"

    def curve_images_dir(self, step: int) -> Path:
        """The images the evaluation at `step` during training made (and scored): samples/curve/step-<N>/."""
        return self.samples_dir / "curve" / f"step-{step}"

    def curve(self) -> curves.CurveReader:
        """The score curve as the events record it (core.curve)."""
        return curves.from_events(self.iter_events())

    def latest_checkpoint(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None


# -- what a damaged folder still tells ---------------------------------------------------------------


def repair_hint(run: RunDir, files: list[str]) -> str:
    """How the user decides about a damaged run."""
    which = " or ".join(files) or "the damaged file"
    return (f"To launch it again, fix or delete its {which}, or reset it (`R` in the dashboard, or flux-tui "
            f"reset {run.name}: the folder moves to runs/.old/, nothing is deleted) to start it afresh.")


def _recover(run: RunDir, status: Read[Status], meta: Read[dict[str, Any]]) -> Status:
    """The status of a run whose status.json is missing or unusable, or whose run.json is unusable."""
    problems = [r.problem for r in (status, meta) if r.damaged and r.problem]
    found = _evidence(run)
    owner = runlock.holder(run.path)
    if not status.present and (found["ran"] or owner is not None):
        problems.insert(0, "status.json is missing")
    base = status.value or Status()
    if owner is not None:  # a live process owns the run: it runs, whatever its files say
        pid = owner or base.pid
        live = base if base.state == RUNNING else Status(stage=found["stage"], started_at=found["started_at"])
        return replace(live, state=RUNNING, pid=pid, pgid=_pgid(pid) if pid else None,
                       damage="; ".join(problems) or None)  # fmt: skip
    if not problems:
        return base  # no status yet and nothing says it ran: new
    recovered = base.state if status.value is not None else found["state"]
    said = "; ".join(found["said"]) or "nothing else in the folder says how far it got"
    files = [name for name, r in (("status.json", status), ("run.json", meta)) if r.damaged]
    return replace(
        base if status.value is not None else Status(started_at=found["started_at"], finished_at=found["finished_at"]),
        state=DAMAGED, damage="; ".join(problems), recovered=recovered,
        message=f"What the folder still says: {said}. {repair_hint(run, files or ['status.json'])}",
    )  # fmt: skip


def _evidence(run: RunDir) -> dict[str, Any]:
    """What events.jsonl, scores.json and the LoRA say of a run: whether it ran, how far, and the state they
    prove (scores: it was evaluated, so done)."""
    said: list[str] = []
    first = last = stage = step = None
    for ev in run.iter_events():
        first = first or ev
        last = ev
        if ev["type"] == "stage":
            stage = ev["stage"]
        elif ev["type"] == "step":
            step = ev
    if step is not None:
        said.append(f"events.jsonl reached step {step['step']}" + (f"/{step['total']}" if step.get("total") else ""))
    if stage:
        said.append(f"its last stage was {stage}")
    scores = run.read_scores()
    if scores.value:
        said.append("scores.json holds its scores (it was evaluated: done)")
    elif run.lora_file.exists():
        said.append("its LoRA was exported (trained, not evaluated)")
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        said.append(f"its newest checkpoint is {ckpt.name}")
    finished = (scores.value.get("scored_at") or (last or {}).get("t")) if scores.value else None
    return {
        "ran": first is not None or scores.present, "said": said, "stage": stage,
        "state": DONE if scores.value else None,
        "started_at": (first or {}).get("t"), "finished_at": finished,
    }  # fmt: skip


def _set_aside(path: Path) -> None:
    """Keep a damaged file beside its replacement (`<name>.damaged-<time>`), never delete it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    with contextlib.suppress(OSError):  # gone meanwhile, or a folder in its place: the write will say so
        os.replace(path, target)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def split_lora_ref(ref: str | Path) -> tuple[Path, str | None]:
    """`runs/exp03@best` -> (runs/exp03, "best"); anything else -> (the path, None). Only a suffix naming a
    step that is kept as a LoRA counts (`best`), so a file whose name holds an @ stays a file."""
    text = str(ref)
    head, sep, tail = text.rpartition("@")
    if sep and tail == BEST and head:
        return Path(head).expanduser(), tail
    return Path(text).expanduser(), None


def run_dir(study: Study, name: str) -> RunDir:
    return RunDir(study.workspace.runs_dir / name)


def prepare(study: Study, experiment: Experiment) -> RunDir:
    """Create or refresh the folder of a run about to start. run.json is rewritten only when the run has
    no training yet (a stale run with a LoRA must be reset by the user, never silently mixed)."""
    data = Path(experiment.settings.data_dir)
    if not data.is_dir():
        raise LaunchError(
            f"{study.file}: run {experiment.name!r}: data_dir {data} does not exist; put the subject's photos "
            "there or point data_dir at them"
        )
    run = run_dir(study, experiment.name)
    status = run.status()
    if status.state == DAMAGED:
        raise DamagedRunError(run, status)
    stored = run.read_run()
    if stored is None or not run.lora_file.exists() and not run.checkpoints():
        run.write_run(experiment, study)
    elif stored.get("train_hash") != experiment.train_hash:
        raise StaleRunError(run, run.stale(experiment) or "settings changed")
    elif stored.get("config_hash") != experiment.config_hash:
        run.write_run(experiment, study)  # only evaluation settings changed: the LoRA stays valid
    return run


class LaunchError(Exception):
    """A run that cannot start as configured; the message says why and what to do."""


class StaleRunError(LaunchError):
    def __init__(self, run: RunDir, reason: str):
        self.run = run
        super().__init__(
            f"run {run.name!r} was trained with other settings ({reason}); reset it (`R` in the dashboard, or "
            f"`flux-tui reset {run.name}`: its folder moves to runs/.old/) or give the experiment a new name"
        )


class DamagedRunError(LaunchError):
    """The run's folder cannot be trusted (status.json or run.json unusable): nothing starts it until the
    user has looked."""

    def __init__(self, run: RunDir, status: Status):
        self.run = run
        super().__init__(f"run {run.name!r} is damaged ({status.damage}); it was not started. {status.message}")


def elapsed(status: Status, now: float | None = None) -> float | None:
    if status.started_at is None:
        return None
    ended = status.state in FINISHED or status.evaluating  # a trained run's evaluation: the training's time
    end = status.finished_at if ended and status.finished_at else (now or time.time())
    return max(0.0, end - status.started_at)
