"""`python -m flux_tui.engine.generate`: a run's evaluation grid, or free generation with several LoRAs merged.

    python -m flux_tui.engine.generate RUN_DIR
        every evaluation prompt x guidance scale x image index of the run, with fixed seeds, into
        samples/eval/ (and samples/eval/checkpoint-N/ per checkpoint with `eval_checkpoints`)
    python -m flux_tui.engine.generate --lora runs/a --lora runs/b --weights 0.8,0.7 --prompt "..." [--fuse]
        the study's two-person photos: several runs' LoRAs as weighted adapters, into --out; a run's best
        step's LoRA (lora/best/) is `--lora runs/a@best`, or `--step best` for every --lora

The pipeline and the LoRA handling are `engine.pipeline`; the grid of a run is the evaluation's generate
stage (`engine.evaluate.generate_run`); every PNG carries its metadata (`engine.imagemeta`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flux_tui.core.engine_args import generate_args
from flux_tui.core.runs import RunDir, split_lora_ref
from flux_tui.engine import score as scoring
from flux_tui.engine.errors import EngineError
from flux_tui.engine.evaluate import generate_run
from flux_tui.engine.imagemeta import GenSettings
from flux_tui.engine.pipeline import (
    GenerateError,
    eval_jobs,
    generate_images,
    load_pipeline,
    resolve_lora,
    set_loras,
)


def _parse_weights(text: str | None, n: int) -> list[float]:
    if not text:
        return [1.0] * n
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise GenerateError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.8,0.7") from None
    if len(weights) != n:
        raise GenerateError(f"--weights gives {len(weights)} weight(s) for {n} --lora(s); give one per LoRA")
    return weights


def _common_config(runs: Sequence[RunDir]) -> dict[str, Any]:
    configs = [r.config() for r in runs if r.config()]
    if not configs:
        return {}
    bases = {c.get("base_model") for c in configs}
    if len(bases) > 1:
        raise GenerateError(f"the LoRAs were trained on different base models ({', '.join(map(str, bases))})")
    return configs[0]


def _default_out(runs: Sequence[RunDir], label: str, weights: Sequence[float], fused: bool = False) -> Path:
    """<workspace>/merges/<a>+<b>-w0.8,0.7 beside runs/ when the LoRAs come from run folders, else ./merges;
    `-fused` appended for --fuse, so fused images never overwrite the unfused ones of the same call."""
    root = next((Path(r.read_run()["workspace"]) for r in runs if r.exists() and r.read_run().get("workspace")),
                Path.cwd())  # fmt: skip
    return root / "merges" / f"{label}-w{','.join(f'{w:g}' for w in weights)}{'-fused' if fused else ''}"


def generate_with_loras(args: argparse.Namespace) -> int:
    """Free generation: --prompt(s) x --images with one or more LoRAs merged by weight."""
    loras = [resolve_lora(p, args.step) for p in args.lora]
    weights = _parse_weights(args.weights, len(loras))
    runs = [RunDir(split_lora_ref(p)[0]) for p in args.lora]
    cfg = _common_config([r for r in runs if r.exists()])
    base = args.base_model or cfg.get("base_model")
    if not base:
        raise GenerateError("no base model: give --base-model (the LoRAs are not in run folders that name one)")
    size = args.resolution or cfg.get("eval_resolution") or cfg.get("resolution") or 1024
    label = "+".join(r or p.parent.name for p, r in loras)
    out = Path(args.out) if args.out else _default_out(runs, label, weights, args.fuse)
    gen = GenSettings(
        base_model=base,
        width=size,
        height=size,
        num_inference_steps=args.steps or cfg.get("num_inference_steps", 28),
        max_sequence_length=cfg.get("max_sequence_length", 512),
        revision=cfg.get("revision"),
        loras=[{"path": str(p), "weight": w, "run": r} for (p, r), w in zip(loras, weights, strict=True)],
        fused=args.fuse,
    )
    prompts = args.prompt or cfg.get("eval_prompts") or []
    if not prompts:
        raise GenerateError("no prompt: give --prompt TEXT (repeatable)")
    guidance = args.guidance if args.guidance is not None else (cfg.get("guidance_scales") or [3.5])[0]
    jobs = eval_jobs(prompts, [guidance], args.images, args.seed)
    pipe = load_pipeline(base, args.device, gen.revision)
    set_loras(pipe, [(p, w) for (p, _), w in zip(loras, weights, strict=True)], fuse=args.fuse)
    print(f"generate: {len(jobs)} image(s) with {label} (weights {', '.join(f'{w:g}' for w in weights)}) -> {out}")
    paths = generate_images(pipe, jobs, out, gen, batch_size=args.batch_size,
                            on_image=lambda p, j, i, n: print(f"  [{i}/{n}] {p.name}: {j.prompt}", flush=True))  # fmt: skip
    del pipe
    for against in args.score_against or []:
        _score_against(paths, RunDir(Path(against).expanduser()), against, out, args, cfg)
    return 0


def _score_against(paths: list[Path], run: RunDir, against: str, out: Path, args: argparse.Namespace,
                   cfg: dict[str, Any]) -> None:  # fmt: skip
    """Score the merged images against one run's training photos, into scores-<run>.json beside them."""
    ref_cfg = run.config()
    ref = ref_cfg.get("data_dir") if ref_cfg else against
    result = scoring.score_paths(
        paths,
        reference_dir=Path(ref),
        clip_model=args.clip_model or ref_cfg.get("clip_model") or cfg.get("clip_model") or scoring.DEFAULT_CLIP,
        face_weights=args.face_weights or ref_cfg.get("face_weights") or cfg.get("face_weights"),
        cache_dir=Path(run.read_run()["cache_dir"]) if run.exists() else None,
    )
    dest = out / f"scores-{run.name}.json"
    scoring.write_scores(dest, result)
    print(f"\nscored against {run.name} ({ref}) -> {dest}")
    print(scoring.format_report(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.generate", description=__doc__.split("\n")[0])
    generate_args(parser)  # the same arguments as `flux-tui generate`
    args = parser.parse_args(argv)
    if bool(args.run) == bool(args.lora):
        parser.error("give either a RUN folder (its evaluation grid) or one or more --lora")
    try:
        if args.run:
            return generate_run(RunDir(Path(args.run)), args.device, args.batch_size)
        return generate_with_loras(args)
    except EngineError as exc:  # a run not ready, a missing LoRA or weights, mismatched --weights
        print(f"generate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
