"""The dashboard's screens. `VIEWS` lists the top-level views, each a Textual mode with its key: a later
view (leaderboard, effects, playground) adds a screen module here and one `View` line, and the app gives
it a key binding, a footer entry and a command-palette entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.binding import Binding
from textual.screen import Screen


@dataclass(frozen=True)
class View:
    mode: str  # Textual mode name
    key: str  # the key that switches to it
    title: str
    load: Callable[[], type[Screen]]  # the screen's class, imported when first needed

    def factory(self) -> Screen:
        return self.load()()


VIEW_KEYS = Binding.Group("views", compact=True)  # the view switches fold into one key-bar entry when narrow


def _dashboard() -> type[Screen]:
    from flux_tui.tui.screens.dashboard import DashboardScreen

    return DashboardScreen


def _leaderboard() -> type[Screen]:
    from flux_tui.tui.screens.leaderboard import LeaderboardScreen

    return LeaderboardScreen


def _effects() -> type[Screen]:
    from flux_tui.tui.screens.effects import EffectsScreen

    return EffectsScreen


def _playground() -> type[Screen]:
    from flux_tui.tui.screens.playground import PlaygroundScreen

    return PlaygroundScreen


VIEWS: list[View] = [
    View("matrix", "1", "Matrix", _dashboard),
    View("leaderboard", "2", "Leaderboard", _leaderboard),
    View("effects", "3", "Effects", _effects),
    View("playground", "4", "Playground", _playground),
]
