"""`experiments.toml`: parsing, validation with file/line/key messages, and expansion into experiments.

The file has an optional `[workspace]` table, a `[defaults]` table holding every training and evaluation
setting, `[[experiment]]` rows that override defaults, and `[[sweep]]` tables whose list values expand to
their cartesian product. Nothing here imports torch: the names of schedulers and precisions that the engine
accepts are listed here and a test keeps them in step with diffusers.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DEFAULT_FILE = "experiments.toml"

# diffusers.optimization.SchedulerType, kept here so the core never imports diffusers.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)
PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
QUANTIZE = ("none", "int8", "nf4")
WEIGHTING = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]


class Settings(BaseModel):
    """Every training and evaluation setting of one run. Keys follow the study and diffusers' script."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)  # nan, inf: no

    # -- model and data
    base_model: str = Field("black-forest-labs/FLUX.1-dev", description="a hub id or a local folder")
    revision: str | None = Field(None, description="a hub revision (branch, tag or commit)")
    data_dir: str = Field("photos", description="a folder of photos of the subject")
    instance_prompt: str = Field("a photo of cr7man", min_length=1, description="a non-empty prompt")
    trigger_token: str = Field("cr7man", min_length=1, description="the subject's trigger token")
    real_name: str | None = Field(None, description="the subject's real name, for the ablation")
    resolution: PosInt = Field(1024, description="a positive multiple of 16 (pixels)")
    random_flip: bool = Field(False, description="true or false")
    # -- training
    train_batch_size: PosInt = Field(1, description="an integer >= 1")
    gradient_accumulation_steps: PosInt = Field(1, description="an integer >= 1")
    learning_rate: float = Field(1e-4, gt=0, description="a number > 0")
    lora_rank: PosInt = Field(16, description="an integer >= 1")
    lora_alpha: PosInt | None = Field(None, description="an integer >= 1 (default: equal to lora_rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="a number in [0, 1)")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"],
        min_length=1,
        description="a non-empty list of module names",
    )
    max_train_steps: PosInt = Field(1000, description="an integer >= 1")
    lr_scheduler: Literal[SCHEDULERS] = Field("constant", description=f"one of {', '.join(SCHEDULERS)}")  # type: ignore[valid-type]
    lr_warmup_steps: NonNegInt = Field(0, description="an integer >= 0")
    optimizer: Literal[OPTIMIZERS] = Field("adamw", description=f"one of {', '.join(OPTIMIZERS)}")  # type: ignore[valid-type]
    adam_weight_decay: float = Field(1e-4, ge=0, description="a number >= 0")
    max_grad_norm: float = Field(1.0, gt=0, description="a number > 0")
    mixed_precision: Literal[PRECISIONS] = Field("bf16", description=f"one of {', '.join(PRECISIONS)}")  # type: ignore[valid-type]
    quantize: Literal[QUANTIZE] = Field("none", description=f"one of {', '.join(QUANTIZE)}")  # type: ignore[valid-type]
    gradient_checkpointing: bool = Field(True, description="true or false")
    torch_compile: bool = Field(False, description="true or false (compile the transformer's blocks)")
    guidance_scale: float = Field(3.5, ge=1, description="the guidance embedding used in training, >= 1")
    weighting_scheme: Literal[WEIGHTING] = Field("none", description=f"one of {', '.join(WEIGHTING)}")  # type: ignore[valid-type]
    max_sequence_length: PosInt = Field(512, le=512, description="an integer in 1..512")
    seed: int = Field(42, description="an integer")
    checkpointing_steps: PosInt = Field(250, description="an integer >= 1")
    checkpoints_total_limit: PosInt = Field(2, description="an integer >= 1")
    sample_every: NonNegInt = Field(250, description="an integer >= 0 (0: no samples)")
    sample_prompts: list[str] = Field(default_factory=list, description="a list of prompts")
    # -- evaluation
    eval_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of cr7man"], min_length=1, description="a non-empty list of prompts"
    )
    guidance_scales: list[Annotated[float, Field(ge=1)]] = Field(
        default_factory=lambda: [5.0], min_length=1, description="a non-empty list of numbers >= 1"
    )
    images_per_prompt: PosInt = Field(1, description="an integer >= 1")
    num_inference_steps: PosInt = Field(28, description="an integer >= 1")
    eval_seed: int = Field(0, description="an integer")
    eval_resolution: PosInt | None = Field(None, description="a positive multiple of 16 (default: resolution)")
    clip_model: str = Field("openai/clip-vit-large-patch14", description="a hub id or a local folder")
    face_weights: str | None = Field(None, description="a vggface2 weights file (default: torch hub cache)")
    eval_checkpoints: bool = Field(False, description="true or false")
    # -- evaluation during training: the score curve, the best step, early stopping
    eval_every: NonNegInt | None = Field(
        None, description="an integer >= 0 (steps; 0: off; default: a quarter of max_train_steps)"
    )
    checkpoint_eval_prompts: list[str] | None = Field(
        None, min_length=1, description="a non-empty list of prompts (default: the first 3 eval_prompts)"
    )
    early_stop_patience: PosInt | None = Field(
        None, description="an integer >= 1 (evaluations without a better face distance; needs eval_every > 0)"
    )

    @field_validator("resolution", "eval_resolution")
    @classmethod
    def _multiple_of_16(cls, v: int | None) -> int | None:
        if v is not None and v % 16:
            lower, upper = v // 16 * 16, (v // 16 + 1) * 16
            raise ValueError(f"must be a multiple of 16 (try {f'{lower} or ' if lower else ''}{upper})")
        return v

    @field_validator("eval_prompts", "sample_prompts", "lora_target_modules", "checkpoint_eval_prompts")
    @classmethod
    def _no_empty_strings(cls, v: list[str] | None) -> list[str] | None:
        for i, s in enumerate(v or []):
            if not s.strip():
                raise ValueError(f"item {i + 1} is empty")
        return v

    @field_validator("early_stop_patience")
    @classmethod
    def _needs_the_curve(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("eval_every") == 0:
            raise ValueError("early stopping reads the score curve, and eval_every = 0 turns it off")
        return v

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else self.lora_rank

    @property
    def eval_interval(self) -> int:
        """Steps between the evaluations during training (0: none): `eval_every`, by default a quarter of
        `max_train_steps` (rounded up: 250 for 1000 steps, 375 for 1500)."""
        return self.eval_every if self.eval_every is not None else -(-self.max_train_steps // 4)

    @property
    def curve_prompts(self) -> list[str]:
        """The prompts of the evaluations during training: `checkpoint_eval_prompts`, by default the first
        three evaluation prompts (one image each; the full grid is made at the end)."""
        return list(self.checkpoint_eval_prompts or self.eval_prompts[:3])


SETTING_KEYS = tuple(Settings.model_fields)
EVAL_KEYS = frozenset(
    {
        "eval_prompts", "guidance_scales", "images_per_prompt", "num_inference_steps", "eval_seed",
        "eval_resolution", "clip_model", "face_weights", "eval_checkpoints", "real_name",
    }
)  # fmt: skip
# How a run computes, not what it trains: changing one never makes a run stale, and it is not a factor of the
# study's comparisons. (torch.compile's kernels round a little differently from eager ones: a run resumed
# with it switched ends close to, not exactly at, the uninterrupted run's weights.)
RUNTIME_KEYS = frozenset({"torch_compile"})
UNTRAINED_KEYS = EVAL_KEYS | RUNTIME_KEYS  # changing one leaves a trained LoRA valid
PATH_KEYS = ("data_dir", "face_weights")
MODEL_KEYS = ("base_model", "clip_model")  # a hub id or a local folder (see is_local_path)
ROW_KEYS = ("name", "number", "group", "description")
WORKSPACE_KEYS = ("runs_dir", "cache_dir", "runs_per_gpu", "executor")
EXECUTORS = ("local", "slurm")
TOP_KEYS = ("workspace", "defaults", "experiment", "sweep", "slurm")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# A run's name is a folder name (runs/<name>/) and goes into other file names: its lock (<name>.lock), a
# merge's folder (<a>+<b>-w<weights>). 80 characters keep all of them within a file system's 255 bytes.
MAX_NAME_LEN = 80


# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds.
_SLURM_TIME_RE = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds in a Slurm time limit ("90", "4:00:00", "1-12", ...); None for no limit. Raises ValueError."""
    if text.strip().upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _SLURM_TIME_RE.match(text.strip())
    if not m:
        raise ValueError("expected a Slurm time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    days, d_h, d_m, d_s, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(1) is not None:
        seconds = days * 86400 + d_h * 3600 + d_m * 60 + d_s
    elif m.group(7) is not None:
        seconds = a * 3600 + b * 60 + c
    else:
        seconds = a * 60 + b
    if seconds <= 0:
        raise ValueError("expected a time limit longer than 0")
    return seconds


Word = Annotated[str, Field(pattern=r"^[^\s,]+$")]
_GRES_ONE = r"[A-Za-z]\w*(:[\w.-]+){0,2}"
Gres = Annotated[str, Field(pattern=rf"^({_GRES_ONE}(,{_GRES_ONE})*)?$")]
SlurmMemory = Annotated[str, Field(pattern=r"^\d+[KMGTkmgt]?$")]


class SlurmSettings(BaseModel):
    """The `[slurm]` table: how each run is submitted when `[workspace] executor = "slurm"`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    partition: Annotated[str, Field(pattern=r"^[^\s,]+(,[^\s,]+)*$")] | None = Field(
        None, description="a partition name, or several separated by commas (default: the cluster's)"
    )
    account: Word | None = Field(None, description="an account name, without spaces")
    qos: Word | None = Field(None, description="a QOS name, without spaces")
    time: str | None = Field(None, description='a time limit per run, e.g. "4:00:00", "1-00:00:00" or "90"')
    gres: Gres = Field("gpu:1", description='generic resources per run: "gpu:1", "gpu:a100:2", "" for none')
    cpus_per_task: PosInt | None = Field(None, description="an integer >= 1")
    mem: SlurmMemory | None = Field(
        None, description='memory per run, e.g. "64G" (a number with an optional K, M, G or T suffix)'
    )
    constraint: Annotated[str, Field(pattern=r"^[^\n]+$")] | None = Field(
        None, description='a node feature expression, e.g. "a100|h100"'
    )
    max_jobs: PosInt | None = Field(
        None, description="an integer >= 1 (how many of the sweep's runs may be in Slurm at once)"
    )
    sbatch_args: list[str] = Field(
        default_factory=list, description='a list of sbatch options, each one "--name" or "--name=value"'
    )
    setup: str | list[str] = Field(
        "", description="shell lines run before the trainer (a string, or a list of lines)"
    )

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, v: str | None) -> str | None:
        if v is not None:
            slurm_time_seconds(v)
        return v

    @field_validator("sbatch_args")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for i, arg in enumerate(v):
            if not arg.startswith("-") or "\n" in arg:
                hint = 'write each as "--name" or "--name=value"'
                raise ValueError(f"item {i + 1} ({arg!r}) is not an option: {hint}")
        return v

    @property
    def setup_lines(self) -> list[str]:
        return self.setup.splitlines() if isinstance(self.setup, str) else list(self.setup)

    @property
    def time_limit_s(self) -> int | None:
        return slurm_time_seconds(self.time) if self.time else None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file. `line` is 1-based, or None when it cannot be placed."""

    file: Path
    line: int | None
    key: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        key = f" {self.key}:" if self.key else ""
        tag = "" if self.severity == "error" else " warning:"
        return f"{where}:{tag}{key} {self.message}"


class ConfigError(Exception):
    """The file cannot be used; `problems` lists every reason (warnings included)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Experiment:
    name: str
    number: int
    group: str
    settings: Settings
    description: str = ""
    line: int | None = None

    def config_dict(self) -> dict[str, Any]:
        return self.settings.model_dump(mode="json")

    @property
    def train_hash(self) -> str:
        return _hash({k: v for k, v in self.config_dict().items() if k not in UNTRAINED_KEYS})

    @property
    def config_hash(self) -> str:
        return _hash(self.config_dict())


@dataclass(frozen=True)
class Workspace:
    root: Path
    runs_dir: Path
    cache_dir: Path
    runs_per_gpu: int = 1
    executor: str = "local"


@dataclass
class Study:
    """A parsed, validated file: its workspace and its experiments in file order."""

    file: Path
    workspace: Workspace
    experiments: list[Experiment]
    warnings: list[Problem] = field(default_factory=list)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    def get(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experiments]


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# -- locating keys in the source ----------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


class _Locator:
    """Maps (table, index, key) to a line number by scanning the text; tomllib keeps no positions."""

    def __init__(self, text: str):
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current = ("", 0)
        for lineno, line in enumerate(text.splitlines(), start=1):
            m = _HEADER_RE.match(line)
            if m:
                name = m.group(2)
                if m.group(1) == "[[":
                    idx = counts.get(name, 0)
                    counts[name] = idx + 1
                else:
                    idx = 0
                current = (name, idx)
                self.tables.setdefault(current, lineno)
                continue
            m = _KEY_RE.match(line)
            if m:
                self.keys.setdefault((current[0], current[1], m.group(1)), lineno)

    def line(self, table: str, index: int = 0, key: str | None = None) -> int | None:
        if key is not None and (table, index, key) in self.keys:
            return self.keys[(table, index, key)]
        if not table and key is not None:  # a top-level table: its header line
            return self.tables.get((key, 0))
        return self.tables.get((table, index))


# -- parsing ---------------------------------------------------------------------------------------


class _Collector:
    def __init__(self, file: Path, locator: _Locator):
        self.file = file
        self.loc = locator
        self.problems: list[Problem] = []

    def add(self, table: str, index: int, key: str | None, message: str, severity: str = "error") -> None:
        label = _table_label(table, index)
        shown_key = (f"{label}.{key}" if table else key) if key else label
        self.problems.append(
            Problem(self.file, self.loc.line(table, index, key), shown_key, message, severity)  # type: ignore[arg-type]
        )

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def _table_label(table: str, index: int) -> str:
    if table in ("experiment", "sweep"):
        return f"[[{table}]] #{index + 1}"
    return f"[{table}]" if table else "(top level)"


def _suggest(key: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | list) else repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _check_settings(col: _Collector, table: str, index: int, values: dict[str, Any]) -> Settings | None:
    try:
        return Settings(**values)
    except ValidationError as exc:
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else None
            field_info = Settings.model_fields.get(key or "")
            expected = field_info.description if field_info else None
            msg = err["msg"]
            if err["type"] in ("value_error", "assertion_error"):
                msg = msg.removeprefix("Value error, ")
            got = err.get("input")
            text = f"expected {expected}, got {_describe(got)}" if expected else msg
            if err["type"] == "value_error":
                text = f"{msg}; expected {expected}, got {_describe(got)}"
            # Report against the row that holds the key, else against the defaults.
            col.add(table, index, key, text)
        return None


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a run (its folder), or None."""
    if not NAME_RE.match(name) or ".." in name:
        return (f"unsafe run name {name!r}: use letters, digits, '.', '_', '-', '+' "
                "(it names a folder under runs/; no path separators or '..')")  # fmt: skip
    if len(name) > MAX_NAME_LEN:
        return (f"run name too long ({len(name)} characters, at most {MAX_NAME_LEN}: it names the run's folder "
                f"and files): {name[:40]}...")  # fmt: skip
    return None


# A model setting (base_model, clip_model) is a hub id when it is shaped like one, `name` or `org/name`, and
# names nothing beside the study file; anything else (a leading `/`, `.` or `~`, more than one `/`, a
# folder that exists) is a local path, resolved from the file's folder. Write `./models/x` for a folder.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_local_path(value: str, root: Path) -> bool:
    """Whether a base_model/clip_model value names a local folder rather than a model hub id."""
    if value.startswith((".", "/", "~")) or not HUB_ID_RE.match(value):
        return True
    return (root / value).exists()


def _absolute(root: Path, value: str) -> str:
    try:
        return str((root / Path(value).expanduser()).resolve())
    except (RuntimeError, OSError, ValueError):  # `~nobody/x`: no such user; a path too long or with NUL
        return str(root / value)


def _resolve_paths(values: dict[str, Any], root: Path) -> dict[str, Any]:
    out = dict(values)
    for key in PATH_KEYS:
        if key not in out and isinstance(Settings.model_fields[key].default, str):
            out[key] = Settings.model_fields[key].default  # a default path is relative to the file too
        if isinstance(out.get(key), str):
            out[key] = _absolute(root, out[key])
    for key in MODEL_KEYS:
        v = out.get(key)
        if isinstance(v, str) and is_local_path(v, root):
            out[key] = _absolute(root, v)
    return out


def _fmt_value(v: Any) -> str:
    """A swept value in a run's name, every significant digit kept (1.5e-4 is `1.5e-4`, never `2e-4`)."""
    if isinstance(v, list):
        return "+".join(_fmt_value(x) for x in v)
    if isinstance(v, float):
        if v != 0 and math.isfinite(v) and abs(v) < 0.01:
            _, digits, exp = Decimal(repr(v)).normalize().as_tuple()
            mant = "".join(map(str, digits))
            power = len(digits) - 1 + int(exp)
            return f"{'-' if v < 0 else ''}{mant[0]}{'.' + mant[1:] if len(mant) > 1 else ''}e{power}"
        text = repr(v)
        return text.removesuffix(".0")
    return str(v)


_ABBREV = {"learning_rate": "lr", "lora_rank": "r", "lora_alpha": "a", "max_train_steps": "s", "resolution": "px",
           "guidance_scales": "g", "lr_warmup_steps": "w", "train_batch_size": "bs"}
_WORD_RE = re.compile(r"^[A-Za-z0-9._+-]{1,24}$")  # a string value that can stand in a name as it is


def _sweep_name(prefix: str, combo: dict[str, Any], row: dict[str, Any]) -> str:
    """`grid-lr1.5e-4-r16`: the prefix and each varied value. A value that cannot stand in a file name (a
    prompt, a hub id) is named by its place in the sweep's list: `base_model2`."""
    parts = [prefix] if prefix else []
    for key, value in combo.items():
        abbrev = _ABBREV.get(key, "" if key == "lr_scheduler" else key)
        text = _fmt_value(value)
        words = value if isinstance(value, list) else [value]
        if any(isinstance(w, str) for w in words) and not all(_WORD_RE.match(str(w)) for w in words):
            abbrev, text = key, str(row[key].index(value) + 1)
        parts.append(f"{abbrev}{text}")
    return "-".join(parts)


def parse_text(text: str, file: Path) -> Study:
    """Parse and validate; raises ConfigError listing every problem. `file` locates relative paths."""
    file = Path(file)
    root = file.resolve().parent
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    data = _read_toml(text, file)
    col = _Collector(file, _Locator(text))
    for key in data:
        if key not in TOP_KEYS:
            expected = f"expected one of {', '.join(TOP_KEYS)}"
            col.add("", 0, key, f"unknown table{_suggest(key, TOP_KEYS)}; {expected}")
    workspace = _parse_workspace(col, data.get("workspace", {}), root)
    slurm = _parse_slurm(col, data.get("slurm", {}), workspace)
    defaults, base = _parse_defaults(col, data.get("defaults", {}), root)
    rows = _rows(col, data)
    names = _Names(col)
    experiments = [e for kind, i, row in rows for e in _expand_row(col, names, kind, i, row, defaults, root)]
    if not rows and base is not None:
        # A file with only defaults is one experiment, named "default".
        experiments.append(Experiment(name="default", number=1, group="", settings=base))
    _check_paths(col, experiments, names, rows)
    _check_model_sizes(col, experiments, names, rows)
    _dedupe_warnings(col)
    if col.errors:
        raise ConfigError(col.problems)
    assert workspace is not None
    return Study(file=file, workspace=workspace, experiments=experiments, warnings=col.problems,
                 slurm=slurm or SlurmSettings())  # fmt: skip


def _read_toml(text: str, file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            [Problem(file, int(m.group(1)) if m else None, None, f"TOML syntax error: {exc}")]
        ) from None


def _parse_defaults(col: _Collector, raw: Any, root: Path) -> tuple[dict[str, Any], Settings | None]:
    """[defaults]: the values every row starts from (those that are valid), and the settings they make
    alone (None when any is wrong)."""
    if not isinstance(raw, dict):
        col.add("", 0, "defaults", "expected a table [defaults]")
        raw = {}
    for key in raw:
        if key not in SETTING_KEYS:
            col.add("defaults", 0, key, f"unknown key{_suggest(key, SETTING_KEYS)}")
    defaults = {k: v for k, v in raw.items() if k in SETTING_KEYS}
    before = len(col.problems)
    base = _check_settings(col, "defaults", 0, _resolve_paths(defaults, root))
    # Rows are still checked when [defaults] is wrong, against the defaults that are right, so that every
    # problem of the file is listed at once (a wrong default is reported once, at its own line).
    bad_defaults = {p.key.rsplit(".", 1)[-1] for p in col.problems[before:] if p.key}
    return {k: v for k, v in defaults.items() if k not in bad_defaults}, base


Row = tuple[str, int, dict[str, Any]]  # (kind: "experiment" or "sweep", index among its kind, table)


def _rows(col: _Collector, data: dict[str, Any]) -> list[Row]:
    """The [[experiment]] rows, then the [[sweep]] rows."""
    rows: list[Row] = []
    for kind in ("experiment", "sweep"):
        items = data.get(kind, [])
        if not isinstance(items, list):
            col.add("", 0, kind, f"expected [[{kind}]] tables (an array of tables)")
            continue
        rows += [(kind, i, row) for i, row in enumerate(items)]
    return rows


def _check_row_keys(col: _Collector, kind: str, i: int, row: dict[str, Any]) -> bool:
    """Report unknown keys and wrong name/group/description/number values; False when the row cannot be
    named or numbered."""
    for key in row:
        if key not in SETTING_KEYS and key not in ROW_KEYS:
            col.add(kind, i, key, f"unknown key{_suggest(key, SETTING_KEYS + ROW_KEYS)}")
    meta_ok = True
    for key, typ, label in (("name", str, "a string"), ("group", str, "a string"),
                            ("description", str, "a string"), ("number", int, "an integer >= 1")):  # fmt: skip
        if key in row and (not isinstance(row[key], typ) or isinstance(row[key], bool)):
            col.add(kind, i, key, f"expected {label}, got {_describe(row[key])}")
            meta_ok = False
    if "number" in row and meta_ok and row["number"] < 1:
        col.add(kind, i, "number", f"expected an integer >= 1, got {row['number']}")
    return meta_ok


Combos = list[dict[str, Any]]  # one row's settings per run it makes


def _sweep(col: _Collector, i: int, overrides: dict[str, Any]) -> tuple[Combos, list[str]] | None:
    """A sweep's combinations (the cartesian product of its list values) and the keys it varies."""
    varied = {k: v for k, v in overrides.items() if isinstance(v, list) and k not in _LIST_KEYS}
    varied.update({k: v for k, v in overrides.items() if k in _LIST_KEYS and v and isinstance(v[0], list)})
    if not varied:
        col.add("sweep", i, None, "a sweep needs at least one key with a list of values to expand")
        return None
    if any(len(v) == 0 for v in varied.values()):
        empty = next(k for k, v in varied.items() if len(v) == 0)
        col.add("sweep", i, empty, "expected a non-empty list of values to sweep")
        return None
    fixed = {k: v for k, v in overrides.items() if k not in varied}
    combos = [
        {**fixed, **dict(zip(varied, values, strict=True))} for values in itertools.product(*varied.values())
    ]
    return combos, list(varied)


Named = tuple[str, int]  # a run's name and number


class _Names:
    """Names and numbers the runs in file order, refusing unsafe and duplicate ones."""

    def __init__(self, col: _Collector):
        self.col = col
        self.origin: dict[str, tuple[str, int]] = {}  # run name -> the row that made it
        self.numbers: dict[int, str] = {}
        self.number = 0

    def assign(self, kind: str, i: int, row: dict[str, Any], varied: dict[str, Any]) -> Named | None:
        """The next run's (name, number), or None when it is refused (the problem is reported). `varied`: the
        values a sweep's run varies, which name it."""
        col = self.col
        if kind == "experiment":
            self.number = number = row.get("number", self.number + 1)
            name = row.get("name", f"exp{number:02d}")
        else:
            self.number = number = self.number + 1
            name = _sweep_name(row.get("name", "sweep"), varied, row)
        unsafe = name_problem(name)
        if unsafe:
            col.add(kind, i, "name", unsafe + (" (a sweep's runs are named after its `name` and the values they "
                                               "vary: give it a shorter name)" if kind == "sweep" else ""))
            return None
        if name in self.origin:
            other = self.origin[name]
            other_line = col.loc.line(other[0], other[1], "name") or col.loc.line(other[0], other[1])
            col.add(kind, i, "name", f"duplicate run name {name!r} (also at line {other_line})")
            return None
        self.origin[name] = (kind, i)
        if number in self.numbers:  # explicit or counted on from the row before: a number names one run
            other = self.numbers[number]
            if kind == "experiment" and "number" in row:
                col.add(kind, i, "number", f"duplicate experiment number {number} (also {other!r})")
            else:
                col.add(kind, i, "number", f"experiment number {number} (counted on from the row before) is "
                        f"taken by {other!r}: give the rows explicit, distinct numbers")  # fmt: skip
            return None
        self.numbers[number] = name
        return name, number


def _expand_row(
    col: _Collector, names: _Names, kind: str, i: int, row: dict[str, Any], defaults: dict[str, Any],
    root: Path,
) -> list[Experiment]:
    """The experiments of one row: one for an [[experiment]], one per combination for a [[sweep]]."""
    if not _check_row_keys(col, kind, i, row):
        return []
    overrides = {k: v for k, v in row.items() if k in SETTING_KEYS}
    combos: Combos = [overrides]
    varied: list[str] = []
    if kind == "sweep":
        swept = _sweep(col, i, overrides)
        if swept is None:
            return []
        combos, varied = swept
    group = row.get("group", "" if kind == "experiment" else f"sweep {row.get('name', '')}".strip())
    out = []
    for combo in combos:
        named = names.assign(kind, i, row, {k: combo[k] for k in varied})
        if named is None:
            continue
        settings = _check_settings(col, kind, i, _resolve_paths({**defaults, **combo}, root))
        if settings is None:
            continue
        name, number = named
        out.append(Experiment(name=name, number=number, group=group, settings=settings,
                              description=row.get("description", ""), line=col.loc.line(kind, i)))
    return out


def _where(exp: Experiment, key: str, names: _Names, rows: list[Row]) -> tuple[str, int]:
    """The row that sets `key` for `exp`, else [defaults] (where a problem with its value is reported)."""
    kind, i = names.origin.get(exp.name, ("defaults", 0))
    row = next((r for k, j, r in rows if (k, j) == (kind, i)), {})
    return (kind, i) if key in row else ("defaults", 0)


def _path_problem(path: Path, want: str) -> str | None:
    """Why `path` is not the `want` ("folder" or "file") a setting needs, or None."""
    try:
        if want == "folder" and path.is_dir() or want == "file" and path.is_file():
            return None
        exists = path.exists()
    except OSError as exc:  # a name too long, a loop of links
        return f"{path} cannot be used: {exc.strerror or exc}"
    return f"{path} is not a {want}" if exists else f"{want} {path} does not exist"


def _check_paths(col: _Collector, exps: list[Experiment], names: _Names, rows: list[Row]) -> None:
    """Paths that do not exist yet are warnings (they may be made before a launch), at the row that sets
    them, else at [defaults]: the photo folder, a local base or CLIP model folder, the face weights file."""
    for exp in exps:
        s = exp.settings
        wanted = [("data_dir", s.data_dir, "folder"), ("face_weights", s.face_weights, "file")]
        wanted += [(k, getattr(s, k), "folder") for k in MODEL_KEYS if Path(getattr(s, k)).is_absolute()]
        for key, value, want in wanted:
            problem = _path_problem(Path(value), want) if value else None
            if problem:
                col.add(*_where(exp, key, names, rows), key, f"{problem} (a warning now; launching a run will "
                        "fail)", "warning")  # fmt: skip


FLUX_VAE_FACTOR = 8  # FLUX.1's VAE halves the image three times


def vae_factor(base_model: str) -> int:
    """How many pixels of a side one latent covers: 2**(VAE blocks - 1), from a local model's
    vae/config.json, else FLUX.1's."""
    try:
        blocks = json.loads((Path(base_model) / "vae" / "config.json").read_text())["block_out_channels"]
        return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and 0 < len(blocks) < 8 else FLUX_VAE_FACTOR
    except (OSError, ValueError, KeyError, TypeError):
        return FLUX_VAE_FACTOR


def _check_model_sizes(col: _Collector, exps: list[Experiment], names: _Names, rows: list[Row]) -> None:
    """Image sizes the model can take: FLUX packs 2x2 latents, so a side must be a multiple of twice the VAE's
    factor (16 for FLUX.1), and at least that."""
    factors: dict[str, int] = {}
    for exp in exps:
        s = exp.settings
        step = 2 * factors.setdefault(s.base_model, vae_factor(s.base_model))
        for key in ("resolution", "eval_resolution"):
            v = getattr(s, key)
            if v is not None and v % step:
                col.add(*_where(exp, key, names, rows), key, f"{v} px does not fit the model: its VAE needs a "
                        f"multiple of {step} px per side (try {max(step, v // step * step)})")  # fmt: skip


# Keys whose value is itself a list: in a sweep they expand only when given a list of lists.
_LIST_KEYS = frozenset(
    {"eval_prompts", "guidance_scales", "sample_prompts", "lora_target_modules", "checkpoint_eval_prompts"}
)


def _dedupe_warnings(col: _Collector) -> None:
    seen: set[str] = set()
    kept = []
    for p in col.problems:
        if p.severity == "warning":
            if p.message in seen:
                continue
            seen.add(p.message)
        kept.append(p)
    col.problems = kept


def _parse_workspace(col: _Collector, raw: Any, root: Path) -> Workspace | None:
    if not isinstance(raw, dict):
        col.add("", 0, "workspace", "expected a table [workspace]")
        return None
    for key in raw:
        if key not in WORKSPACE_KEYS:
            col.add("workspace", 0, key, f"unknown key{_suggest(key, WORKSPACE_KEYS)}")
    ok = True
    for key in ("runs_dir", "cache_dir"):
        if key in raw and not isinstance(raw[key], str):
            col.add("workspace", 0, key, f"expected a folder path (string), got {_describe(raw[key])}")
            ok = False
    executor = raw.get("executor", "local")
    if executor not in EXECUTORS:
        expected = f"expected one of {', '.join(EXECUTORS)}"
        col.add("workspace", 0, "executor", f"{expected}, got {_describe(executor)}")
        ok = False
    per_gpu = raw.get("runs_per_gpu", 1)
    if not isinstance(per_gpu, int) or isinstance(per_gpu, bool) or per_gpu < 1:
        col.add("workspace", 0, "runs_per_gpu", f"expected an integer >= 1, got {_describe(per_gpu)}")
        ok = False
    if not ok:
        return None
    folders = {key: Path(_absolute(root, raw.get(key, default))) for key, default in DEFAULT_FOLDERS.items()}
    for key, folder in folders.items():
        problem = folder_problem(folder)
        if problem:
            col.add("workspace", 0, key, f"{problem} (flux-tui writes {WRITES[key]} there)")
    return Workspace(
        root=root,
        runs_dir=folders["runs_dir"],
        cache_dir=folders["cache_dir"],
        runs_per_gpu=per_gpu,
        executor=executor,
    )


DEFAULT_FOLDERS = {"runs_dir": "runs", "cache_dir": ".flux-tui/cache"}
WRITES = {"runs_dir": "every run's folder", "cache_dir": "the encoded photos and prompts"}


def folder_problem(folder: Path) -> str | None:
    """Why flux-tui could not use (or create) `folder`, or None. Nothing is created here: `check` writes
    nothing."""
    try:
        if folder.is_dir():
            return None if os.access(folder, os.W_OK | os.X_OK) else f"folder {folder} is not writable"
        if folder.exists() or folder.is_symlink():
            return f"{folder} is not a folder"
        parent = next(p for p in folder.parents if p.exists() or p.is_symlink())
    except OSError as exc:
        return f"folder {folder} cannot be used: {exc.strerror or exc}"
    if not parent.is_dir():
        return f"folder {folder} cannot be created: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"folder {folder} cannot be created: {parent} is not writable"
    return None


def _parse_slurm(col: _Collector, raw: Any, workspace: Workspace | None) -> SlurmSettings | None:
    """The [slurm] table, checked like [workspace]; with `executor = "slurm"`, warnings about this machine."""
    if not isinstance(raw, dict):
        col.add("", 0, "slurm", "expected a table [slurm]")
        return None
    keys = tuple(SlurmSettings.model_fields)
    for key in raw:
        if key not in keys:
            col.add("slurm", 0, key, f"unknown key{_suggest(key, keys)}")
    slurm = _check_model(col, "slurm", SlurmSettings, {k: v for k, v in raw.items() if k in keys})
    if workspace is not None and workspace.executor == "slurm":
        _slurm_warnings(col, workspace)
    return slurm


def _slurm_warnings(col: _Collector, workspace: Workspace) -> None:
    if shutil.which("sbatch") is None:
        col.add("workspace", 0, "executor", 'executor is "slurm" but sbatch is not on PATH: runs cannot be '
                "submitted from here (use a login node of the cluster, or load Slurm: module load slurm)",
                "warning")  # fmt: skip
    tmp = next((t for t in ("/tmp", "/var/tmp", "/dev/shm") if workspace.runs_dir.is_relative_to(t)), None)
    if tmp is not None:
        col.add("workspace", 0, "executor", f"runs are written under {tmp} ({workspace.runs_dir}), which is "
                "local to each machine: compute nodes will not see them; put the workspace on storage the "
                "nodes share (home or project space)", "warning")  # fmt: skip


def _check_model(col: _Collector, table: str, model: type[BaseModel], values: dict[str, Any]) -> Any:
    """`model(**values)`, or None after adding one problem per wrong key (at its line in `table`)."""
    try:
        return model(**values)
    except ValidationError as exc:
        seen: set[str | None] = set()
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else None
            if key in seen:  # a union type fails once per member: one problem per key is enough
                continue
            seen.add(key)
            field_info = model.model_fields.get(key or "")
            expected = field_info.description if field_info else None
            got = _describe(err.get("input"))
            if err["type"] == "value_error":  # our validators' messages say what they expect
                text = f"{err['msg'].removeprefix('Value error, ')}, got {got}"
            else:
                text = f"expected {expected}, got {got}" if expected else err["msg"]
            col.add(table, 0, key, text)
        return None


def load(path: str | Path = DEFAULT_FILE) -> Study:
    """Read and validate a study file. Raises ConfigError (with every problem) when it is unusable."""
    path = Path(path)
    return parse_text(read_text(path), path)


def read_text(path: Path) -> str:
    """The study file's text (a UTF-8 byte-order mark is accepted), or ConfigError saying why it cannot be
    read: missing, a folder or another non-file (a FIFO would block), no permission, not UTF-8."""
    try:
        if not path.exists():
            raise ConfigError([Problem(path, None, None, "file not found")])
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise ConfigError([Problem(path, None, None, f"cannot read: {kind}; give the study file (TOML)")])
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(path, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        message = f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column}; save the file as UTF-8"
        raise ConfigError([Problem(path, line, None, message)]) from None


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Rebuild the resolved settings stored in a run folder's run.json. Empty (run.json missing or damaged,
    which `RunDir.config()` reads as {}) is an error: a trainer must never fill in defaults for them."""
    if not data:
        raise ValueError("run.json holds no settings (missing or damaged): nothing to train with")
    return Settings(**data)
