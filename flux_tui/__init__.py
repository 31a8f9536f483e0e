"""flux-tui: LoRA fine-tuning sweeps of FLUX.1-dev, launched, watched, scored and compared from a terminal."""

__version__ = "0.1.0"
