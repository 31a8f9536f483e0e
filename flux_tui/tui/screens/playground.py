"""The playground (the study's demo, in the terminal): pick a base model and finished LoRAs with weights,
type a prompt, set guidance, steps, seed and size, press ctrl+g; the image appears with its CLIP score,
face distance and whether a face was found. Reference photos are added by path on the fly.

Generation runs in `flux_tui.engine.playground_server`, a separate process that keeps the pipeline loaded between
prompts (`flux_tui.core.playground_client.PlaygroundClient`). Its events arrive on the client's reader thread and are
posted to this screen as messages, so the dashboard never waits on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Header, Input, Label, ProgressBar, SelectionList, Static

from flux_tui.core import analysis
from flux_tui.core import curve as curves
from flux_tui.core.config import Study
from flux_tui.core.fsutil import is_file
from flux_tui.core.metrics import CLIP_SCORE, FACE_DISTANCE, metric
from flux_tui.core.playground_client import PlaygroundClient, PlaygroundError
from flux_tui.core.runs import BEST, KIND_EXPERIMENT, RunDir
from flux_tui.tui.format import lr_text
from flux_tui.tui.screens.base import StudyScreen
from flux_tui.tui.widgets.images import FittedImage, load_thumbnail
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.workers import background

PHASES = {"load": "loading the base model", "loras": "loading LoRAs", "generate": "generating",
          "score": "scoring", "reference": "embedding reference photos"}  # fmt: skip
IMAGE_PX = 512


class EngineEvent(Message):
    """One event from the playground process (progress, result, error, ready, exit)."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__()
        self.event = event


def lora_runs(study: Study) -> list[tuple[str, str, str]]:
    """(name, what the engine loads, description) of every run folder holding a trained LoRA, and after it
    the LoRA of its best step (`exp03@best`, lora/best/) when its score curve chose one."""
    root = study.workspace.runs_dir
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        run = RunDir(path)
        source = run.lora_source() if run.exists() else None
        if source is None or not is_file(source):
            continue
        cfg = run.config()
        lr = cfg.get("learning_rate")
        desc = f"lr {lr_text(lr) if isinstance(lr, int | float) else '?'} · rank {cfg.get('lora_rank', '?')} · " \
               f"steps {cfg.get('max_train_steps', '?')}"  # fmt: skip
        out.append((run.name, str(path), desc))
        if run.kind == KIND_EXPERIMENT and is_file(run.best_lora_file):
            best = analysis.best_step(curves.points((run.scores() or {}).get("curve")))
            out.append((f"{run.name}@{BEST}", f"{path}@{BEST}", f"its best step, {best if best else '?'} · {desc}"))
    return out


def parse_weights(text: str, n: int) -> list[float]:
    """One weight per chosen LoRA from `0.8, 0.7` (empty: 1 each). Raises ValueError saying what is wrong."""
    if not text.strip():
        return [1.0] * n
    try:
        weights = [float(w) for w in text.replace(" ", ",").split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"weights {text!r}: expected numbers separated by commas, e.g. 0.8, 0.7") from None
    if len(weights) != n:
        raise ValueError(f"weights: {len(weights)} given for {n} chosen LoRA(s); give one per LoRA")
    return weights


# An image's own scores, as the playground shows them (the engine's server scores each image it makes).
IMAGE_SCORES = (metric(CLIP_SCORE), metric(FACE_DISTANCE))


def result_text(r: dict[str, Any]) -> Text:
    t = r.get("timings", {})
    face = {True: Text("yes", style="green"), False: Text("no", style="yellow"), None: Text("-")}[r.get("face")]
    text = Text()
    for m in IMAGE_SCORES:
        text += Text(f"{m.label} ", style="bold") + Text(m.format(r.get(m.key))) + Text("   ")
    text += Text("face found ", style="bold") + face
    text += Text(f"\n{Path(r['path']).name} · seed {r.get('seed')} · guidance {r.get('guidance')} · "
                 f"{r.get('steps')} steps · {r.get('width')}x{r.get('height')}", style="dim")  # fmt: skip
    loaded = f"loaded the model in {t.get('load_s', 0):.1f}s, " if t.get("load_s") else "model reused, "
    text += Text(f"\n{loaded}generated in {t.get('generate_s', 0):.1f}s, scored in {t.get('score_s', 0):.1f}s",
                 style="dim")  # fmt: skip
    if r.get("score_note"):
        text += Text(f"\n{r['score_note']}", style="yellow")
    return text


class PlaygroundScreen(StudyScreen):
    HELP_WIDGETS = (SelectionList,)
    DEFAULT_CSS = """
    PlaygroundScreen #pg-form { width: 60; padding: 0 1; border-right: vkey $panel; }
    PlaygroundScreen #pg-form Label { width: 1fr; margin: 1 0 0 0; color: $text-muted; }
    PlaygroundScreen #pg-loras { height: auto; max-height: 10; }
    PlaygroundScreen .pg-nums { height: auto; }
    PlaygroundScreen .pg-nums Input { width: 1fr; }
    PlaygroundScreen #pg-refs { height: auto; color: $text-muted; }
    PlaygroundScreen #pg-out { padding: 0 1; }
    PlaygroundScreen #pg-phase { height: 1; }
    PlaygroundScreen #pg-image { width: 1fr; height: 1fr; min-height: 10; }
    PlaygroundScreen #pg-scores { height: auto; min-height: 3; }
    PlaygroundScreen #pg-history { height: 8; }
    PlaygroundScreen.-narrow #pg-form { width: 36; }
    PlaygroundScreen.-short #pg-form Label { margin: 0; }
    PlaygroundScreen.-short #pg-form Input { height: 1; border: none; padding: 0 1; background: $boost; }
    PlaygroundScreen.-short #pg-form Input:focus { background: $accent 30%; }
    PlaygroundScreen.-short .pg-nums Input { margin: 0 1 0 0; }
    PlaygroundScreen.-short #pg-history { height: 4; }
    PlaygroundScreen.-short #pg-image { min-height: 6; }
    """
    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate", priority=True, tooltip="generate an image from the form and "
                "score it (enter in the prompt field does the same)"),
        Binding("ctrl+r", "add_reference", "Add reference", priority=True, tooltip="add the photo or folder typed "
                "under reference photos to the face reference (enter in that field does the same)"),
        Binding("ctrl+l", "load", "Load model", priority=True, tooltip="load the base model now, before the "
                "first prompt"),
        Binding("ctrl+n", "next_seed", "Seed +1", priority=True, tooltip="the next seed"),
        Binding("escape", "leave_form", "Leave form", tooltip="out of the text fields, so that view keys (1-4, "
                "q, ?) work again; tab goes back in"),
    ]

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.client: PlaygroundClient | None = None
        self.current: int | None = None  # the request whose progress is shown
        self.busy = False
        self.results: list[dict[str, Any]] = []
        self.engine_ready = False

    def _defaults(self) -> dict[str, Any]:
        s = self.study.experiments[0].settings if self.study.experiments else None
        if s is None:
            return {"base_model": "", "guidance": 3.5, "steps": 28, "seed": 0, "size": 1024, "data_dir": ""}
        return {"base_model": s.base_model, "prompt": s.instance_prompt, "guidance": s.guidance_scales[0], "steps": s.num_inference_steps,
                "seed": s.eval_seed, "size": s.eval_resolution or s.resolution, "data_dir": s.data_dir,
                "clip_model": s.clip_model, "face_weights": s.face_weights, "revision": s.revision,
                "max_sequence_length": s.max_sequence_length}  # fmt: skip

    def compose(self) -> ComposeResult:
        d = self._defaults()
        yield Header()
        with Horizontal():
            with VerticalScroll(id="pg-form"):
                yield Label("base model (hub id or folder)")
                yield Input(str(d["base_model"]), id="pg-base")
                yield Label("LoRAs of finished runs (space toggles), then their weights: one each, default 1")
                yield SelectionList[str](id="pg-loras")
                yield Input(placeholder="weights: 0.8, 0.7", id="pg-weights")
                yield Label("prompt (enter generates)")
                yield Input(str(d.get("prompt", "")), placeholder="a photo of cr7man", id="pg-prompt")
                yield Label("guidance · steps · seed · size (px)")
                with Horizontal(classes="pg-nums"):
                    yield Input(f"{d['guidance']:g}", type="number", id="pg-guidance", tooltip="guidance")
                    yield Input(str(d["steps"]), type="integer", id="pg-steps", tooltip="steps")
                    yield Input(str(d["seed"]), type="integer", id="pg-seed", tooltip="seed")
                    yield Input(str(d["size"]), type="integer", id="pg-size", tooltip="size")
                yield Label("reference photos: a file or folder (enter adds)")
                yield Input(str(d["data_dir"]), id="pg-ref")
                yield Static(self._first_references(str(d["data_dir"])), id="pg-refs")
            with Vertical(id="pg-out"):
                yield Static("starting the generation process…", id="pg-phase")
                # A set total from the start: an indeterminate bar animates (and costs CPU) while idle.
                yield ProgressBar(total=1, id="pg-progress", show_eta=False)
                yield FittedImage(id="pg-image")
                yield Static(id="pg-scores")
                yield DataTable(id="pg-history", cursor_type="row")
        yield KeyBar()

    @staticmethod
    def _first_references(data_dir: str) -> str:
        """What the reference line says before the engine has counted any photo."""
        if data_dir and Path(data_dir).is_dir():
            return f"the training photos ({data_dir}) are added as the reference once the process is up…"
        return "no reference photos yet: type a photo or folder above and press enter (face distance needs them)"

    def on_mount(self) -> None:
        loras = self.query_one("#pg-loras", SelectionList)
        found = lora_runs(self.study)
        for name, path, desc in found:
            loras.add_option((f"{name}  {desc}", path))
        if found:
            loras.highlighted = 0  # so the first space on the list toggles a row
        else:
            loras.border_title = "none finished yet: the base model alone"
        history = self.query_one("#pg-history", DataTable)
        history.add_columns("image", "prompt", "seed", *(m.heading for m in IMAGE_SCORES), "face", "LoRAs")
        self.query_one("#pg-prompt", Input).focus()
        d = self._defaults()
        root = self.study.workspace.root
        self.client = PlaygroundClient(root, on_event=lambda e: self.post_message(EngineEvent(e)))
        self._start_engine({
            "workspace": str(root), "base_model": d["base_model"], "revision": d.get("revision"),
            "clip_model": d.get("clip_model"), "face_weights": d.get("face_weights"),
            "cache_dir": str(self.study.workspace.cache_dir),
        })  # fmt: skip

    @background(group="engine-start")
    def _start_engine(self, settings: dict[str, Any]) -> None:
        assert self.client is not None
        self.client.start()
        self.client.request("configure", **settings)
        # The study's reference is the training photos: add them at once, so face distance works from the
        # first prompt (the user can add more by path).
        data_dir = self._defaults().get("data_dir")
        if data_dir and Path(data_dir).is_dir():
            self.client.request("add_reference", paths=[str(data_dir)])

    def on_unmount(self) -> None:
        if self.client is not None:
            self.client.close(timeout=3.0)  # it also exits by itself when our end of its stdin closes

    # -- engine events (posted from the client's reader thread)
    @on(EngineEvent)
    def _engine_event(self, message: EngineEvent) -> None:
        e = message.event
        kind = e.get("event")
        if kind == "result" and e.get("op") == "configure":
            self.engine_ready = True
            self._phase("ready: the first prompt loads the base model, later ones reuse it")
        elif kind == "progress" and e.get("id") == self.current:
            phase = PHASES.get(e.get("phase", ""), e.get("phase", ""))
            bar = self.query_one("#pg-progress", ProgressBar)
            bar.update(total=max(1, e.get("total") or 1), progress=e.get("step") or 0)
            self._phase(f"{phase}{' ' + e['message'] if e.get('message') else ''}…")
        elif kind == "result" and e.get("op") == "generate":
            self._generated(e)
        elif kind == "result" and e.get("op") in ("add_reference", "clear_reference"):
            self._references(e)
            if e.get("id") == self.current:
                self.busy = False
                self._phase("reference photos added")
        elif kind == "result" and e.get("op") == "load":
            self.busy = False
            self._phase(f"base model loaded in {e.get('load_s', 0):.1f}s")
        elif kind == "error":
            self.notify(str(e.get("message")), title=f"playground: {e.get('op') or 'error'}", severity="error",
                        timeout=10)  # fmt: skip
            if e.get("id") == self.current:
                self.busy = False
                self._phase("failed: see the message; the process is still up")
        elif kind == "exit":
            self.busy, self.engine_ready = False, False
            self._phase(f"the generation process stopped: {e.get('message')} (the next prompt restarts it)")

    def _phase(self, text: str) -> None:
        self.query_one("#pg-phase", Static).update(text)

    def _references(self, e: dict[str, Any]) -> None:
        n, faces = e.get("reference_photos", 0), e.get("reference_faces", 0)
        text = f"{n} reference photo(s), {faces} with a face"
        if e.get("reference_faceless"):
            text += f" (no face in {', '.join(e['reference_faceless'])})"
        self.query_one("#pg-refs", Static).update(text if n else "no reference photos yet: face distance needs them")

    def _generated(self, e: dict[str, Any]) -> None:
        self.results.append(e)
        if e.get("id") == self.current:
            self.busy = False
        self.query_one("#pg-progress", ProgressBar).update(total=1, progress=1)
        self._phase(f"done: {Path(e['path']).name}")
        self.query_one("#pg-scores", Static).update(result_text(e))
        loras = ", ".join(f"{x.get('run') or Path(x['path']).parent.name} {x['weight']:g}" for x in e.get("loras", []))
        self.query_one("#pg-history", DataTable).add_row(
            Path(e["path"]).name, e.get("prompt", ""), str(e.get("seed")),
            *(m.format(e.get(m.key)) for m in IMAGE_SCORES), {True: "yes", False: "no"}.get(e.get("face"), "-"),
            loras or "base",
        )  # fmt: skip
        self._show_image(Path(e["path"]))

    @background(group="image")
    def _show_image(self, path: Path) -> None:
        image = load_thumbnail(path, IMAGE_PX)
        self.app.call_from_thread(self._set_image, image)

    def _set_image(self, image: PILImage.Image | None) -> None:
        self.query_one("#pg-image", FittedImage).image = image

    # -- actions
    def _value(self, id: str) -> str:
        return self.query_one(f"#{id}", Input).value.strip()

    def generate_request(self) -> dict[str, Any]:
        """The request the form describes. Raises ValueError naming the field that is wrong."""
        prompt = self._value("pg-prompt")
        if not prompt:
            raise ValueError("type a prompt first")
        numbers: dict[str, Any] = {}
        for key, id, kind in (("guidance", "pg-guidance", float), ("steps", "pg-steps", int),
                              ("seed", "pg-seed", int), ("size", "pg-size", int)):  # fmt: skip
            try:
                numbers[key] = kind(self._value(id))
            except ValueError:
                raise ValueError(f"{key}: expected {'a number' if kind is float else 'an integer'}") from None
        if numbers["size"] % 16 or numbers["size"] < 16:
            raise ValueError(f"size: must be a positive multiple of 16 (pixels), got {numbers['size']}")
        chosen = list(self.query_one("#pg-loras", SelectionList).selected)
        weights = parse_weights(self._value("pg-weights"), len(chosen))
        base = self._value("pg-base")
        if not base:
            raise ValueError("base model: give a hub id or a folder")
        return {
            "base_model": base,
            "loras": [{"path": p, "weight": w} for p, w in zip(chosen, weights, strict=True)],
            "prompt": prompt, "guidance": numbers["guidance"], "steps": numbers["steps"], "seed": numbers["seed"],
            "width": numbers["size"], "height": numbers["size"],
            "max_sequence_length": self._defaults().get("max_sequence_length", 512),
        }  # fmt: skip

    def _send(self, op: str, **params: Any) -> int | None:
        assert self.client is not None
        try:
            return self.client.request(op, **params)
        except PlaygroundError as exc:
            self.notify(str(exc), severity="error")
            return None

    def action_generate(self) -> None:
        if self.busy:
            self.notify("Still working on the last request; its progress is above", severity="warning")
            return
        try:
            request = self.generate_request()
        except ValueError as exc:
            self.notify(str(exc), title="playground", severity="error")
            return
        rid = self._send("generate", **request)
        if rid is not None:
            self.current, self.busy = rid, True
            self._phase("queued…")

    def action_add_reference(self) -> None:
        path = self._value("pg-ref")
        if not path:
            self.notify("Type the path of a photo or a folder of photos", severity="warning")
            return
        rid = self._send("add_reference", paths=[path])
        if rid is not None and not self.busy:
            self.current, self.busy = rid, True

    def action_load(self) -> None:
        if self.busy:
            return
        self._send("configure", base_model=self._value("pg-base"))
        rid = self._send("load")
        if rid is not None:
            self.current, self.busy = rid, True

    def action_next_seed(self) -> None:
        seed = self.query_one("#pg-seed", Input)
        try:
            seed.value = str(int(seed.value or 0) + 1)
        except ValueError:
            seed.value = "0"

    def action_leave_form(self) -> None:
        self.query_one("#pg-history", DataTable).focus()  # out of the text fields: view keys work again

    @on(Input.Submitted, "#pg-prompt")
    def _prompt_submitted(self) -> None:
        self.action_generate()

    @on(Input.Submitted, "#pg-ref")
    def _ref_submitted(self) -> None:
        self.action_add_reference()
