"""Damaged run-folder files, one per case: every field of status.json, run.json, scores.json and each kind
of events.jsonl record given a value of the wrong type, a float for an int, null, a huge value, garbage;
and whole files that are truncated, empty, not UTF-8, or JSON that is not an object.

Each case is `Case(file, label, content, bad)`: the bytes to write over the run's `file`, and whether the
reader must report something (a float with no fraction for an int, or an unknown key, is fine)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

from flux_tui.core.runs import Status

HUGE_INT = 10**30
TOO_BIG_FOR_A_FLOAT = 10**400  # a valid JSON integer that float() cannot take


@dataclass(frozen=True)
class Case:
    file: str  # status.json, run.json, scores.json, events.jsonl
    label: str
    content: bytes
    bad: bool = True


# Bad values per kind of field: (value, bad). Null is a case of its own (`_field_cases`): fine where a field
# may be unset, bad where it must be there.
BAD_VALUES: dict[str, list[tuple[object, bool]]] = {
    "int": [("7", True), (4.5, True), (4.0, False), (HUGE_INT, True), (True, True), ([1], True)],
    "count": [("7", True), (4.5, True), (4.0, False), (-3, True), (HUGE_INT, True), (True, True)],
    "float": [("0.5", True), (True, True), (TOO_BIG_FOR_A_FLOAT, True), (math.nan, True), ({"a": 1}, True)],
    "time": [("yesterday", True), (1e300, True), (-5.0, True), (math.inf, True)],
    "str": [(3, True), (["a"], True), ({"a": 1}, True), ("x" * 20_000, False)],
    # a file name: too long for a path is bad; one component too long for a file name is only unusable
    "path": [(3, True), (["a"], True), ("", True), ("x" * 20_000, True), ("x" * 300, False)],
    "list": [("abc", True), (3, True), ({"a": 1}, True), ([None, 3], True)],
    "rows": [("abc", True), ([3, "x"], True), ([{"image": 3, "face_distance": "x", "face": "yes"}], True)],
    "dict": [("abc", True), ([1, 2], True)],
}

WHOLE_FILES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\x00\x01garbage{{{"),
    ("not-utf8", b'{"state": "done\xff\xfe"}'),
    ("list", b"[1, 2, 3]"),
    ("null", b"null"),
    ("number", b"3"),
    ("string", b'"done"'),
    ("deep", b"[" * 100_000 + b"]" * 100_000),
]


def _json(data: object) -> bytes:
    return json.dumps(data).encode()  # NaN/Infinity as Python's json writes them (and reads them back)


def _field_cases(file: str, base: dict, kinds: dict[str, str], required: set[str]) -> list[Case]:
    out = []
    for key, kind in kinds.items():
        for value, bad in [*BAD_VALUES[kind], (None, key in required)]:
            label = f"{key}={json.dumps(value)[:12]}"
            out.append(Case(file, label, _json({**base, key: value}), bad))
    return out


def _whole_file_cases(file: str, valid: bytes) -> list[Case]:
    cases = [Case(file, f"whole:{label}", content) for label, content in WHOLE_FILES]
    cases.append(Case(file, "whole:truncated", valid[: len(valid) // 2]))
    return cases


# -- status.json


def _status_kinds() -> dict[str, str]:
    kinds = {}
    for f in fields(Status):
        if f.name in ("state", "damage", "recovered"):  # state: cases of its own
            continue
        t = str(f.type)
        if "Evaluation" in t:
            kinds[f.name] = "dict"
            continue
        kinds[f.name] = ("list" if "Texts" in t else "time" if "Time" in t else "count" if "Pid" in t or "Count" in t
                         else "int" if "Int" in t else "str")  # fmt: skip
    return kinds


def status_cases(base: dict) -> list[Case]:
    cases = _field_cases("status.json", base, _status_kinds(), {"message", "log_tail"})
    cases += [Case("status.json", f"state={json.dumps(v)}", _json({**base, "state": v}))
              for v in ("finished", "damaged", "", 3, None, ["done"])]
    cases += [Case("status.json", "no-state", _json({k: v for k, v in base.items() if k != "state"})),
              Case("status.json", "extra-key", _json({**base, "from_the_future": [1]}), bad=False)]  # fmt: skip
    return cases + _whole_file_cases("status.json", _json(base))


# -- run.json

RUN_KINDS = {"name": "str", "number": "int", "group": "str", "description": "str", "config": "dict",
             "config_hash": "str", "train_hash": "str", "created_at": "time", "kind": "str", "lora": "path"}  # fmt: skip


def run_cases(base: dict) -> list[Case]:
    cases = _field_cases("run.json", base, RUN_KINDS, {"group", "description", "config", "kind"})
    cfg = base["config"]
    for key, value in (("lora_rank", "16"), ("learning_rate", [1e-4]), ("lora_rank", 4.5), ("eval_prompts", "x"),
                       ("guidance_scales", [None]), ("resolution", None), ("learning_rate", math.nan)):
        config = {**cfg, key: value}
        cases.append(Case("run.json", f"config.{key}={json.dumps(value)[:10]}", _json({**base, "config": config})))
    # Not damage: a setting this version no longer has, or a value a later rule would refuse (the display
    # and the comparisons need the types, not today's ranges)
    for label, config in (("config.extra-key", {**cfg, "old_setting": 1}), ("config.steps=-1", {**cfg, "max_train_steps": -1})):
        cases.append(Case("run.json", label, _json({**base, "config": config}), bad=False))
    return cases + _whole_file_cases("run.json", _json(base))


# -- scores.json

SCORE_KINDS = {
    "face_distance": "float", "identity_similarity": "float", "clip_score": "float", "clip_score_x100": "float",
    "faceless": "count", "n_images": "count", "face_distance_n": "count", "faceless_images": "list",
    "per_prompt": "rows", "per_image": "rows", "per_guidance": "rows", "checkpoints": "rows",
    "reference": "dict", "models": "dict", "run": "str", "scored_at": "time",
    "curve": "rows", "best_step": "count", "best_lora": "path", "early_stop": "dict", "base": "dict",
}  # fmt: skip


def scores_cases(base: dict) -> list[Case]:
    cases = _field_cases("scores.json", base, SCORE_KINDS, set())
    rows = base.get("per_image") or [{}]
    for key, value in (("face_distance", "0.7"), ("face", "no"), ("image", 3), ("clip_score", math.nan),
                       ("seed", 1.5), ("guidance_scale", "5")):
        cases.append(Case("scores.json", f"per_image[0].{key}", _json({**base, "per_image": [{**rows[0], key: value}, *rows[1:]]})))
    curve = [{"step": 5, "face_distance": 0.7, "clip_score": 0.3}, {"step": 10, "face_distance": 0.6}]
    for key, value in (("step", 0), ("step", "10"), ("face_distance", "0.6"), ("faceless", -1), ("clip_score", math.inf)):
        bent = [curve[0], {**curve[1], key: value}]
        cases.append(Case("scores.json", f"curve[1].{key}={json.dumps(value)}", _json({**base, "curve": bent})))
    for key, value in (("step", "7"), ("step", None), ("total", -1), ("reason", 3)):
        stop = {"step": 7, "total": 20, "best_step": 5, "patience": 2, "reason": "no better face distance"}
        cases.append(Case("scores.json", f"early_stop.{key}={json.dumps(value)}", _json({**base, "early_stop": {**stop, key: value}})))
    cases.append(Case("scores.json", "base.model=3", _json({**base, "base": {"model": 3, "quantize": "none"}})))
    cases.append(Case("scores.json", "best_step=0", _json({**base, "best_step": 0})))
    cases.append(Case("scores.json", "sound-curve", _json({**base, "curve": curve, "best_step": 10, "early_stop": {"step": 10},
                                                           "base": {"model": "m", "revision": None, "quantize": "none"}}), bad=False))
    cases.append(Case("scores.json", "per_prompt-mapping", _json({**base, "per_prompt": {"a photo": {"clip_score": 0.3}}}), bad=False))
    return cases + _whole_file_cases("scores.json", _json(base))


# -- events.jsonl: a valid log with one bad record in it

EVENT_FIELDS = {
    "step": {"step": "count", "total": "count", "loss": "float", "lr": "float", "sec_per_step": "time",
             "eta_s": "time", "mem_peak": "count"},
    "stage": {"stage": "str", "t": "time"},
    "sample": {"step": "count", "paths": "list", "prompts": "list", "path": "path"},
    "eval_image": {"path": "path", "prompt": "str", "guidance": "float", "seed": "int", "checkpoint": "count"},
    "checkpoint": {"step": "count"},
    "curve_begin": {"every": "count", "prompts": "list", "patience": "count", "carried": "rows"},
    "curve": {"step": "count", "face_distance": "float", "clip_score": "float", "faceless": "count",
              "faceless_images": "list", "images": "list", "seconds": "time", "generate_s": "time"},
    "curve_failed": {"step": "count", "message": "str"},
    "early_stop": {"step": "count", "total": "count", "reason": "str", "patience": "count", "best_step": "count",
                   "lr": "float", "schedule_steps": "count"},
    "best_lora": {"step": "count", "path": "path"},
}  # fmt: skip
GOOD_EVENT = {
    "step": {"type": "step", "step": 5, "total": 20, "loss": 0.3, "lr": 1e-4, "sec_per_step": 0.5, "eta_s": 7.5,
             "mem_peak": 1000},
    "stage": {"type": "stage", "stage": "train", "t": 1_767_225_600.0},
    "sample": {"type": "sample", "step": 10, "paths": ["samples/step_10/a.png"], "prompts": ["a photo"]},
    "eval_image": {"type": "eval_image", "path": "samples/eval/p01.png", "prompt": "a photo", "guidance": 3.5,
                   "seed": 0, "checkpoint": 10},
    "checkpoint": {"type": "checkpoint", "step": 10, "path": "checkpoints/checkpoint-10"},
    "curve_begin": {"type": "curve_begin", "every": 5, "prompts": ["a photo"], "patience": 2,
                    "carried": [{"step": 5, "face_distance": 0.7, "clip_score": 0.3, "faceless": 0}]},
    "curve": {"type": "curve", "step": 10, "face_distance": 0.6, "clip_score": 0.31, "faceless": 0,
              "faceless_images": [], "images": ["samples/curve/step-10/p01.png"], "seconds": 1.5, "generate_s": 1.0},
    "curve_failed": {"type": "curve_failed", "step": 15, "message": "RuntimeError: boom"},
    "early_stop": {"type": "early_stop", "step": 15, "total": 20, "reason": "no better face distance",
                   "patience": 2, "best_step": 10, "lr": 1e-4, "lr_scheduler": "constant", "schedule_steps": 20},
    "best_lora": {"type": "best_lora", "step": 10, "path": "lora/best"},
}  # fmt: skip
REQUIRED_EVENT_FIELDS = {"step": {"step"}, "stage": {"stage"}, "sample": {"step", "paths", "prompts"},
                         "eval_image": {"path"}, "checkpoint": {"step"}, "curve_begin": {"every"},
                         "curve": {"step"}, "curve_failed": {"step"}, "early_stop": {"step"},
                         "best_lora": {"step"}}  # fmt: skip
BAD_LINES = [
    ("garbage-line", b"this is not json"),
    ("list-line", b"[1, 2]"),
    ("type-number", b'{"type": 3, "step": 1}'),
    ("no-type", b'{"step": 1}'),
    ("path-nul", b'{"type": "eval_image", "path": "a\\u0000b.png"}'),
    ("not-utf8", b'{"type": "stage", "stage": "tr\xffain"}'),
]


def events_cases(valid: bytes) -> list[Case]:
    cases = []
    for kind, kinds in EVENT_FIELDS.items():
        for key, field_kind in kinds.items():
            for value, bad in [*BAD_VALUES[field_kind], (None, key in REQUIRED_EVENT_FIELDS[kind])]:
                record = _json({**GOOD_EVENT[kind], key: value})
                cases.append(Case("events.jsonl", f"{kind}.{key}={json.dumps(value)[:10]}", valid + record + b"\n", bad))
    for label, line in BAD_LINES:
        bad = label != "not-utf8"  # decoded with replacement characters: a stage name, odd but harmless
        cases.append(Case("events.jsonl", label, valid + line + b"\n", bad))
    cases.append(Case("events.jsonl", "torn-last-line", valid + b'{"type": "step", "st', bad=False))
    cases.append(Case("events.jsonl", "huge-line", valid + b'{"type": "stage", "stage": "' + b"x" * 2_000_000 + b'"}\n',
                      bad=False))
    return cases
