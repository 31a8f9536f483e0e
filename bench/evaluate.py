"""Evaluation throughput on the demo workspace (CPU, or the GPU when there is one): generation seconds per
image at batch 1 and 4, scoring seconds per image, and the reference embedding with and without its cache.

    .venv/bin/python bench/evaluate.py [WORKSPACE]   (default: a fresh demo workspace in a temp folder)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from flux_tui.core import config
from flux_tui.engine import pipeline as gen
from flux_tui.engine import score
from flux_tui.engine.demo import build_demo_workspace
from flux_tui.engine.device import default_device
from flux_tui.engine.imagemeta import GenSettings, read_metadata


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else build_demo_workspace(tmp / "ws")
    s = config.load(root / "experiments.toml").experiments[0].settings
    device = default_device()
    pipe = gen.load_pipeline(s.base_model, device)
    jobs = gen.eval_jobs([f"{p} {i}" for i in range(4) for p in s.eval_prompts], [3.5], 1, 0)  # 16 images
    settings = GenSettings(s.base_model, s.resolution, s.resolution, s.num_inference_steps, s.max_sequence_length)
    gen.generate_images(pipe, jobs[:2], tmp / "warm", settings)
    for batch in (1, 4):
        t = time.perf_counter()
        paths = gen.generate_images(pipe, jobs, tmp / f"b{batch}", settings, batch_size=batch)
        dt = time.perf_counter() - t
        print(f"generate  {s.resolution}px {s.num_inference_steps} steps batch {batch}: {dt / len(jobs) * 1000:7.1f} ms/image")
    face = score.FaceEmbedder(s.face_weights, device)
    clip = score.ClipScorer(s.clip_model, device)
    t = time.perf_counter()
    ref = score.reference_embedding(Path(s.data_dir), face, tmp / "cache")
    miss = time.perf_counter() - t
    t = time.perf_counter()
    score.reference_embedding(Path(s.data_dir), face, tmp / "cache")
    hit = time.perf_counter() - t
    print(f"reference {ref.n_photos} photos: {miss * 1000:7.1f} ms computed, {hit * 1000:7.1f} ms from the cache")
    prompts = [read_metadata(p)["prompt"] for p in paths]
    t = time.perf_counter()
    score.score_images(paths, prompts, face, clip, ref)
    dt = time.perf_counter() - t
    print(f"score     {len(paths)} images ({s.resolution}px, tiny CLIP): {dt / len(paths) * 1000:7.1f} ms/image  [{device}]")


if __name__ == "__main__":
    main()
