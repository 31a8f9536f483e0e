"""Write an SVG of each dashboard screen into screenshots/ (the README shows them).

    python scripts/screenshots.py [OUT_DIR]

The screens are the snapshot tests' scenes (tests/tui_scenes.py): hand-written run folders in every state,
a fixed machine reading, times in UTC, so two runs of this script give the same pictures.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tui_scenes import SCENES, SIZE, SceneWorkspace  # noqa: E402


async def shoot(ws: SceneWorkspace, out: Path) -> list[Path]:
    written = []
    for scene in SCENES:
        app = ws.app(scene)
        async with app.run_test(size=SIZE) as pilot:
            await scene.run_before(pilot)
            app.title = f"flux-tui · {scene.title}"
            path = out / f"{scene.name}.svg"
            app.save_screenshot(path.name, str(out))
            written.append(path)
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}  {scene.title}")
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flux-tui-screens-") as tmp:
        ws = SceneWorkspace(Path(tmp) / "ws")
        try:
            asyncio.run(shoot(ws, out))
        finally:
            ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
