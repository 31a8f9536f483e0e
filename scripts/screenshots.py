"""Write an SVG of each dashboard screen into screenshots/ (the README shows them).

    python scripts/screenshots.py [OUT_DIR]

The screens are the snapshot tests' scenes (tests/tui_scenes.py): hand-written run folders in every state,
a fixed machine reading, times in UTC, so two runs of this script give the same pictures. The playground
is pictured for real: the demo workspace's tiny model generates one image in the engine process.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tui_scenes import SCENES, SIZE, SMALL, SMALL_SCENES, SceneWorkspace  # noqa: E402


async def shoot(ws: SceneWorkspace, out: Path) -> list[Path]:
    written = []
    shots = [(s, SIZE, s.name) for s in SCENES] + [(s, SMALL, f"{s.name}-80x24") for s in SMALL_SCENES]
    for scene, size, name in shots:
        app = ws.app(scene)
        async with app.run_test(size=size) as pilot:
            await scene.run_before(pilot)
            app.title = f"flux-tui · {scene.title}"
            path = out / f"{name}.svg"
            app.save_screenshot(path.name, str(out))
            written.append(path)
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}  {scene.title}")
    return written


async def shoot_playground(tmp: Path, out: Path) -> Path:
    import subprocess

    from flux_tui.core import config
    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.widgets.images import FittedImage

    demo = tmp / "demo"
    subprocess.run([sys.executable, "-m", "flux_tui.engine.demo", str(demo)], check=True, capture_output=True)
    app = FluxApp(config.load(demo / "experiments.toml"), telemetry=None, run_queue=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        screen = app.screen
        for _ in range(1200):
            if getattr(screen, "engine_ready", False) and "6 reference" in str(screen.query_one("#pg-refs").render()):
                break
            await pilot.pause(0.1)
        await pilot.press("ctrl+g")
        for _ in range(1200):
            if screen.results and screen.query_one("#pg-image", FittedImage).image is not None:
                break
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        app.title = "flux-tui · Playground: the demo's tiny model, one prompt, its scores"
        path = out / "playground.svg"
        app.save_screenshot(path.name, str(out))
    print(f"{path}  playground")
    return path


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flux-tui-screens-") as tmp:
        ws = SceneWorkspace(Path(tmp) / "ws")
        try:
            asyncio.run(shoot(ws, out))
            asyncio.run(shoot_playground(Path(tmp), out))
        finally:
            ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
