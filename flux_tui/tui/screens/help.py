"""`?`: every key of every view, what the states mean, and how runs outlive the dashboard.

The key tables are built when the help opens, from the bindings of each view and of the widgets it holds,
the same bindings the key bar at the foot of each view shows: a key added to a view is in its help too.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.keys import format_key
from textual.screen import ModalScreen, Screen
from textual.widgets import Markdown

from flux_tui.tui.screens import VIEWS
from flux_tui.tui.screens.closing import ClosesOnce

PROSE = """\
## States
`new` not started yet · `queued` waits for a free slot (the queue is on disk and advances with no dashboard
open) · `running:<stage>` prepare, train, generate, score · `done` · `failed` (reason in the detail)
· `cancelled` stopped, resumable with `enter` · `oom` out of GPU memory · `damaged` its `status.json` or
`run.json` cannot be read (or `status.json` is gone while its events say it ran): in brackets what its events
and scores still show, the reason in the detail; it is not launched until you decide (fix or delete the file,
or reset it) · `(stale)` the file's settings changed since the run trained: reset it (`R`) to train it again
with the new ones. A run whose status is lost while its trainer still holds the run's lock shows as `running`.

## The study file
The dashboard watches the study file: save an edit and the matrix shows it at once. A file with problems
leaves the last good matrix in place and lists each problem with its line; nothing is launched until the
file is fixed, and a launch always uses the file as it is on disk.

## Processes
Runs start in their own session, output to `runs/<name>/train.log`: closing the dashboard or the SSH
connection does not stop them, and when one ends the next queued run starts. From a shell: `flux-tui submit`,
`flux-tui status`, `flux-tui stop`, `flux-tui reset`. Each GPU takes `runs_per_gpu` runs (from `[workspace]`).
A queued run goes to the least busy GPU (the fewest of this workspace's runs), and among equally busy ones to
the GPU with the most free memory, pinned with `CUDA_VISIBLE_DEVICES`; without an NVIDIA GPU, to the CPU,
`runs_per_gpu` at a time.
"""


@dataclass(frozen=True)
class Section:
    title: str
    bindings: list[Binding]


def as_bindings(items: list[BindingType]) -> list[Binding]:
    """A class's BINDINGS as Binding objects (a tuple is shorthand for one), without Textual's system ones."""
    out = [b if isinstance(b, Binding) else Binding(*b) for b in items]
    return [b for b in out if not b.system]


def keys_of(*classes: type[DOMNode]) -> list[Binding]:
    """The bindings of a screen and of the widgets whose keys it offers (its `HELP_WIDGETS`)."""
    out: list[Binding] = []
    for cls in classes:
        out += as_bindings(list(cls.BINDINGS))
        for widget in getattr(cls, "HELP_WIDGETS", ()):
            out += as_bindings(list(widget.BINDINGS))
    return out


def key_label(binding: Binding) -> str:
    """`enter`, `?`, `ctrl+g`, `esc, q`: each key of a binding as a person types it."""
    names = []
    for key in binding.key.split(","):
        *mods, base = key.strip().split("+")
        shown = "enter" if base == "enter" else format_key(base)
        names.append(f"`{'+'.join([*mods, shown])}`")
    return ", ".join(names)


def sections() -> list[Section]:
    """Every view's keys, from their bindings, in the order a user meets them."""
    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.screens.compare import CompareScreen
    from flux_tui.tui.screens.detail import ImageScreen, RunDetailScreen
    from flux_tui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen

    palette = Binding(FluxApp.COMMAND_PALETTE_BINDING, "command_palette", "Commands", tooltip="every command of "
                      "the view in front, searchable (sorting by any column, each run's detail)")  # fmt: skip
    focus = [b for b in as_bindings(list(Screen.BINDINGS)) if b.action.startswith("app.focus")]
    # Screens reached from a view, listed under it.
    reached = {"matrix": [("Run detail (`d`)", RunDetailScreen),
                          ("An image full size (`enter` on a thumbnail)", ImageScreen)],
               "leaderboard": [("Compare (`v`)", CompareScreen)]}  # fmt: skip
    out = [Section("Everywhere", [*keys_of(FluxApp), palette, *focus])]
    for view in VIEWS:
        out.append(Section(f"{view.title} (`{view.key}`)", keys_of(view.load())))
        out += [Section(title, keys_of(cls)) for title, cls in reached.get(view.mode, [])]
    out.append(Section("Dialogs, and this help", keys_of(ConfirmScreen, ChoiceScreen, HelpScreen)))
    return out


def _cell(text: str) -> str:
    """Text as a table cell's Markdown: a `|` would end the cell, a `<name>` would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "\\<")


def help_markdown() -> str:
    parts = ["The keys of each view, read from its bindings (the bar at the foot shows the main ones).\n"]
    for section in sections():
        rows = [f"| {key_label(b)} | **{_cell(b.description)}**{': ' + _cell(b.tooltip) if b.tooltip else ''} |"
                for b in section.bindings]  # fmt: skip
        parts.append(f"## {section.title}\n| key | does |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    parts.append(PROSE)
    return "\n".join(parts)


class HelpScreen(ClosesOnce, ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 100%; max-width: 110; height: 90%; border: thick $accent;
                                  background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", tooltip="close the help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "flux-tui help (esc closes)"
            yield Markdown(help_markdown())
