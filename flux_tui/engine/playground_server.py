"""The playground's engine: a long-lived process that keeps the pipeline loaded between prompts.

    python -m flux_tui.engine.playground_server

It reads one JSON request per line on stdin and answers on stdout with JSON lines (logs go to stderr;
anything a library prints to stdout is sent there too, so the protocol stream stays clean). Every request
carries an `id` and an `op`; the answer is `{"event": "result", "id", "op", ...}` or `{"event": "error",
"id", "op", "message"}`, after any number of `{"event": "progress", "id", "phase", "step", "total"}`.
On start it says `{"event": "ready", "pid"}`. `flux_tui.core.playground_client` (core) is the client and documents
each op.

The base pipeline loads on the first `generate` (or an explicit `load`) and stays loaded until the base
model changes; LoRAs are swapped only when the chosen set or its weights change; the face and CLIP models
load once. Each answer to `generate` carries the process's counters (`pipeline_loads`, `generations`)
and the time spent loading versus generating, so a caller can see the second prompt reused the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flux_tui.core import playground_folder
from flux_tui.engine.device import is_oom
from flux_tui.engine.imagemeta import GenSettings, Job, metadata_for, save_png
from flux_tui.engine.models import ModelError
from flux_tui.engine.pipeline import GenerateError, load_pipeline, resolve_lora, set_loras
from flux_tui.engine.score import (
    IMAGE_SUFFIXES,
    ClipScorer,
    FaceEmbedder,
    ScoreError,
    list_images,
    load_image,
)

_out: IO[str] = sys.stdout  # the protocol stream; replaced in main() by a private copy of fd 1


def emit(event: str, **data: Any) -> None:
    _out.write(json.dumps({"event": event, **data}, default=str) + "\n")
    _out.flush()


def log(message: str) -> None:
    print(f"playground: {message}", file=sys.stderr, flush=True)


class RequestError(Exception):
    """A request that cannot be served as asked (bad value, missing file); the message says what to fix."""


def _number(req: dict[str, Any], key: str, kind: type, default: Any, low: float | None = None) -> Any:
    value = req.get(key, default)
    if value is None:
        return None
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if low is not None and value < low:
        raise RequestError(f"{key}: expected a value >= {low:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class _GenerateRequest:
    """A `generate` request's values, checked."""

    prompt: str
    guidance: float
    steps: int
    seed: int
    width: int
    height: int
    max_sequence_length: int

    @classmethod
    def parse(cls, req: dict[str, Any]) -> _GenerateRequest:
        prompt = str(req.get("prompt") or "").strip()
        if not prompt:
            raise RequestError("prompt: type a prompt first")
        guidance = _number(req, "guidance", float, 3.5, 0)
        steps = _number(req, "steps", int, 28, 1)
        seed = _number(req, "seed", int, 0)
        width = _number(req, "width", int, 1024, 16)
        height = _number(req, "height", int, width, 16)
        for key, v in (("width", width), ("height", height)):
            if v % 16:
                raise RequestError(f"{key}: must be a multiple of 16, got {v}")
        return cls(prompt, guidance, steps, seed, width, height, _number(req, "max_sequence_length", int, 512, 1))


class Playground:
    def __init__(self) -> None:
        self.workspace = Path.cwd()
        self.base_model: str | None = None
        self.revision: str | None = None
        self.clip_model: str | None = None
        self.face_weights: str | None = None
        self.cache_dir: Path | None = None
        self.device: str | None = None
        self.pipe: Any = None
        self.face: Any = None
        self.clip: Any = None
        self.loras: list[dict[str, Any]] = []  # wanted: {path, weight, run}
        self._applied: list[tuple[str, float]] | None = None  # what the pipeline holds now
        self.refs: dict[str, Any] = {}  # photo path -> embedding (None: no face found)
        self.counters = {"pipeline_loads": 0, "lora_loads": 0, "generations": 0, "face_loads": 0, "clip_loads": 0}
        self.load_s_total = 0.0

    # -- ops ---------------------------------------------------------------------------------------
    def op_configure(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        if "workspace" in req:
            self.workspace = Path(req["workspace"]).expanduser()
        if "base_model" in req and (req["base_model"], req.get("revision")) != (self.base_model, self.revision):
            if self.pipe is not None:
                log(f"base model changed to {req['base_model']}: the next prompt loads it")
            self.base_model, self.revision = req["base_model"], req.get("revision")
            self.pipe, self._applied = None, None
        if "clip_model" in req and req["clip_model"] != self.clip_model:
            self.clip_model, self.clip = req["clip_model"], None
        if "face_weights" in req and req["face_weights"] != self.face_weights:
            self.face_weights, self.face = req["face_weights"], None
            self.refs = {p: None for p in self.refs}  # embeddings of the old network no longer compare
            self._embed_refs(list(self.refs), rid)
        if "cache_dir" in req:
            self.cache_dir = Path(req["cache_dir"]) if req["cache_dir"] else None
        if "device" in req:
            self.device = req["device"]
        return self.op_stats(req, rid)

    def op_load(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        load_s = self._ensure_pipeline(rid)
        return {"load_s": load_s, **self.counters}

    def op_set_loras(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        wanted = []
        for i, item in enumerate(req.get("loras") or []):
            if not isinstance(item, dict) or not item.get("path"):
                raise RequestError(f"loras[{i}]: expected {{\"path\": ..., \"weight\": ...}}, got {item!r}")
            weight = _number(item, "weight", float, 1.0)
            try:
                file, run = resolve_lora(item["path"])
            except GenerateError as exc:
                raise RequestError(str(exc)) from None
            wanted.append({"path": str(file), "weight": weight, "run": run or item.get("run")})
        self.loras = wanted
        return {"loras": wanted}

    def op_add_reference(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        added: list[str] = []
        for raw in req.get("paths") or []:
            p = Path(raw).expanduser()
            if not p.is_absolute():
                p = self.workspace / p
            if p.is_dir():
                photos = list_images(p)
                if not photos:
                    raise RequestError(f"{p}: no images in that folder ({', '.join(IMAGE_SUFFIXES)})")
            elif p.is_file():
                if p.suffix.lower() not in IMAGE_SUFFIXES:
                    raise RequestError(f"{p}: not an image ({', '.join(IMAGE_SUFFIXES)})")
                photos = [p]
            else:
                raise RequestError(f"{p}: no such file or folder")
            added += [str(x) for x in photos if str(x) not in self.refs]
        self._embed_refs(added, rid)
        return {"added": added, **self.reference_summary()}

    def op_clear_reference(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        self.refs = {}
        return self.reference_summary()

    def op_generate(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        ask = _GenerateRequest.parse(req)
        # One key press in the dashboard is one request: it may carry the base model and LoRAs to use.
        if "base_model" in req:
            self.op_configure({"base_model": req["base_model"], "revision": req.get("revision")}, rid)
        if "loras" in req:
            self.op_set_loras(req, rid)
        t0 = time.monotonic()
        load_s = self._ensure_pipeline(rid)
        lora_s = self._apply_loras(rid)
        t2 = time.monotonic()
        image = self._render(ask, rid)
        t3 = time.monotonic()
        gen = GenSettings(
            base_model=str(self.base_model), width=ask.width, height=ask.height, num_inference_steps=ask.steps,
            revision=self.revision, loras=[dict(x) for x in self.loras],
        )  # fmt: skip
        path = playground_folder.new_image_path(self.workspace, ask.seed)
        meta = {**metadata_for(Job(path.name, ask.prompt, ask.guidance, ask.seed), gen), "source": "playground"}
        save_png(image, path, meta)
        scores, score_note = self._score(path, ask.prompt, rid)
        t4 = time.monotonic()
        out = {
            "path": str(path),
            "prompt": ask.prompt,
            "seed": ask.seed,
            "guidance": ask.guidance,
            "steps": ask.steps,
            "width": ask.width,
            "height": ask.height,
            "loras": self.loras,
            **scores,
            "score_note": score_note,
            "references": len([e for e in self.refs.values() if e is not None]),
            "timings": {"load_s": load_s, "lora_s": lora_s, "generate_s": t3 - t2, "score_s": t4 - t3,
                        "total_s": t4 - t0},  # fmt: skip
            "counters": dict(self.counters),
        }
        playground_folder.append_index(self.workspace, {k: v for k, v in out.items() if k != "counters"} | {"t": time.time()})
        return out

    def _render(self, ask: _GenerateRequest, rid: Any) -> Any:
        """One image from the loaded pipeline, with a progress event per denoising step."""
        import torch

        def on_step(pipe: Any, i: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            emit("progress", id=rid, phase="generate", step=i + 1, total=ask.steps)
            return kwargs

        emit("progress", id=rid, phase="generate", step=0, total=ask.steps)
        result = self.pipe(
            prompt=ask.prompt,
            height=ask.height,
            width=ask.width,
            num_inference_steps=ask.steps,
            guidance_scale=ask.guidance,
            generator=torch.Generator(device="cpu").manual_seed(ask.seed),
            max_sequence_length=ask.max_sequence_length,
            callback_on_step_end=on_step,
        )
        self.counters["generations"] += 1
        return result.images[0]

    def op_stats(self, req: dict[str, Any], rid: Any) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "base_model": self.base_model,
            "pipeline_loaded": self.pipe is not None,
            "loras": self.loras,
            **self.reference_summary(),
        }

    # -- helpers -----------------------------------------------------------------------------------
    def _ensure_pipeline(self, rid: Any) -> float:
        """Load the base pipeline unless it is loaded already; the seconds it took (0.0 when reused)."""
        if self.pipe is not None:
            return 0.0
        if not self.base_model:
            raise RequestError("base_model: pick a base model first (configure)")
        emit("progress", id=rid, phase="load", step=0, total=1, message=f"loading {self.base_model}")
        t0 = time.monotonic()
        try:
            self.pipe = load_pipeline(self.base_model, self.device, self.revision)
        except ModelError as exc:
            raise RequestError(f"base_model: {exc}") from None
        self._applied = []
        self.counters["pipeline_loads"] += 1
        dt = time.monotonic() - t0
        self.load_s_total += dt
        log(f"pipeline loaded in {dt:.1f} s")
        return dt

    def _apply_loras(self, rid: Any) -> float:
        wanted = [(x["path"], float(x["weight"])) for x in self.loras]
        if wanted == self._applied:
            return 0.0
        emit("progress", id=rid, phase="loras", step=0, total=1, message=f"{len(wanted)} LoRA(s)")
        t0 = time.monotonic()
        set_loras(self.pipe, [(Path(p), w) for p, w in wanted])
        self._applied = wanted
        if wanted:
            self.counters["lora_loads"] += 1
        return time.monotonic() - t0

    def _face_model(self) -> Any:
        if self.face is None:
            self.face = FaceEmbedder(self.face_weights, self.device)
            self.counters["face_loads"] += 1
        return self.face

    def _clip_model(self) -> Any:
        if self.clip is None and self.clip_model:
            self.clip = ClipScorer(self.clip_model, self.device)
            self.counters["clip_loads"] += 1
        return self.clip

    def _embed_refs(self, paths: list[str], rid: Any) -> None:
        if not paths:
            return

        try:
            face = self._face_model()
        except ScoreError as exc:
            raise RequestError(f"face_weights: {exc}") from None
        for i, p in enumerate(paths):
            emit("progress", id=rid, phase="reference", step=i, total=len(paths))
            self.refs[p] = face.embed([load_image(Path(p))])[0]

    def reference_summary(self) -> dict[str, Any]:
        return {
            "reference_photos": len(self.refs),
            "reference_faces": sum(e is not None for e in self.refs.values()),
            "reference_faceless": [Path(p).name for p, e in self.refs.items() if e is None],
        }

    def _score(self, path: Path, prompt: str, rid: Any) -> tuple[dict[str, Any], str]:
        """CLIP score, face found, face distance and identity similarity of one image. A missing scoring
        model does not lose the image: the scores it would give are None and the note says why."""
        import torch

        emit("progress", id=rid, phase="score", step=0, total=1)
        scores: dict[str, Any] = {"clip_score": None, "face": None, "face_distance": None, "identity_similarity": None}
        notes = []
        image = load_image(path)
        try:
            clip = self._clip_model()
            if clip is not None:
                scores["clip_score"] = float(clip.cosines([image], [prompt])[0])
            else:
                notes.append("no CLIP model configured")
        except ScoreError as exc:
            notes.append(f"CLIP: {exc}")
        try:
            emb = self._face_model().embed([image])[0]
            scores["face"] = emb is not None
            found = [e for e in self.refs.values() if e is not None]
            if emb is not None and found:
                mean = torch.stack(found).mean(0)
                scores["face_distance"] = float(torch.linalg.vector_norm(emb - mean))
                scores["identity_similarity"] = float(emb @ torch.nn.functional.normalize(mean.float(), dim=0))
            elif not found:
                notes.append("add reference photos for a face distance")
        except ScoreError as exc:
            notes.append(f"face: {exc}")
        return scores, "; ".join(notes)

    # -- loop --------------------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Serve one request line; False when the process should stop."""
        try:
            req = json.loads(line)
        except json.JSONDecodeError as exc:
            emit("error", id=None, op=None, message=f"not a JSON request ({exc}): {line[:200]!r}")
            return True
        if not isinstance(req, dict):
            emit("error", id=None, op=None, message=f"expected a JSON object, got {line[:200]!r}")
            return True
        rid, op = req.get("id"), req.get("op")
        if op == "shutdown":
            emit("result", id=rid, op=op, **self.op_stats(req, rid))
            return False
        fn = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if fn is None:
            emit("error", id=rid, op=op, message=f"unknown op {op!r} (one of {', '.join(playground_folder.OPS)})")
            return True
        try:
            emit("result", id=rid, op=op, **fn(req, rid))
        except RequestError as exc:
            emit("error", id=rid, op=op, message=str(exc))
        except Exception as exc:  # the process outlives one failed request, and says what went wrong
            traceback.print_exc(file=sys.stderr)
            emit("error", id=rid, op=op, message=f"{type(exc).__name__}: {exc}", oom=is_oom(exc))
        return True


def main() -> int:
    global _out
    # Keep a private handle on the real stdout for the protocol, and point fd 1 at stderr, so that a
    # library printing (or a C extension writing to fd 1) cannot corrupt the JSON stream.
    _out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    engine = Playground()
    emit("ready", pid=os.getpid())
    for line in sys.stdin:
        if line.strip() and not engine.handle(line):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
