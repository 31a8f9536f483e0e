"""The key bar at the foot of every view: the keys of the screen in front, read from its bindings.

Unlike a plain footer that cuts off whatever does not fit, it makes room in a set order, so `?` (help) and `q`
(quit) are there at any width: first the keys that share a group (the view switches `1`-`4`, the leaderboard's
sorts) fold into one entry (`1234 views`), then the command palette's key goes (ctrl+p still works, `?` lists
it), then the view's own keys from the last. Help (`?`) lists every key of every view from the same bindings.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.binding import Binding
from textual.widget import Widget


@dataclass(frozen=True)
class Entry:
    key: str  # the key a click presses
    label: str  # the key(s) as shown
    description: str
    enabled: bool = True
    kept: bool = False  # never dropped: help and quit
    group: Binding.Group | None = None

    @property
    def width(self) -> int:
        return len(self.label) + 2 + (len(self.description) + 1 if self.description else 0)


def fold_group(entries: list[Entry], group: Binding.Group) -> list[Entry]:
    """The entries of `group` side by side as a single entry: `1 Matrix 2 Leaderboard` -> `12 views`."""
    out: list[Entry] = []
    for e in entries:
        prev = out[-1] if out else None
        if e.group is not group:
            out.append(e)
        elif prev is not None and prev.group is group:
            joined = prev.label + ("" if group.compact else " ") + e.label
            out[-1] = Entry(prev.key, joined, group.description, prev.enabled or e.enabled, group=group)
        else:
            out.append(Entry(e.key, e.label, group.description, e.enabled, e.kept, group))
    return out


def fit(entries: list[Entry], palette: Entry | None, width: int) -> tuple[list[Entry], Entry | None]:
    """What fits in `width` cells: as is; then with each group folded, the last group first; then without the
    palette's key; then without the view's last keys, never without help and quit."""

    def total(es: list[Entry], p: Entry | None) -> int:
        return sum(e.width for e in es) + (p.width + 1 if p else 0)

    groups: list[Binding.Group] = []
    for e in entries:
        if e.group is not None and e.group not in groups:
            groups.append(e.group)
    for group in [None, *reversed(groups)]:
        if group is not None:
            entries = fold_group(entries, group)
        if total(entries, palette) <= width:
            return entries, palette
    kept = list(entries)
    while total(kept, None) > width:
        droppable = [i for i, e in enumerate(kept) if not e.kept]
        if not droppable:
            break
        del kept[droppable[-1]]  # the views' group first (it is last), then the view's own keys from the end
    return kept, None


class KeyBar(Widget):
    """The active keys of the screen, one line, docked at the bottom."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; width: 1fr; background: $footer-background; color: $footer-foreground; }
    KeyBar > .keybar--key { color: $footer-key-foreground; background: $footer-key-background; text-style: bold; }
    KeyBar > .keybar--description { color: $footer-description-foreground; }
    KeyBar > .keybar--disabled { text-style: dim; }
    """
    COMPONENT_CLASSES = {"keybar--key", "keybar--description", "keybar--disabled"}
    KEPT_ACTIONS = frozenset({"help", "quit"})  # the app's: in every view, at any width

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._spans: list[tuple[int, int, str]] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def _bindings_changed(self, screen: object) -> None:
        self.refresh()

    def on_resize(self) -> None:
        self.refresh()

    def entries(self) -> tuple[list[Entry], Entry | None]:
        """The screen's shown keys (its own, then the app's), one per action, and the palette's key."""
        app = self.app
        active = self.screen.active_bindings
        own, shared, seen = [], [], set()
        for node_binding in active.values():
            node, b, enabled = node_binding.node, node_binding.binding, node_binding.enabled
            if not b.show or b.action in seen:
                continue
            seen.add(b.action)
            entry = Entry(b.key.split(",")[0], app.get_key_display(b), b.description, enabled,
                          node is app and b.action in self.KEPT_ACTIONS, b.group)  # fmt: skip
            (shared if node is app else own).append(entry)
        shared.sort(key=lambda e: not e.kept)  # help and quit right after the view's own keys
        palette = None
        pb = active.get(app.COMMAND_PALETTE_BINDING) if app.ENABLE_COMMAND_PALETTE else None
        if pb is not None:
            palette = Entry(pb.binding.key, app.get_key_display(pb.binding), pb.binding.description or "palette")
        return own + shared, palette

    def render(self) -> RenderResult:
        entries, palette = fit(*self.entries(), self.size.width)
        key_style = self.get_component_rich_style("keybar--key")
        desc_style = self.get_component_rich_style("keybar--description")
        dim = self.get_component_rich_style("keybar--disabled")
        text, self._spans = Text(no_wrap=True, overflow="crop"), []

        def add(e: Entry) -> None:
            start = text.cell_len
            text.append(f" {e.label} ", key_style + (dim if not e.enabled else None))
            if e.description:
                text.append(f"{e.description} ", desc_style + (dim if not e.enabled else None))
            self._spans.append((start, text.cell_len, e.key))

        for e in entries:
            add(e)
        if palette is not None:
            text.append(" " * max(1, self.size.width - text.cell_len - palette.width))
            add(palette)
        return text

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
