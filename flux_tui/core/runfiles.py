"""What the files of a run folder may hold, checked once, where they are read.

A run folder is data from outside: a crash, a full disk, a user's editor or another version of flux-tui may
have left anything in it. `status.json`, `run.json`, `scores.json` and each `events.jsonl` record are parsed
and validated here (pydantic); everything after this module can trust their types and ranges. A file that
cannot be used comes back with a one-line reason (`scores.json unreadable: faceless_images: ...`), never as
an exception.

How much is kept of a file with a bad value:
- `status.json` and `run.json` steer launching and resuming: any bad value makes the whole file unusable,
  and the run is shown `damaged` (`runs.RunDir.status`).
- `scores.json` is only shown: a bad value (or a bad row of a list) is left out and named; the rest stays.
- an `events.jsonl` record with a bad value is skipped and counted.
Numbers are finite and within the range their use needs (a time a clock can show, a pid Linux can have);
an integral float (`4.0`) is accepted where an integer is expected.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)

from flux_tui.core.metrics import METRICS, PER_PROMPT_KEYS

T = TypeVar("T")

MAX_TIME = 253_402_300_799.0  # 9999-12-31: any later "time" is damage, and a clock cannot show it
MAX_COUNT = 10**9  # steps, images, bytes/1000...: a count beyond this is damage
MAX_BYTES = 2**60
MAX_PID = 4_194_304  # Linux's PID_MAX_LIMIT


def _integral(v: Any) -> Any:
    """An integer, or a float with no fraction (`4.0`, as some JSON writers put counts); never a bool."""
    if isinstance(v, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(v, float):
        if not math.isfinite(v) or not v.is_integer():
            raise ValueError("expected an integer")
        return int(v)
    return v


def _finite(v: Any) -> Any:
    """A finite number; never a bool, a string or an integer too large for a float."""
    if isinstance(v, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            raise ValueError("number too large") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("expected a finite number")
    return v


Int = Annotated[int, BeforeValidator(_integral), Field(strict=True, ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, BeforeValidator(_integral), Field(strict=True, ge=0, le=MAX_COUNT)]
Step = Annotated[int, BeforeValidator(_integral), Field(strict=True, ge=1, le=MAX_COUNT)]  # a trained step
Bytes = Annotated[int, BeforeValidator(_integral), Field(strict=True, ge=0, le=MAX_BYTES)]
Pid = Annotated[int, BeforeValidator(_integral), Field(strict=True, ge=0, le=MAX_PID)]
Number = Annotated[float, BeforeValidator(_finite), Field(strict=True)]
Seconds = Annotated[float, BeforeValidator(_finite), Field(strict=True, ge=0, le=MAX_TIME)]
Time = Seconds  # seconds since the epoch
Text = Annotated[str, Field(strict=True)]
Texts = list[Text]
Flag = Annotated[bool, Field(strict=True)]  # true or false, never "no" or 0


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("a path cannot hold a NUL character")
    return v


PathText = Annotated[str, Field(strict=True, min_length=1, max_length=4096), AfterValidator(_no_nul)]


@dataclass(frozen=True)
class Read(Generic[T]):
    """What reading one file gave: its validated `value` (None when missing or unusable), whether the file
    is there, and `problem`: why it is unusable, or what was left out of it."""

    value: T | None
    present: bool
    problem: str | None = None

    @property
    def damaged(self) -> bool:
        """There, but unusable."""
        return self.present and self.value is None


def load_json(path: Path) -> Read[Any]:
    """The parsed JSON of `path` (any JSON value), or why it cannot be parsed."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return Read(None, False)
    except OSError as exc:
        return Read(None, True, f"{Path(path).name} unreadable: {exc.strerror or exc}")
    try:
        return Read(json.loads(raw.decode("utf-8")), True)
    except UnicodeDecodeError as exc:
        return Read(None, True, f"{Path(path).name} unreadable: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        why = "empty" if not raw.strip() else f"not JSON ({exc})" if not isinstance(exc, RecursionError) else "too deep"
        return Read(None, True, f"{Path(path).name} unreadable: {why}")


def describe(exc: ValidationError, limit: int = 3) -> str:
    """`faceless_images: expected a list (got 3)`: the first `limit` errors, each with where and what."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(x) for x in err["loc"]) or "(the whole file)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = repr(err.get("input"))
        parts.append(f"{where}: {msg} (got {got if len(got) <= 40 else got[:37] + '...'})")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _object(name: str, read: Read[Any]) -> Read[dict[str, Any]]:
    if not read.present or read.problem is not None or isinstance(read.value, dict):
        return read  # type: ignore[return-value]
    got = "null" if read.value is None else type(read.value).__name__
    return Read(None, True, f"{name} unreadable: expected a JSON object, got {got}")


# -- status.json and run.json: all or nothing -------------------------------------------------------


def read_strict(path: Path, adapter: TypeAdapter[T], required: tuple[str, ...] = ()) -> Read[T]:
    """A file that is used whole or not at all (status.json, run.json); `required`: keys it must have."""
    name = Path(path).name
    read = _object(name, load_json(path))
    if read.value is None:
        return Read(None, read.present, read.problem)
    missing = [k for k in required if k not in read.value]
    if missing:
        return Read(None, True, f"{name} unreadable: no {', '.join(missing)}")
    try:
        return Read(adapter.validate_python(read.value), True)
    except ValidationError as exc:
        return Read(None, True, f"{name} unreadable: {describe(exc)}")


class RunFile(BaseModel):
    """run.json (written by `RunDir.write_run`; pseudo-runs add kind, lora, source_run, variant...)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, defer_build=True)

    name: Text | None = None
    number: Int | None = None
    group: Text = ""
    description: Text = ""
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: Text | None = None
    train_hash: Text | None = None
    study_file: Text | None = None
    workspace: Text | None = None
    cache_dir: Text | None = None
    created_at: Time | None = None
    kind: Text = "experiment"
    lora: PathText | None = None
    source_run: Text | None = None


RUN_FILE = TypeAdapter(RunFile)


def read_run(path: Path) -> Read[dict[str, Any]]:
    """run.json as a dict (unset keys stay unset: `"lora" in run` tells a pseudo-run), its `config` checked
    against the settings a run can have."""
    from flux_tui.core.config import Settings  # the one definition of a run's settings

    read = read_strict(path, RUN_FILE)
    if read.value is None:
        return Read(None, read.present, read.problem)
    data = read.value.model_dump(exclude_unset=True)
    problem = config_problem(read.value.config, Settings)
    return Read(None, True, f"run.json unreadable: config: {problem}") if problem else Read(data, True)


# What makes a stored config unusable: a value of the wrong type. A range or choice that a later version
# refuses, or a key it no longer has, is not damage: the run was trained with it, and it shows as it is.
_NOT_DAMAGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "too_short",
               "too_long", "string_too_short", "string_too_long", "literal_error", "value_error", "extra_forbidden",
               "missing"}  # fmt: skip


def config_problem(config: dict[str, Any], model: type[BaseModel]) -> str | None:
    if not config:
        return None
    try:
        model(**config)
    except ValidationError as exc:
        wrong = [e for e in exc.errors() if e["type"] not in _NOT_DAMAGE]
        if wrong:
            return describe(ValidationError.from_exception_data(exc.title, wrong))  # type: ignore[arg-type]
    except TypeError as exc:  # a key that is not a valid identifier
        return str(exc)
    return None


# -- scores.json: keep what is right, name what is not ------------------------------------------------


def _metric_fields(keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A field per metric of the table (counts as integers, scores as finite numbers), all optional."""
    return {m.key: (Count | None if m.is_count else Number | None, None)
            for m in METRICS if keys is None or m.key in keys}  # fmt: skip


_ROW = ConfigDict(extra="allow", allow_inf_nan=False, defer_build=True)
PerImage = create_model(
    "PerImage", __config__=_ROW, image=(PathText | None, None), prompt=(Text | None, None), seed=(Int | None, None),
    guidance_scale=(Number | None, None), face=(Flag | None, None), **_metric_fields(),
)  # fmt: skip
PerPrompt = create_model(
    "PerPrompt", __config__=_ROW, prompt=(Text | None, None), images=(Texts | None, None),
    **_metric_fields(PER_PROMPT_KEYS),
)  # fmt: skip
PerGuidance = create_model("PerGuidance", __config__=_ROW, guidance_scale=(Number | None, None), **_metric_fields())
PerCheckpoint = create_model("PerCheckpoint", __config__=_ROW, step=(Count, ...), **_metric_fields())
CurvePoint = create_model("CurvePoint", __config__=_ROW, step=(Step, ...), **_metric_fields())  # core.curve


class EarlyStop(BaseModel):
    """Why and where training stopped before its last step (scores.json's `early_stop`, core.curve)."""

    model_config = _ROW

    step: Count
    total: Count | None = None
    best_step: Count | None = None
    patience: Count | None = None
    reason: Text | None = None


class BaseModelUsed(BaseModel):
    """scores.json's `base`: which base model made the evaluation images (from their metadata)."""

    model_config = _ROW

    model: Text | None = None
    revision: Text | None = None
    quantize: Text | None = None


def _per_prompt_list(v: Any) -> Any:
    """per_prompt as a list of rows (an older writer kept a mapping by prompt)."""
    if isinstance(v, dict):
        return [{"prompt": k, **r} if isinstance(r, dict) else r for k, r in v.items()]
    return v


Scores = create_model(
    "Scores",
    __config__=_ROW,
    faceless_images=(list[PathText] | None, None),
    face_distance_n=(Count | None, None),
    per_prompt=(Annotated[list[PerPrompt], BeforeValidator(_per_prompt_list)] | None, None),  # type: ignore[valid-type]
    per_image=(list[PerImage] | None, None),  # type: ignore[valid-type]
    per_guidance=(list[PerGuidance] | None, None),  # type: ignore[valid-type]
    checkpoints=(list[PerCheckpoint] | None, None),  # type: ignore[valid-type]
    curve=(list[CurvePoint] | None, None),  # type: ignore[valid-type]
    best_step=(Step | None, None),
    best_lora=(PathText | None, None),
    early_stop=(EarlyStop | None, None),
    base=(BaseModelUsed | None, None),
    reference=(dict[str, Any] | None, None),
    models=(dict[str, Any] | None, None),
    run=(Text | None, None),
    kind=(Text | None, None),
    lora=(Text | None, None),
    scored_at=(Time | None, None),
    **_metric_fields(),
)


def _drop(data: dict[str, Any], locs: list[tuple[Any, ...]]) -> bool:
    """Remove what each error points at: a bad row of a list, else the top-level key. False when nothing
    could be removed (the error is about the whole object)."""
    rows: dict[str, set[int]] = {}
    keys: set[str] = set()
    for loc in locs:
        if not loc or loc[0] not in data:
            continue
        key = loc[0]
        if len(loc) >= 3 and isinstance(loc[1], int) and isinstance(data[key], list):
            rows.setdefault(key, set()).add(loc[1])
        else:
            keys.add(key)
    for key, idx in rows.items():
        if key not in keys:
            data[key] = [r for i, r in enumerate(data[key]) if i not in idx]
    for key in keys:
        del data[key]
    return bool(rows or keys)


def read_lenient(path: Path, model: type[BaseModel], max_passes: int = 4) -> Read[dict[str, Any]]:
    """A file of figures (scores.json): the values that validate, and the others named in `problem`."""
    name = Path(path).name
    read = _object(name, load_json(path))
    if read.value is None:
        return Read(None, read.present, read.problem)
    data = copy.deepcopy(read.value)
    problems: list[str] = []
    for _ in range(max_passes):
        try:
            value = model.model_validate(data).model_dump(exclude_unset=True)
        except ValidationError as exc:
            problems.append(describe(exc))
            if not _drop(data, [tuple(e["loc"]) for e in exc.errors()]):
                break
            continue
        problem = f"{name}: left out {'; '.join(problems)}" if problems else None
        return Read(value, True, problem)
    return Read(None, True, f"{name} unreadable: {'; '.join(problems)}")


def read_scores(path: Path) -> Read[dict[str, Any]]:
    return read_lenient(path, Scores)


# -- events.jsonl records ---------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, defer_build=True)

    type: Text
    t: Time | None = None


class StepEvent(_Event):
    step: Count
    total: Count | None = None
    loss: Number | None = None
    lr: Number | None = None
    sec_per_step: Seconds | None = None
    eta_s: Seconds | None = None
    mem_allocated: Bytes | None = None
    mem_reserved: Bytes | None = None
    mem_peak: Bytes | None = None
    grad_norm: Number | None = None


class StageEvent(_Event):
    stage: Text


class SampleEvent(_Event):
    step: Count
    paths: list[PathText] = Field(default_factory=list)
    path: PathText | None = None
    prompts: Texts = Field(default_factory=list)


class EvalImageEvent(_Event):
    path: PathText
    prompt: Text | None = None
    guidance: Number | None = None
    seed: Int | None = None
    checkpoint: Count | None = None


class CheckpointEvent(_Event):
    step: Count
    path: PathText | None = None


class CurveBeginEvent(_Event):
    """A training launch's score curve begins; `carried`: the points kept from an earlier launch."""

    every: Count
    prompts: Texts | None = None
    patience: Count | None = None
    carried: list[CurvePoint] | None = None  # type: ignore[valid-type]


CurveEvent = create_model(
    "CurveEvent", __base__=_Event, step=(Step, ...), faceless_images=(list[PathText] | None, None),
    images=(list[PathText] | None, None), seconds=(Seconds | None, None), generate_s=(Seconds | None, None),
    **_metric_fields(),
)  # fmt: skip


class CurveFailedEvent(_Event):
    step: Count
    message: Text | None = None


class EarlyStopEvent(_Event):
    step: Count
    total: Count | None = None
    reason: Text | None = None
    patience: Count | None = None
    best_step: Count | None = None
    lr: Number | None = None
    lr_scheduler: Text | None = None
    schedule_steps: Count | None = None


class BestLoraEvent(_Event):
    step: Step
    path: PathText | None = None


EVENTS: dict[str, type[_Event]] = {
    "step": StepEvent, "stage": StageEvent, "sample": SampleEvent, "eval_image": EvalImageEvent,
    "checkpoint": CheckpointEvent, "curve_begin": CurveBeginEvent, "curve": CurveEvent,
    "curve_failed": CurveFailedEvent, "early_stop": EarlyStopEvent, "best_lora": BestLoraEvent,
}  # fmt: skip


def parse_event(line: str | dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One record of events.jsonl (a line, or its parsed JSON): (the validated record, None), or (None, why
    it is skipped). Records of types the dashboard does not read pass with only `type` and `t` checked."""
    if isinstance(line, str):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            return None, "not JSON"
    else:
        record = line
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    model = EVENTS.get(record.get("type"), _Event) if isinstance(record.get("type"), str) else _Event
    try:
        return model.model_validate(record).model_dump(exclude_unset=True), None
    except ValidationError as exc:
        return None, describe(exc, limit=2)


class EventProblems:
    """Counts the records of events.jsonl that were skipped, keeping the first reason for the run's page."""

    def __init__(self) -> None:
        self.skipped = 0
        self.first: str | None = None

    def add(self, line_no: int | None, why: str) -> None:
        self.skipped += 1
        if self.first is None:
            self.first = f"line {line_no}: {why}" if line_no else why

    def text(self) -> str | None:
        if not self.skipped:
            return None
        return f"events.jsonl: {self.skipped} record(s) skipped ({self.first})"
