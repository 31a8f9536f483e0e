"""LoRA on the FLUX transformer through peft, and the export in diffusers' format.

Rank and alpha are independent here (diffusers' own script forces alpha = rank). The exported file has the
alpha/rank scale folded into the `lora_B` matrices and declares alpha = rank, so every loader gives the
trained model: diffusers' `load_lora_weights` (with or without reading the adapter metadata), and the
community tools that assume alpha = rank when no alpha is stored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from flux_tui.core.config import Settings
from flux_tui.core.fsutil import follow_umask

ADAPTER = "default"


def add_lora(transformer, settings: Settings) -> list[torch.nn.Parameter]:
    """Attach a fresh LoRA adapter (A gaussian, B zero: the model starts as the base) and return its
    parameters, in float32 whatever the base's dtype."""
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=list(settings.lora_target_modules),
    )
    try:
        transformer.add_adapter(config)
    except ValueError as exc:
        raise ValueError(f"lora_target_modules {settings.lora_target_modules}: {exc}") from None
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def lora_state(transformer) -> dict[str, torch.Tensor]:
    """The adapter's weights as peft names them, on the CPU in float32 (what checkpoints hold)."""
    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def load_lora_state(transformer, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint holds LoRA weights this model does not have: {unexpected[:3]}")


def export_lora(transformer, settings: Settings, out_dir: Path) -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` in diffusers' format, scale folded into lora_B."""
    from diffusers import FluxPipeline

    scale = settings.alpha / settings.lora_rank
    state = {}
    for key, value in lora_state(transformer).items():
        state[key] = value * scale if ".lora_B." in key else value
    metadata = {
        "r": settings.lora_rank,
        "lora_alpha": settings.lora_rank,  # the scale is already in lora_B
        "lora_dropout": 0.0,
        "target_modules": sorted(settings.lora_target_modules),
        "init_lora_weights": "gaussian",
        "use_dora": False,
        "bias": "none",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(
        out_dir,
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )
    follow_umask(out_dir)  # safetensors writes 0600: the LoRA is for teammates too
    return out_dir / "pytorch_lora_weights.safetensors"
