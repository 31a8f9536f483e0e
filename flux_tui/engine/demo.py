"""Build an offline demo workspace: tiny random models, stand-in face weights, real photos, a small matrix.

`python -m flux_tui.engine.demo DIR [--force]` (or `build_demo_workspace(DIR)`) writes, in about ten
seconds on a CPU and with no network, a workspace whose runs train, sample and score end to end:

    DIR/models/tiny-flux/            a FluxPipeline with random weights (save_pretrained layout)
    DIR/models/tiny-clip/            a CLIPModel + CLIPProcessor with random weights
    DIR/weights/vggface2-standin.pt  an InceptionResnetV1 state dict shaped like facenet's vggface2 file
    DIR/photos/                      6 face photos cut from scikit-image's astronaut picture
    DIR/experiments.toml             4 experiments that take seconds each
    DIR/README.txt

Every model has random weights, so what the dashboard shows is mechanics, not quality. Everything is
seeded: two builds give the same tensors and pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from flux_tui.core.console import flux_tui_command
from flux_tui.core.fsutil import file_mode, follow_umask

DEMO_NOTICE = (
    "This is a demo workspace: its models have random weights, so samples and scores show how the "
    "dashboard works, not the quality of a fine-tune."
)

# Bump when the workspace's content changes: an older workspace then counts as incomplete.
DEMO_VERSION = 2
SEED = 1234
MARKER = ".flux-tui-demo.json"

FLUX_DIR = "models/tiny-flux"
CLIP_DIR = "models/tiny-clip"
FACE_WEIGHTS = "weights/vggface2-standin.pt"
PHOTOS_DIR = "photos"
VGGFACE2_CLASSES = 8631  # the real 20180402-114759-vggface2.pt carries logits for these identities

# The FLUX.1-dev scheduler config (black-forest-labs/FLUX.1-dev, scheduler/scheduler_config.json).
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1's VAE latent statistics, so latents are normalised the way training code expects.
FLUX_VAE_SCALING = 0.3611
FLUX_VAE_SHIFT = 0.1159

TINY_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels packed 2x2
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # = T5 d_model
    "pooled_projection_dim": 32,  # = CLIP text hidden_size (the pipeline feeds pooler_output)
    "guidance_embeds": True,  # FLUX.1-dev is guidance-distilled
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim
}
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),  # 4 blocks: vae_scale_factor 8, as in FLUX
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": FLUX_VAE_SCALING,
    "shift_factor": FLUX_VAE_SHIFT,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
TINY_CLIP_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_CLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
    "dropout_rate": 0.0,
    "is_encoder_decoder": False,
    "use_cache": False,
}

# Words the hand-made tokenizers know whole; anything else falls back to characters (T5) or bytes (CLIP).
_WORDS = (
    "a", "photo", "of", "cr", "man", "portrait", "the", "with", "and", "in", "at", "on", "smiling", "camera",
    "studio", "lighting", "face", "person", "wearing", "shirt", "white", "beard", "outdoors", "style", "close",
    "up",
)  # fmt: skip

_PHOTOS = (
    # name, rotation (degrees), flip, brightness, contrast, crop half-size around the face, output px
    ("01.jpg", 0.0, False, 1.0, 1.0, 120, 320),
    ("02.png", 0.0, False, 1.0, 1.0, None, 384),  # the whole picture: a small face
    ("03.jpg", 8.0, False, 1.1, 1.0, 140, 300),
    ("04.png", 0.0, True, 1.25, 1.0, 110, 288),
    ("05.jpg", -10.0, True, 0.8, 1.1, 160, 320),
    ("06.png", 4.0, False, 1.0, 1.25, 85, 256),
)
_FACE_CENTER = (224, 117)  # where MTCNN finds the face in skimage.data.astronaut() (512x512)

EXPERIMENTS_TOML = """\
# flux-tui DEMO workspace, built offline by `python -m flux_tui.engine.demo`.
# The models here have RANDOM weights (a tiny FLUX pipeline, a tiny CLIP, stand-in face-recognition
# weights): runs, samples and scores show the mechanics of the dashboard, not the quality of a fine-tune.
# Each run trains a few dozen steps at 64 px and takes seconds on a CPU.

[workspace]
runs_dir = "runs"
cache_dir = ".flux-tui/cache"
runs_per_gpu = 1

[defaults]
base_model = "models/tiny-flux"
clip_model = "models/tiny-clip"
face_weights = "weights/vggface2-standin.pt"
data_dir = "photos"
instance_prompt = "a photo of cr7man"
trigger_token = "cr7man"
resolution = 64
random_flip = false
train_batch_size = 1
gradient_accumulation_steps = 1
learning_rate = 1e-3
lora_rank = 4
lora_target_modules = ["to_k", "to_q", "to_v", "to_out.0"]
max_train_steps = 20
lr_scheduler = "cosine"
lr_warmup_steps = 0
optimizer = "adamw"
mixed_precision = "no"
quantize = "none"
gradient_checkpointing = false
guidance_scale = 3.5
max_sequence_length = 32
seed = 42
checkpointing_steps = 10
checkpoints_total_limit = 2
sample_every = 10
sample_prompts = ["a photo of cr7man"]

eval_prompts = [
    "a photo of cr7man",
    "cr7man smiling at camera",
    "portrait of cr7man in studio lighting",
    "cr7man outdoors, close up",
]
guidance_scales = [3.5]
images_per_prompt = 1
num_inference_steps = 4
eval_seed = 0

[[experiment]]
number = 1
name = "exp01"
group = "Baseline"
description = "the baseline: each other run changes one thing, so the effects view has pairs"
learning_rate = 1e-3
lora_rank = 4
max_train_steps = 30

[[experiment]]
number = 2
name = "exp02"
group = "One change from exp01"
description = "alpha 16 with rank 4 (LoRA scale 4)"
learning_rate = 1e-3
lora_rank = 4
lora_alpha = 16
max_train_steps = 30

[[experiment]]
number = 3
name = "exp03"
group = "One change from exp01"
description = "higher learning rate"
learning_rate = 5e-3
lora_rank = 4
max_train_steps = 30

[[experiment]]
number = 4
name = "exp04"
group = "One change from exp01"
description = "higher rank"
learning_rate = 1e-3
lora_rank = 8
max_train_steps = 30
"""

README_TXT = """\
flux-tui demo workspace
=======================

{notice}

Every model in this folder was made up on the spot with random weights:
  models/tiny-flux/            a tiny FLUX pipeline (same structure as FLUX.1-dev, ~1/100000 the size)
  models/tiny-clip/            a tiny CLIP model, for the CLIP scores
  weights/vggface2-standin.pt  random weights shaped like facenet's vggface2 file, for the face score
  photos/                      6 photos of one face (scikit-image's astronaut picture)
So the samples are noise and the scores are meaningless numbers: the demo shows the mechanics (launching
runs, losses, checkpoints, samples, evaluation, comparison), not the quality of a fine-tune.

Open it with (DIR being this folder):
  flux-tui DIR/experiments.toml
or, from inside this folder:
  flux-tui

Rebuild it (this deletes its runs/) with:
  python -m flux_tui.engine.demo DIR --force
"""


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


# -- tokenizers ---------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (what ByteLevel pre-tokenizers emit)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: every byte, every byte ending a word, merges for a few words.

    The layout follows openai/clip-vit-large-patch14 (bytes, bytes + `</w>`, merges, then the two special
    tokens), so any text tokenizes: unknown words fall back to byte symbols.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    seen = set(tokens)
    for word in _WORDS:
        # Merge left to right: p h -> ph, ph o -> pho, ... so each word ends as one `word</w>` token.
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            pair = f"{symbols[0]} {symbols[1]}"
            if merged not in seen:
                seen.add(merged)
                tokens.append(merged)
                merges.append(pair)
            symbols = [merged] + symbols[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _make_clip_tokenizer(work: Path):  # -> transformers.CLIPTokenizer
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    src = work / "clip-tokenizer-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # Loading from the two files (not from a tokenizer object) is what works across transformers 4 and 5.
    return CLIPTokenizer.from_pretrained(src, model_max_length=77)


def _save_clip_tokenizer(tokenizer, dest: Path, work: Path) -> None:
    tokenizer.save_pretrained(dest)
    # transformers 5 writes only tokenizer.json; the slow CLIPTokenizer of transformers 4 needs these two.
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(work / "clip-tokenizer-src" / name, dest / name)


def _make_t5_tokenizer():  # -> transformers.T5TokenizerFast
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    # T5's id layout: <pad>=0, </s>=1, <unk>=2. Whole words score higher than the characters they are
    # made of, so the Viterbi segmentation prefers them; characters cover everything else.
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-_()/&+*#@%=<>[]{}|~`$^\\"
    pieces += [(c, -5.0) for c in chars]
    pieces += [("▁" + c, -5.5) for c in chars]
    pieces += [("▁" + w, -4.0) for w in [*_WORDS, "cr7man"]]
    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


# -- models ---------------------------------------------------------------------------------------------


def _seed(offset: int) -> None:
    import torch

    # One seed per component, so changing one component leaves the others' weights as they were.
    torch.manual_seed(SEED + offset)


def _clip_text_config(tokenizer) -> dict:
    return {
        **TINY_CLIP_TEXT,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _build_flux(dest: Path, work: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = _make_clip_tokenizer(work)
    tokenizer_2 = _make_t5_tokenizer()
    _seed(1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(tokenizer)))
    _seed(2)
    t5_config = T5Config(
        **TINY_T5,
        vocab_size=len(tokenizer_2),
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        decoder_start_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder_2 = T5EncoderModel(t5_config)
    _seed(3)
    transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
    _seed(4)
    vae = AutoencoderKL(**TINY_VAE)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )
    with torch.no_grad():
        pipe.save_pretrained(dest, safe_serialization=True)
    _save_clip_tokenizer(tokenizer, dest / "tokenizer", work)


def _build_clip(dest: Path, work: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _make_clip_tokenizer(work)
    _seed(5)
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer), vision_config=TINY_CLIP_VISION, projection_dim=32
    )
    model = CLIPModel(config).eval()
    size = TINY_CLIP_VISION["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    model.save_pretrained(dest, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)
    _save_clip_tokenizer(tokenizer, dest, work)


def _build_face_weights(dest: Path) -> None:
    import torch
    from facenet_pytorch import InceptionResnetV1

    _seed(6)
    model = InceptionResnetV1(pretrained=None, classify=False)
    # The real vggface2 file holds the classifier too; facenet's own loader builds `logits` before
    # load_state_dict, so a file without it would fail there (and this one loads everywhere the real one does).
    model.logits = torch.nn.Linear(512, VGGFACE2_CLASSES)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest)


def _build_photos(dest: Path) -> None:
    from PIL import Image, ImageEnhance, ImageOps
    from skimage import data

    dest.mkdir(parents=True, exist_ok=True)
    source = Image.fromarray(data.astronaut())
    cx, cy = _FACE_CENTER
    for name, angle, flip, brightness, contrast, half, size in _PHOTOS:
        im = source
        if angle:
            # Rotate about the face so it stays in the crop; corners fill with black, as in real edits.
            im = im.rotate(angle, resample=Image.Resampling.BICUBIC, center=_FACE_CENTER)
        if half is not None:
            # Keep the square crop inside the picture, shifting it rather than shrinking it.
            left = min(max(cx - half, 0), im.width - 2 * half)
            top = min(max(cy - half, 0), im.height - 2 * half)
            im = im.crop((left, top, left + 2 * half, top + 2 * half))
        im = im.resize((size, size), Image.Resampling.LANCZOS)
        if flip:
            im = ImageOps.mirror(im)
        if brightness != 1.0:
            im = ImageEnhance.Brightness(im).enhance(brightness)
        if contrast != 1.0:
            im = ImageEnhance.Contrast(im).enhance(contrast)
        if name.endswith(".jpg"):
            im.save(dest / name, quality=92)
        else:
            im.save(dest / name, optimize=False)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' per-save progress bars; restore whatever was set before."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    was = tl.is_progress_bar_enabled(), dl.is_progress_bar_enabled()
    tl.disable_progress_bar()
    dl.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            tl.enable_progress_bar()
        if was[1]:
            dl.enable_progress_bar()


# -- the workspace --------------------------------------------------------------------------------------


def _expected_files(root: Path) -> list[Path]:
    return [
        root / FLUX_DIR / "model_index.json",
        root / FLUX_DIR / "transformer" / "config.json",
        root / FLUX_DIR / "vae" / "config.json",
        root / FLUX_DIR / "text_encoder" / "config.json",
        root / FLUX_DIR / "text_encoder_2" / "config.json",
        root / FLUX_DIR / "tokenizer" / "tokenizer_config.json",
        root / FLUX_DIR / "tokenizer_2" / "tokenizer_config.json",
        root / FLUX_DIR / "scheduler" / "scheduler_config.json",
        root / CLIP_DIR / "config.json",
        root / CLIP_DIR / "tokenizer_config.json",
        root / FACE_WEIGHTS,
        *(root / PHOTOS_DIR / p[0] for p in _PHOTOS),
        root / "experiments.toml",
        root / "README.txt",
    ]


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(root: Path) -> bool:
    """True when `root` is a finished demo workspace of the current version."""
    marker = _marker(root)
    return (
        marker is not None
        and marker.get("version") == DEMO_VERSION
        and all(p.is_file() for p in _expected_files(root))
    )


def _write_workspace(tmp: Path, scratch: Path) -> None:
    _say("photos from skimage.data.astronaut()")
    _build_photos(tmp / PHOTOS_DIR)
    _say("tiny FLUX pipeline")
    _build_flux(tmp / FLUX_DIR, scratch)
    _say("tiny CLIP")
    _build_clip(tmp / CLIP_DIR, scratch)
    _say("stand-in vggface2 weights")
    _build_face_weights(tmp / FACE_WEIGHTS)
    (tmp / "experiments.toml").write_text(EXPERIMENTS_TOML, encoding="utf-8")
    (tmp / "README.txt").write_text(README_TXT.format(notice=DEMO_NOTICE), encoding="utf-8")
    # The marker goes last: a folder that has it was written in full.
    (tmp / MARKER).write_text(json.dumps({"version": DEMO_VERSION, "seed": SEED}) + "\n", encoding="utf-8")


def build_demo_workspace(root: Path, force: bool = False) -> Path:
    """Build the demo workspace at `root` (absolute path returned); a no-op when it is already complete.

    The workspace is built in a temporary sibling folder and renamed into place, so `root` is either
    absent or complete. An existing folder is replaced only with `force` and only when it is a demo
    workspace (it carries the marker file); anything else is refused rather than deleted.
    """
    root = Path(root).expanduser().resolve()
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder")
        if is_complete(root) and not force:
            _say(f"{root} is already built (--force rebuilds it)")
            return root
        occupied = any(root.iterdir())
        if occupied and _marker(root) is None:
            raise FileExistsError(f"{root} is not empty and is not a demo workspace; choose another folder")
        if occupied and not force:
            raise FileExistsError(
                f"{root} is an incomplete or outdated demo workspace; rebuild it with --force"
            )

    started = time.monotonic()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    tmp.chmod(file_mode(executable=True))  # mkdtemp makes it private; the workspace is an ordinary folder
    scratch = Path(tempfile.mkdtemp(prefix="flux-tui-demo-"))
    _say(f"building a demo workspace in {root} (random weights, offline)")
    try:
        with _quiet_progress_bars():
            _write_workspace(tmp, scratch)
        follow_umask(tmp)  # safetensors writes the models 0600: a shared demo must be readable
        if root.exists() and not force and is_complete(root):
            _say(f"another build finished {root} first; keeping it")  # same seed, same bytes
        elif root.exists():
            # Move the old workspace aside first and put it back if the second rename fails.
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent)) / root.name
            root.replace(old)
            try:
                tmp.replace(root)
            except OSError:
                old.replace(root)
                raise
            shutil.rmtree(old.parent, ignore_errors=True)
        else:
            tmp.replace(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    _say(f"done in {time.monotonic() - started:.1f} s; open it with: {flux_tui_command()} {root / 'experiments.toml'}")
    _say(DEMO_NOTICE)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flux_tui.engine.demo",
        description="Build an offline demo workspace with tiny random models. " + DEMO_NOTICE,
    )
    parser.add_argument("dir", type=Path, help="the workspace folder to create")
    parser.add_argument("--force", action="store_true", help="rebuild an existing demo workspace")
    args = parser.parse_args(argv)
    try:
        build_demo_workspace(args.dir, force=args.force)
    except FileExistsError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
