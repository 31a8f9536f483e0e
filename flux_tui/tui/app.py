"""The dashboard application."""

from __future__ import annotations

# textual-image queries the terminal's graphics support when imported: do it before the app owns the tty.
import textual_image.renderable  # noqa: F401
from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static

from flux_tui.config import Study
from flux_tui.tui.matrix import MatrixTable


class FluxApp(App[int]):
    TITLE = "flux-tui"
    BINDINGS = [("q", "quit", "Quit (runs keep going)")]

    def __init__(self, study: Study):
        super().__init__()
        self.study = study
        self.sub_title = str(study.file)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            f"{len(self.study.experiments)} experiments · runs in {self.study.workspace.runs_dir}", id="summary"
        )
        yield MatrixTable(self.study, id="matrix")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MatrixTable).focus()
        self.set_interval(1.0, self.query_one(MatrixTable).refresh_states)


def run_dashboard(study: Study) -> int:
    FluxApp(study).run()
    return 0
