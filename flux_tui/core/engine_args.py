"""Command-line arguments shared by the headless CLI and the engine modules it runs as subprocesses.

`flux-tui score|generate|evaluate|ablation` and `python -m flux_tui.engine.<module>` parse the same
arguments, declared once here (core wing: the engine may import it, and it imports neither wing above it).
"""

from __future__ import annotations

import argparse

from flux_tui.core import config

DEFAULT_CLIP = config.Settings.model_fields["clip_model"].default
DEFAULT_BATCH = 4  # images per pipeline call


FILE_HELP = f"the study file (default: {config.DEFAULT_FILE})"


def file_arg(p: argparse.ArgumentParser) -> None:
    """The study file, as a positional or as -f/--file (every command takes -f)."""
    p.add_argument("-f", "--file", dest="file", default=config.DEFAULT_FILE, metavar="FILE", help=FILE_HELP)
    p.add_argument("file", nargs="?", default=argparse.SUPPRESS, metavar="FILE", help=FILE_HELP)


def to_flags(args: argparse.Namespace, *names: str) -> list[str]:
    """Options of `args` back as command-line flags, to hand them to an engine module unchanged."""
    out: list[str] = []
    for name in names:
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                out += [flag, str(item)]
    return out


def device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per pipeline call (default: 4)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is one)")


def score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="a folder of images to score (png, jpg, webp)")
    p.add_argument("--reference", required=True, metavar="REF_DIR", help="photos of the person (the training set)")
    p.add_argument("--prompt", help="the prompt of every image (default: each PNG's own, from its metadata)")
    p.add_argument("--clip-model", metavar="ID_OR_PATH",
                   help=f"default: the study's clip_model inside a workspace, else {DEFAULT_CLIP}")  # fmt: skip
    p.add_argument("--face-weights", metavar="FILE",
                   help="facenet's 20180402-114759-vggface2.pt (default: the study's face_weights inside a "
                   "workspace, else the torch hub cache, downloaded once)")  # fmt: skip
    p.add_argument("--cache-dir", help="cache the reference embedding in this folder (default: the study's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is one)")


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="a run folder: make its evaluation grid into samples/eval/")
    p.add_argument("--lora", action="append", metavar="RUN_OR_FILE",
                   help="a run folder, LoRA folder or .safetensors file (repeat to merge several)")  # fmt: skip
    p.add_argument("--weights", help="one weight per --lora, comma-separated (default 1 each), e.g. 0.8,0.7")
    p.add_argument("--step", choices=("best",),
                   help="use each --lora run's best step (lora/best/, from its score curve); RUN@best says it "
                        "for one run")  # fmt: skip
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: the first run's eval prompts)")
    p.add_argument("--fuse", action="store_true", help="fuse the weighted LoRAs into the model's weights")
    p.add_argument("--images", type=int, default=1, help="images per prompt, seeds SEED, SEED+1, ... (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the run's first)")
    p.add_argument("--steps", type=int, help="inference steps (default: the run's)")
    p.add_argument("--resolution", type=int, help="pixels (default: the run's evaluation resolution)")
    p.add_argument("--base-model", help="hub id or folder (default: the runs' base model)")
    p.add_argument("--out", help="output folder (default: <workspace>/merges/<a>+<b>-w<weights>)")
    p.add_argument("--score-against", action="append", metavar="RUN",
                   help="score the images against this run's training photos (repeatable)")  # fmt: skip
    p.add_argument("--clip-model", help="CLIP model for --score-against (default: the run's)")
    p.add_argument("--face-weights", help="vggface2 weights file for --score-against (default: the run's)")
    device_args(p)


def evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="NAME_OR_DIR", help="experiment names (of --file) or run folders")
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help="the study file (default: %(default)s)")
    p.add_argument("--score-only", action="store_true", help="score the existing images again, generate nothing")
    device_args(p)


def ablation_args(p: argparse.ArgumentParser) -> None:
    file_arg(p)
    p.add_argument("--experiments", help="comma-separated experiment names (default: every one with a LoRA)")
    p.add_argument("--real-name", help="what replaces the trigger token (default: real_name in the file)")
    p.add_argument("--force", action="store_true", help="redo pseudo-runs that already have scores")
    device_args(p)
