"""Screens pushed over another (dialogs, a run's detail, compare, full-size images, help) close once.

Keys arrive in batches (SSH delivers two Enters in one read), so a second "close" often comes while the
screen is already closing. Textual's `dismiss` pops whatever screen is on top, so that second call would pop
the screen below (or, with one screen left, end the app with ScreenStackError) and run the result callback
twice. Here a screen closes only while it is the one on top, and only once.
"""

from __future__ import annotations

from typing import Any

from textual.app import ScreenStackError
from textual.await_complete import AwaitComplete


class ClosesOnce:
    """Mix in before a Screen class: `dismiss` (and the `back` action) act only on the top screen, once."""

    _flux_dismissed = False

    def _on_top(self) -> bool:
        try:
            return bool(self.is_attached) and self.app.screen is self  # type: ignore[attr-defined]
        except ScreenStackError:
            return False

    def dismiss(self, result: Any = None) -> AwaitComplete:
        if self._flux_dismissed or not self._on_top():
            return AwaitComplete.nothing()
        self._flux_dismissed = True
        return super().dismiss(result)  # type: ignore[misc]

    def action_back(self) -> None:
        self.dismiss()
