"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline demo workspace (tiny random FLUX, tiny CLIP, stand-in face weights, photos), built
    once per test session (~10 s on a CPU). Treat it as read-only: copy it to change anything."""
    from flux_tui.engine.demo import build_demo_workspace  # imports torch lazily, only when used

    return build_demo_workspace(tmp_path_factory.mktemp("demo") / "workspace")
