"""Training-step speed and memory. Prints figures; asserts nothing.

    python bench/train_step.py [--workspace DIR] [--steps N] [--skip-cpu] [--skip-gpu]

1. The demo model on the CPU, through the trainer's own code (`train_model.train_step`), in a child process per
   mode so each peak RSS is its own:
     cached    what the trainer does: latents and text embeddings read from the sweep cache
     uncached  what a trainer without caches does: VAE and text encoders stay loaded, and every step encodes
               its photo and prompt before the transformer step
2. Where a CUDA GPU is present: a real-size FLUX.1-dev transformer built from its published config with
   random weights (nothing downloaded), bf16, rank-16 LoRA on the attention projections, gradient
   checkpointing, AdamW, at 512 and 1024 px: seconds per step, peak GPU memory, and the fraction of the
   GPU's dense bf16 peak that the step reaches (executed FLOPs counted by torch's FlopCounterMode, gradient
   checkpointing's recomputation included).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# black-forest-labs/FLUX.1-dev, transformer/config.json
FLUX_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# Dense bf16 tensor-core peak (TFLOP/s, without sparsity) by device name; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0, "A10": 125.0, "L4": 121.0}  # fmt: skip


# -- CPU: the demo model through the trainer -----------------------------------------------------------------


def cpu_child(workspace: Path, mode: str, steps: int) -> dict:
    import torch

    from flux_tui.core import config, runs
    from flux_tui.engine import train_model, train_prepare

    torch.set_num_threads(max(1, torch.get_num_threads()))
    study = config.load(workspace / "experiments.toml")
    exp = study.experiments[0]
    run = runs.prepare(study, exp)
    quiet = _Quiet()
    with quiet:
        prepared = train_prepare.prepare(run, exp.settings, "cpu")
        training = train_model.build(run, exp.settings, prepared, "cpu")
    extra = None
    if mode == "uncached":
        from diffusers import AutoencoderKL, FluxPipeline

        from flux_tui.engine.data import to_tensor

        vae = AutoencoderKL.from_pretrained(prepared.model_dir, subfolder="vae").eval()
        text = FluxPipeline.from_pretrained(prepared.model_dir, transformer=None, vae=None)
        pixels = [to_tensor(img.path) for img in prepared.images]

        def extra(step: int) -> None:
            with torch.no_grad():
                vae.encode(pixels[step % len(pixels)][None]).latent_dist.sample()
                text.encode_prompt(prompt=exp.settings.instance_prompt, prompt_2=None,
                                   max_sequence_length=exp.settings.max_sequence_length)  # fmt: skip

    times = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        if extra is not None:
            extra(step)
        train_model.train_step(exp.settings, training, step)
        times.append(time.perf_counter() - t0)
    warm = times[2:] if len(times) > 4 else times
    return {
        "mode": mode,
        "steps": steps,
        "sec_per_step_median": statistics.median(warm),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "resolution": exp.settings.resolution,
        "rank": exp.settings.lora_rank,
    }


class _Quiet:
    """Silence the trainer's log lines while the bench sets up."""

    def __enter__(self):
        import io

        self._stdout, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._stdout


def bench_cpu(workspace: Path | None, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="flux-tui-bench-") as tmp:
        if workspace is None:
            from flux_tui.engine.demo import build_demo_workspace

            workspace = build_demo_workspace(Path(tmp) / "demo")
        for mode in ("cached", "uncached"):
            # A fresh copy per mode: no run folder or cache carried over.
            ws = Path(tmp) / f"ws-{mode}"
            shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("runs", ".flux-tui"))
            out = subprocess.run(
                [sys.executable, __file__, "--cpu-child", mode, "--workspace", str(ws), "--steps", str(steps)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"cpu bench ({mode}) failed")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"cpu demo model {r['resolution']} px rank {r['rank']}, {mode:8s}: "
                  f"{r['sec_per_step_median'] * 1000:7.1f} ms/step (median of {r['steps']}), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB")  # fmt: skip


# -- GPU: the real-size transformer --------------------------------------------------------------------------


def real_size_step(config: dict, resolution: int, device: str, steps: int, text_len: int = 512) -> dict:
    """Time LoRA training steps of a FLUX transformer built from `config` with random weights."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    dtype = torch.bfloat16
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in bf16: a float32 FLUX.1-dev would need 48 GB
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    model.enable_gradient_checkpointing()
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                 target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    h = w = resolution // 8  # latent size
    bsz = 1
    packed = torch.randn(bsz, (h // 2) * (w // 2), config["in_channels"], device=device, dtype=dtype)
    target = torch.randn_like(packed)
    t5 = torch.randn(bsz, text_len, config["joint_attention_dim"], device=device, dtype=dtype)
    pooled = torch.randn(bsz, config["pooled_projection_dim"], device=device, dtype=dtype)
    img_ids = FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, device, dtype)
    txt_ids = torch.zeros(text_len, 3, device=device, dtype=dtype)
    guidance = torch.full((bsz,), 3.5, device=device)
    timestep = torch.full((bsz,), 0.5, device=device)
    is_cuda = device.startswith("cuda")

    def step() -> None:
        with torch.autocast(device_type="cuda" if is_cuda else "cpu", dtype=dtype):
            pred = model(hidden_states=packed, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                         encoder_hidden_states=t5, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]  # fmt: skip
        loss = (pred.float() - target.float()).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernels)
    sync()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    flops = counter.get_total_flops()
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    result = {
        "resolution": resolution,
        "sec_per_step": statistics.median(times),
        "tflop_per_step": flops / 1e12,
        "lora_params": sum(p.numel() for p in params),
        "base_params": sum(p.numel() for p in model.parameters()),
    }
    if is_cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def gpu_peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in BF16_PEAK_TFLOPS.items():  # the more specific names first
        if all(word in name for word in key.split()):
            return value
    return None


def bench_gpu(steps: int, peak_override: float | None, resolutions: list[int]) -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu: no CUDA GPU here; skipped (the real-size FLUX.1-dev figures need one)")
        return
    name = torch.cuda.get_device_name(0)
    peak = gpu_peak_tflops(name, peak_override)
    print(f"gpu: {name}, torch {torch.__version__}; dense bf16 peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")  # fmt: skip
    for res in resolutions:
        try:
            r = real_size_step(FLUX_DEV_TRANSFORMER, res, "cuda", steps)
        except torch.cuda.OutOfMemoryError:
            print(f"gpu FLUX.1-dev {res} px: out of memory")
            continue
        finally:
            torch.cuda.empty_cache()  # the model of this size is gone with the call's frame
        achieved = r["tflop_per_step"] / r["sec_per_step"]
        frac = f", {achieved / peak:.1%} of bf16 peak" if peak else ""
        print(f"gpu FLUX.1-dev transformer ({r['base_params'] / 1e9:.1f} B params, random weights) {res} px, "
              f"rank 16 ({r['lora_params'] / 1e6:.1f} M), bf16, grad checkpointing: "
              f"{r['sec_per_step']:.3f} s/step, peak {r['peak_gib']:.1f} GiB, "
              f"{r['tflop_per_step']:.1f} TFLOP/step = {achieved:.0f} TFLOP/s{frac}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="a built demo workspace (default: build one in /tmp)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per CPU mode (default: %(default)s)")
    parser.add_argument("--gpu-steps", type=int, default=5, help="timed steps per GPU size (default: %(default)s)")
    parser.add_argument("--resolutions", default="512,1024", help="GPU sizes in px (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is unknown")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--cpu-child", choices=("cached", "uncached"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_child:
        print(json.dumps(cpu_child(args.workspace, args.cpu_child, args.steps)))
        return
    if not args.skip_cpu:
        bench_cpu(args.workspace, args.steps)
    if not args.skip_gpu:
        bench_gpu(args.gpu_steps, args.peak_tflops, [int(r) for r in args.resolutions.split(",")])


if __name__ == "__main__":
    main()
