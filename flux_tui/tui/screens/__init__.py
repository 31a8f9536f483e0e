"""The dashboard's screens. `VIEWS` lists the top-level views, each a Textual mode with its key: a later
view (leaderboard, effects, playground) adds a screen module here and one `View` line, and the app gives
it a key binding, a footer entry and a command-palette entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.screen import Screen


@dataclass(frozen=True)
class View:
    mode: str  # Textual mode name
    key: str  # the key that switches to it
    title: str
    factory: Callable[[], Screen]


def _dashboard() -> Screen:
    from flux_tui.tui.screens.dashboard import DashboardScreen

    return DashboardScreen()


VIEWS: list[View] = [
    View("matrix", "1", "Matrix", _dashboard),
]
