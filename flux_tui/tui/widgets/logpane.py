"""The live tail of a run's train.log.

Lines arrive in batches from the watcher thread (one `write_lines` per batch: one call per line is two
orders of magnitude slower). The pane follows new lines while it is scrolled to the end; once the user
scrolls up it stays where they are, also when old lines are dropped off the top to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import Log

from flux_tui.tui.runview import MAX_LOG_LINES


class LogPane(Log):
    DEFAULT_CSS = """
    LogPane { height: 1fr; border: round $panel; border-title-color: $text-muted; }
    LogPane:focus { border: round $accent; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_LOG_LINES, auto_scroll=True, highlight=False, **kwargs)
        self.run_name: str | None = None
        self.border_title = "train.log"
        # Whether the pane follows new lines. Kept here rather than read from the scroll position when lines
        # arrive: in a burst, a batch can land before the previous batch's scroll to the end took effect.
        self.following = True

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self.following = new_value >= self.max_scroll_y

    def show_run(self, name: str | None, lines: Sequence[str]) -> None:
        """Start over with another run's log (or the same run's log read again from its start)."""
        self.run_name = name
        self.border_title = f"train.log · {name}" if name else "train.log"
        self.clear()
        self.following = True
        if lines:
            self.write_lines(lines, scroll_end=True)
        self.scroll_end(animate=False, immediate=True)

    def append(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        following = self.following
        before = self.line_count
        self.write_lines(lines, scroll_end=False)
        if following:
            self.scroll_end(animate=False, immediate=True)
            return
        dropped = before + len(lines) - self.line_count
        if dropped > 0:
            # The top lines were pruned: move up as much, so the lines the user reads stay in place.
            self.scroll_to(y=max(0, self.scroll_y - dropped), animate=False, immediate=True)
