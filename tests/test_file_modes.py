"""Files the project writes get the permissions the umask gives, so teammates on a shared server can read
runs: real processes started under a real umask write through the project's own writers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flux_tui.core import fsutil

CORE_WRITES = """
from flux_tui.core.fsutil import atomic_write_json, atomic_write_text, append_jsonl, current_umask
from flux_tui.core.runs import RunDir
atomic_write_text(out / "notes.txt", "x")
atomic_write_json(out / "a" / "b.json", {"k": 1})
append_jsonl(out / "index.jsonl", {"k": 1})
run = RunDir(out / "runs" / "r")
run.write_status(state="queued")
run.append_event("stage", stage="prepare")
print(oct(current_umask()))
"""

ENGINE_WRITES = """
import shutil, torch
from flux_tui.engine import cache, checkpoint, data, imagemeta, score
from PIL import Image
photos = out / "photos"
photos.mkdir()
shutil.copyfile(demo / "photos" / "01.jpg", photos / "01.jpg")
data.prepare_images(photos, 64, run.data_dir, out / "cache", lambda _: None)
fc = cache.FeatureCache(out / "cache", "fp", "r")
fc.put("latents", "k", {"mean": torch.zeros(2), "std": torch.ones(2)}, {"image": "01.jpg"})
param = torch.nn.Parameter(torch.zeros(2))
opt = torch.optim.AdamW([param])
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
checkpoint.save(run, 2, 4, {"w": torch.ones(2)}, opt, sched, torch.Generator(), keep=2)
imagemeta.save_png(Image.new("RGB", (8, 8)), run.eval_dir / "p00.png", {"prompt": "x"})
score.write_scores(run.scores_json, {"face_distance": 0.5})
"""


def _write_under(umask: int, out: Path, engine: bool, demo: Path | None = None) -> str:
    code = f"from pathlib import Path\nout = Path({str(out)!r})\ndemo = Path({str(demo)!r})\n" + CORE_WRITES
    code += ENGINE_WRITES if engine else ""
    proc = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in sorted(root.rglob("*"))}


def _check(root: Path, umask: int) -> None:
    modes = _modes(root)
    assert modes and not [name for name in modes if Path(name).name.startswith(".")]  # no temp file left
    for name, mode in modes.items():
        want = (0o777 if (root / name).is_dir() else 0o666) & ~umask
        assert mode == want, f"{name}: {mode:o}, want {want:o} under umask {umask:03o}"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027, 0o077])
def test_state_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert _write_under(umask, out, engine=False) == oct(umask)  # read back without changing it
    _check(out, umask)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_engine_outputs_follow_the_umask(tmp_path: Path, demo_workspace: Path, umask: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _write_under(umask, out, engine=True, demo=demo_workspace)
    names = _modes(out)
    for expected in ("runs/r/status.json", "runs/r/events.jsonl", "runs/r/checkpoints/checkpoint-2/optimizer.pt",
                     "runs/r/scores.json", "runs/r/samples/eval/p00.png", "cache/latents/k.safetensors",
                     "cache/index.jsonl"):  # fmt: skip
        assert expected in names
    assert any(n.startswith("runs/r/data/01-") for n in names) and any(n.startswith("cache/crops/") for n in names)
    _check(out, umask)


def test_the_umask_read_from_proc_and_by_setting_it_agree() -> None:
    old = os.umask(0o027)
    try:
        assert fsutil.current_umask() == 0o027
        assert fsutil._umask_by_setting() == 0o027
        assert fsutil.file_mode() == 0o640 and fsutil.file_mode(executable=True) == 0o750
    finally:
        os.umask(old)
