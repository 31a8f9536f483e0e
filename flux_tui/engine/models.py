"""Finding and loading the base FLUX pipeline: local folders offline, hub ids downloaded once with progress
in the log, gated models failing with what to do, and the transformer optionally quantized.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flux_tui.engine.errors import EngineError

if TYPE_CHECKING:
    import torch

# What the trainer and the evaluation read from a FLUX repository. FLUX.1-dev's repo also holds the
# original single-file checkpoints (flux1-dev.safetensors, ae.safetensors: 24 GB) that nobody here needs.
PIPELINE_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
]


class ModelError(EngineError):
    """The base model cannot be had; the message says why and what to do."""


class MissingLibraryError(EngineError):
    """A setting needs an optional library that is not installed; the message says which and how."""


def resolve_model(base_model: str, revision: str | None, log: Callable[[str], None]) -> Path:
    """A local folder holding the diffusers-format pipeline: `base_model` itself when it is a folder, else
    the hub snapshot (downloaded on first use, progress bars going to the log)."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelError(f"base_model {path} is a folder but not a diffusers pipeline (no model_index.json)")
        return path
    if path.is_absolute() or base_model.startswith((".", "~")) or base_model.count("/") != 1:
        raise ModelError(f"base_model {base_model!r} is neither a folder nor a hub id like 'owner/name'")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        # Already downloaded: no network, no log noise.
        return Path(snapshot_download(base_model, revision=revision, allow_patterns=PIPELINE_PATTERNS,
                                      local_files_only=True))  # fmt: skip
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    from flux_tui.engine import hub

    reason = None if hub.offline_mode() else hub.unreachable()
    if reason:  # fail now: the hub client would retry every request for minutes
        raise ModelError(f"{base_model} is not in the local Hugging Face cache and the hub ({hub.endpoint()}) "
                         f"cannot be reached ({reason}); " + hub.offline_advice("base_model"))  # fmt: skip
    log(f"model: downloading {base_model} from the Hugging Face hub (first use; progress below)")
    try:
        folder = snapshot_download(base_model, revision=revision, allow_patterns=PIPELINE_PATTERNS)
    except GatedRepoError:
        raise ModelError(
            f"{base_model} is a gated model: open https://huggingface.co/{base_model} while logged in and "
            "accept its licence, then log in on this machine with `hf auth login` (or set HF_TOKEN) "
            "and relaunch"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"{base_model} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{base_model} was not found on the hub (check the name; a private repo needs `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{base_model} is not in the local hub cache and the hub cannot be reached (offline?): download "
            "it on a machine with internet (`hf download`), or set base_model to a local folder"
        ) from None
    log(f"model: {base_model} is in {folder}")
    return Path(folder)


def load_transformer(model_dir: Path, quantize: str, dtype: torch.dtype):
    """The FLUX transformer, frozen, in `dtype`; `quantize` 'int8' (torchao, else optimum-quanto) or 'nf4'
    (bitsandbytes) stores its weights quantized while LoRA layers added later train in full precision."""
    import torch
    from diffusers import FluxTransformer2DModel

    kwargs: dict = {"subfolder": "transformer", "torch_dtype": dtype}
    if quantize == "int8":
        return _load_int8(model_dir, kwargs)
    if quantize == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MissingLibraryError(
                "quantize = 'nf4' needs bitsandbytes (pip install bitsandbytes; it needs a CUDA GPU)"
            ) from None
        from diffusers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.float32 else dtype,
        )
    model = FluxTransformer2DModel.from_pretrained(model_dir, **kwargs)
    return model.requires_grad_(False)


def _load_int8(model_dir: Path, kwargs: dict):
    import torch
    from diffusers import FluxTransformer2DModel

    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError:
        Int8WeightOnlyConfig = None  # noqa: N806
    if Int8WeightOnlyConfig is not None:
        from diffusers import TorchAoConfig

        # torchao's int8 weight-only tensors run in bfloat16.
        kwargs = {**kwargs, "torch_dtype": torch.bfloat16, "quantization_config": TorchAoConfig(Int8WeightOnlyConfig())}
        return FluxTransformer2DModel.from_pretrained(model_dir, **kwargs).requires_grad_(False)
    try:
        from optimum.quanto import freeze, qint8, quantize
    except ImportError:
        raise MissingLibraryError(
            "quantize = 'int8' needs torchao or optimum-quanto (pip install torchao)"
        ) from None
    model = FluxTransformer2DModel.from_pretrained(model_dir, **kwargs).requires_grad_(False)
    quantize(model, weights=qint8)
    freeze(model)
    return model
