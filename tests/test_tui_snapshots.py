"""Snapshot tests (pytest-textual-snapshot) of every screen. On a change, look at the report pytest prints,
then accept with `pytest tests/test_tui_snapshots.py --snapshot-update` if the new picture is right."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_scenes import SCENES, SIZE, SMALL, SMALL_SCENES, Scene, SceneWorkspace


@pytest.fixture(scope="module")
def scene_workspace(tmp_path_factory: pytest.TempPathFactory):
    ws = SceneWorkspace(tmp_path_factory.mktemp("scenes") / "ws")
    yield ws
    ws.close()


@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
def test_screen(scene: Scene, scene_workspace: SceneWorkspace, snap_compare) -> None:
    assert snap_compare(scene_workspace.app(scene), terminal_size=SIZE, run_before=scene.run_before)


@pytest.mark.parametrize("scene", SMALL_SCENES, ids=[s.name for s in SMALL_SCENES])
def test_screen_80x24(scene: Scene, scene_workspace: SceneWorkspace, snap_compare) -> None:
    assert snap_compare(scene_workspace.app(scene), terminal_size=SMALL, run_before=scene.run_before)


def test_every_scene_has_a_snapshot() -> None:
    stored = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
    if stored.is_dir():  # after the first --snapshot-update
        names = {p.stem for p in stored.glob("*.svg")}
        assert {f"test_screen[{s.name}]" for s in SCENES} <= names
        assert {f"test_screen_80x24[{s.name}]" for s in SMALL_SCENES} <= names
