"""Shared pytest fixtures."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

# Tests of a terminal's Ctrl-C need SIGINT's default action in the processes they start. A suite started in
# the background by a non-interactive shell (`pytest &`, a CI step, scripts/under-load.sh's caller) inherits
# SIGINT ignored, and every process it starts would inherit that too (an ignored signal survives exec; a
# handler does not).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline demo workspace (tiny random FLUX, tiny CLIP, stand-in face weights, photos), built
    once per test session (~10 s on a CPU). Treat it as read-only: copy it to change anything."""
    from flux_tui.engine.demo import build_demo_workspace  # imports torch lazily, only when used

    return build_demo_workspace(tmp_path_factory.mktemp("demo") / "workspace")


def make_lora_workspace(demo: Path, dest: Path, runs: dict[str, int]) -> Path:
    """A copy of the demo workspace at `dest` (face weights linked, not copied) in which each run of `runs`
    ({experiment name: seed}) looks trained: run.json written through RunDir, and a LoRA with seeded random
    non-zero B matrices saved in diffusers' format (alpha/rank folded into lora_B, as engine.lora exports),
    plus checkpoints/checkpoint-5/lora.safetensors holding the same adapter in the trainer's checkpoint
    format (peft names, scale not folded). Returns the workspace's experiments.toml."""
    import shutil

    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from flux_tui.core import config
    from flux_tui.core.runs import run_dir

    dest.mkdir(parents=True, exist_ok=True)
    for item in demo.iterdir():
        if item.name in ("runs", ".flux-tui"):
            continue
        target = dest / item.name
        if item.name == "weights":
            target.symlink_to(item)
        elif item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
    study = config.load(dest / "experiments.toml")
    for name, seed in runs.items():
        exp = study.get(name)
        s = exp.settings
        run = run_dir(study, name)
        run.write_run(exp, study)
        transformer = FluxTransformer2DModel.from_pretrained(s.base_model, subfolder="transformer")
        transformer.add_adapter(LoraConfig(r=s.lora_rank, lora_alpha=s.alpha, init_lora_weights="gaussian",
                                           target_modules=list(s.lora_target_modules)))  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        for key, param in transformer.named_parameters():
            if "lora_B" in key:
                param.data = torch.randn(param.shape, generator=gen) * 0.5
        state = {k: v.contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
        ckpt = run.checkpoints_dir / "checkpoint-5"
        ckpt.mkdir(parents=True)
        save_file(state, ckpt / "lora.safetensors")
        folded = {k: v * (s.alpha / s.lora_rank) if ".lora_B." in k else v for k, v in state.items()}
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(run.lora_dir, transformer_lora_layers=folded, safe_serialization=True)
    return dest / "experiments.toml"


@pytest.fixture
def slurm_cluster():
    """The real one-node Slurm cluster of scripts/local-slurm.sh (tests/slurm_helpers.py); skips, naming the
    script, when it is not up. Jobs recorded with `slurm_cluster.track(job_id)` are cancelled afterwards."""
    from slurm_helpers import cluster_or_skip

    cluster = cluster_or_skip()
    yield cluster
    cluster.cancel_tracked()
