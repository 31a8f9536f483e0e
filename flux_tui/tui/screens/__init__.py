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


def _leaderboard() -> Screen:
    from flux_tui.tui.screens.leaderboard import LeaderboardScreen

    return LeaderboardScreen()


def _effects() -> Screen:
    from flux_tui.tui.screens.effects import EffectsScreen

    return EffectsScreen()


def _playground() -> Screen:
    from flux_tui.tui.screens.playground import PlaygroundScreen

    return PlaygroundScreen()


VIEWS: list[View] = [
    View("matrix", "1", "Matrix", _dashboard),
    View("leaderboard", "2", "Leaderboard", _leaderboard),
    View("effects", "3", "Effects", _effects),
    View("playground", "4", "Playground", _playground),
]
