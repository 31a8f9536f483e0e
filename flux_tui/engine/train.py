"""`python -m flux_tui.engine.train RUN_DIR [--no-eval]`: train one run's LoRA, then evaluate it.

The process owns its run folder for its lifetime: it writes `status.json` as it moves through the stages
(prepare, train, then the evaluation's generate and score), appends progress to `events.jsonl`, checkpoints
every `checkpointing_steps`, and always ends in a finished state:

    done        the LoRA is in lora/ (and the evaluation, unless --no-eval, ran)
    cancelled   SIGTERM / SIGINT / SIGHUP: a checkpoint was saved first, a relaunch resumes from it
    oom         CUDA ran out of memory; the message says what to lower
    failed      anything else; the message and the last log lines are in status.json

Relaunching resumes from the newest checkpoint; relaunching a run whose LoRA exists only evaluates it.
Training follows diffusers' FLUX DreamBooth LoRA script (flow matching, density-sampled timesteps, loss
weighting, the guidance embedding), with LoRA rank and alpha independent.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from pathlib import Path

from flux_tui.core.config import Settings, settings_from_dict
from flux_tui.core.runs import CANCELLED, DONE, FAILED, OOM, RunDir

EXIT_DONE, EXIT_FAILED, EXIT_OOM = 0, 1, 3
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PROGRESS: dict[str, int | None] = {"step": None}  # the step under way, for the out-of-memory message


class Cancelled(BaseException):
    """A stop signal arrived. BaseException so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, step: int | None = None):
        self.signum = signum
        self.step = step
        super().__init__(signal.Signals(signum).name)


class StopFlag:
    """Signal handling in two modes: outside the training loop a signal raises Cancelled at once; inside
    it (`soft`) the signal is only noted, and the loop checkpoints at the end of the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.soft = False

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if not self.soft and first:
            raise Cancelled(signum)


def log(message: str) -> None:
    """One timestamped line to stdout (train.log, or the pipe of `flux-tui run`). A reader that went away
    (a closed pipe) must not turn a clean stop into a crash, so write errors are dropped."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def device_label(device: str) -> str:
    """What status.json records: 'cpu', or 'cuda:N' with N the physical index the scheduler chose."""
    if device == "cpu":
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return f"cuda:{visible}" if visible.isdigit() else "cuda:0"


def oom_hint(settings: Settings, step: int | None) -> str:
    tips = []
    if settings.resolution > 512:
        tips.append(f"a lower resolution (now {settings.resolution})")
    if not settings.gradient_checkpointing:
        tips.append("gradient_checkpointing = true")
    if settings.optimizer != "adamw8bit":
        tips.append('optimizer = "adamw8bit" (needs bitsandbytes)')
    if settings.quantize == "none":
        tips.append('quantize = "int8" or "nf4"')
    if settings.train_batch_size > 1:
        tips.append("train_batch_size = 1 with gradient_accumulation_steps for the same effective batch")
    if settings.mixed_precision == "no":
        tips.append('mixed_precision = "bf16"')
    where = f" at step {step}" if step else ""
    return f"CUDA out of memory{where}. Try: " + ("; ".join(tips) if tips else "a smaller lora_rank or a bigger GPU")


# -- the work ------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, run: RunDir, settings: Settings, device: str, stop: StopFlag):
        import torch

        from flux_tui.engine.faults import Faults

        self.run = run
        self.s = settings
        self.device = device
        self.stop = stop
        self.faults = Faults.from_env()
        self.step = 0
        self.torch = torch
        info = run.read_run() or {}
        self.cache_dir = Path(info.get("cache_dir") or run.path / "cache")

    # -- prepare: photos, caches -------------------------------------------------------------------------
    def prepare(self) -> None:
        from flux_tui.engine import cache, data, models

        s = self.s
        self.model_dir = models.resolve_model(s.base_model, s.revision, log)
        self.images = data.prepare_images(
            Path(s.data_dir), s.resolution, self.run.data_dir, self.cache_dir, log, device=self.device
        )
        self.cache = cache.FeatureCache(self.cache_dir, cache.model_fingerprint(self.model_dir), self.run.name)
        torch = self.torch
        self.enc_dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.latents = self._encode_latents()
        prompts = list(dict.fromkeys([s.instance_prompt, *self.sample_prompts]))
        self.text = self._encode_text(prompts)
        st = self.cache.stats
        self.run.append_event(
            "cache", latents_encoded=st.latents_encoded, latents_reused=st.latents_reused,
            text_encoded=st.text_encoded, text_reused=st.text_reused, dir=str(self.cache_dir),
        )  # fmt: skip
        log(f"cache: latents {st.latents_encoded} encoded, {st.latents_reused} reused; "
            f"prompts {st.text_encoded} encoded, {st.text_reused} reused ({self.cache_dir})")  # fmt: skip

    @property
    def sample_prompts(self) -> list[str]:
        return (self.s.sample_prompts or [self.s.instance_prompt])[:2]

    def _encode_latents(self) -> dict[tuple[str, bool], dict]:
        from diffusers import AutoencoderKL

        from flux_tui.engine.data import to_tensor

        torch = self.torch
        flips = (False, True) if self.s.random_flip else (False,)
        out, missing = {}, []
        for img in self.images:
            for flip in flips:
                key = self.cache.latent_key(img.key, flip, self.enc_dtype)
                found = self.cache.get("latents", key)
                if found is None:
                    missing.append((img, flip, key))
                else:
                    out[(img.key, flip)] = found
        if missing:
            log(f"cache: encoding {len(missing)} image(s) with the VAE")
            vae = AutoencoderKL.from_pretrained(self.model_dir, subfolder="vae", torch_dtype=self.enc_dtype)
            vae = vae.to(self.device).eval()
            with torch.no_grad():
                for img, flip, key in missing:
                    pixels = to_tensor(img.path)
                    if flip:
                        pixels = pixels.flip(-1)
                    dist = vae.encode(pixels[None].to(self.device, self.enc_dtype)).latent_dist
                    tensors = {"mean": dist.mean[0].float().cpu(), "std": dist.std[0].float().cpu()}
                    self.cache.put("latents", key, tensors, {"image": img.name, "flip": str(flip)})
                    out[(img.key, flip)] = tensors
            del vae
            self._free()
        return out

    def _encode_text(self, prompts: list[str]) -> dict[str, dict]:
        from diffusers import FluxPipeline

        torch = self.torch
        L = self.s.max_sequence_length  # noqa: N806
        out, missing = {}, []
        for p in prompts:
            key = self.cache.text_key(p, L, self.enc_dtype)
            found = self.cache.get("text", key)
            if found is None:
                missing.append((p, key))
            else:
                out[p] = found
        if missing:
            log(f"cache: encoding {len(missing)} prompt(s) with CLIP and T5")
            pipe = FluxPipeline.from_pretrained(
                self.model_dir, transformer=None, vae=None, torch_dtype=self.enc_dtype
            ).to(self.device)
            with torch.no_grad():
                for p, key in missing:
                    embeds, pooled, _ = pipe.encode_prompt(prompt=p, prompt_2=p, device=self.device,
                                                           max_sequence_length=L)  # fmt: skip
                    tensors = {"t5": embeds[0].float().cpu(), "pooled": pooled[0].float().cpu()}
                    self.cache.put("text", key, tensors, {"prompt": p, "max_sequence_length": str(L)})
                    out[p] = tensors
            del pipe
            self._free()
        return out

    def _free(self) -> None:
        gc.collect()
        if self.device != "cpu":
            self.torch.cuda.empty_cache()

    # -- model, optimizer ----------------------------------------------------------------------------
    def build(self) -> None:
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
        from diffusers.optimization import get_scheduler

        from flux_tui.engine import checkpoint, lora, models

        torch, s = self.torch, self.s
        precision = s.mixed_precision
        if self.device == "cpu" and precision == "fp16":
            log("train: fp16 mixed precision needs a GPU; on the CPU training runs in bf16")
            precision = "bf16"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=self.device == "cpu")
        weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

        torch.manual_seed(s.seed)  # LoRA init
        random.seed(s.seed)
        self.gen = torch.Generator().manual_seed(s.seed)  # noise, timesteps, latent samples, flips

        log(f"train: loading the transformer ({'quantized ' + s.quantize if s.quantize != 'none' else weight_dtype})")
        self.transformer = models.load_transformer(self.model_dir, s.quantize, weight_dtype)
        if s.quantize == "none":
            self.transformer.to(self.accelerator.device)  # already in weight_dtype
        if s.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.params = lora.add_lora(self.transformer, s)
        n_params = sum(p.numel() for p in self.params)
        log(f"train: LoRA rank {s.lora_rank}, alpha {s.alpha} on {', '.join(s.lora_target_modules)}: "
            f"{n_params:,} trainable parameters")  # fmt: skip

        self.optimizer = self._optimizer()
        self.lr_scheduler = get_scheduler(
            s.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=s.lr_warmup_steps,
            num_training_steps=s.max_train_steps,
        )  # fmt: skip

        restored = checkpoint.resume(self.run, self._restore, log)  # damaged ones are set aside, logged
        if restored is not None:
            self.step = restored.step
            log(f"train: resuming from {restored.path.name} (step {self.step} of {s.max_train_steps})")
            self.run.append_event("resume", step=self.step, path=str(restored.path))

        self.transformer, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.transformer, self.optimizer, self.lr_scheduler
        )
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(self.model_dir, subfolder="scheduler")
        vae_config = AutoencoderKL.load_config(self.model_dir, subfolder="vae")
        self.vae_shift = vae_config.get("shift_factor") or 0.0
        self.vae_scaling = vae_config.get("scaling_factor", 1.0)
        self.vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)

    def _restore(self, restored) -> None:
        from flux_tui.engine import checkpoint, lora

        lora.load_lora_state(self.transformer, restored.lora)
        for p in self.params:
            p.data = p.data.float()
        self.optimizer.load_state_dict(restored.optimizer)
        self.lr_scheduler.load_state_dict(restored.scheduler)
        checkpoint.set_rng_state(restored.rng, self.gen)

    def _optimizer(self):
        torch, s = self.torch, self.s
        if s.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                from flux_tui.engine.models import MissingLibraryError

                raise MissingLibraryError(
                    "optimizer = 'adamw8bit' needs bitsandbytes (pip install bitsandbytes; it needs a CUDA GPU)"
                ) from None
            return bnb.optim.AdamW8bit(self.params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
        return torch.optim.AdamW(self.params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)

    # -- one step ------------------------------------------------------------------------------------
    def _batch(self, micro_index: int):
        """Latents and text embeddings for micro-batch `micro_index`. The photo order is a seeded shuffle
        per epoch computed from the index alone, so a resumed run sees the same photos in the same order."""
        torch, s = self.torch, self.s
        n = len(self.images)
        latents = []
        for j in range(s.train_batch_size):
            k = micro_index * s.train_batch_size + j
            epoch, pos = divmod(k, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch))
            img = self.images[int(order[pos])]
            flip = bool(s.random_flip and torch.rand((), generator=self.gen) < 0.5)
            dist = self.latents[(img.key, flip)]
            sample = dist["mean"] + dist["std"] * torch.randn(dist["mean"].shape, generator=self.gen)
            latents.append((sample - self.vae_shift) * self.vae_scaling)
        text = self.text[s.instance_prompt]
        bsz = len(latents)
        return (
            torch.stack(latents),
            text["t5"][None].expand(bsz, -1, -1),
            text["pooled"][None].expand(bsz, -1),
        )

    def _loss(self, micro_index: int):
        from diffusers import FluxPipeline
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        torch, s = self.torch, self.s
        dev = self.accelerator.device
        x0, t5, pooled = self._batch(micro_index)
        bsz, c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=self.gen)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=s.weighting_scheme, batch_size=bsz, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
            generator=self.gen,
        )  # fmt: skip
        ns = self.noise_scheduler
        indices = (u * ns.config.num_train_timesteps).long().clamp(max=len(ns.timesteps) - 1)
        timesteps = ns.timesteps[indices]
        sigmas = ns.sigmas[indices].view(bsz, 1, 1, 1)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, bsz, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, dev, torch.float32)
        txt_ids = torch.zeros(t5.shape[1], 3, device=dev)
        model = self.accelerator.unwrap_model(self.transformer)
        guidance = torch.full((bsz,), s.guidance_scale, device=dev) if model.config.guidance_embeds else None
        pred = self.transformer(
            hidden_states=packed.to(dev), timestep=(timesteps / 1000).to(dev), guidance=guidance,
            pooled_projections=pooled.to(dev), encoder_hidden_states=t5.to(dev), txt_ids=txt_ids,
            img_ids=img_ids, return_dict=False,
        )[0]  # fmt: skip
        pred = FluxPipeline._unpack_latents(pred, h * self.vae_scale_factor, w * self.vae_scale_factor,
                                            self.vae_scale_factor)  # fmt: skip
        weighting = compute_loss_weighting_for_sd3(s.weighting_scheme, sigmas).to(dev)
        target = (noise - x0).to(dev)
        loss = (weighting.float() * (pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1)
        return loss.mean()

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> None:
        from flux_tui.engine import checkpoint, lora

        torch, s = self.torch, self.s
        total, accum = s.max_train_steps, s.gradient_accumulation_steps
        self.run.write_status(stage="train")
        self.run.append_event("stage", stage="train")
        log(f"train: steps {self.step + 1}..{total}, batch {s.train_batch_size} x {accum} accumulation, "
            f"lr {s.learning_rate:g} ({s.lr_scheduler}), {self.accelerator.device}")  # fmt: skip
        self.transformer.train()
        recent: deque[float] = deque(maxlen=20)
        every = max(1, total // 20)
        is_cuda = self.accelerator.device.type == "cuda"
        self.stop.soft = True
        while self.step < total:
            step = self.step + 1
            PROGRESS["step"] = step
            self.faults.before_step(step)
            t0 = time.perf_counter()
            loss_value, grad_norm = self.train_step(step)
            self.step = step
            self.faults.after_step()
            recent.append(time.perf_counter() - t0)
            sec = sum(recent) / len(recent)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss became {loss_value} at step {step}; lower learning_rate")
            event = {
                "step": step, "total": total, "loss": round(loss_value, 6), "lr": self.lr_scheduler.get_last_lr()[0],
                "sec_per_step": round(sec, 4), "eta_s": round(sec * (total - step), 1),
                "grad_norm": round(float(grad_norm), 6),
            }  # fmt: skip
            if is_cuda:
                event.update(mem_allocated=torch.cuda.memory_allocated(), mem_reserved=torch.cuda.memory_reserved(),
                             mem_peak=torch.cuda.max_memory_allocated())  # fmt: skip
            self.run.append_event("step", **event)
            if step == 1 or step % every == 0 or step == total:
                log(f"step {step}/{total} loss {loss_value:.4f} lr {event['lr']:.3g} {sec:.2f} s/step "
                    f"eta {event['eta_s']:.0f} s")  # fmt: skip
            stopping = self.stop.signum is not None
            saved = step % s.checkpointing_steps == 0 or stopping
            if saved:
                self._checkpoint(checkpoint, lora)
            if s.sample_every and step % s.sample_every == 0 and not stopping:
                self.samples()
            if self.stop.signum is not None:
                if not saved:  # the signal came while sampling
                    self._checkpoint(checkpoint, lora)
                raise Cancelled(self.stop.signum, step)
        self.stop.soft = False

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step (all its accumulation micro-batches). Returns (mean loss, gradient norm)."""
        accum = self.s.gradient_accumulation_steps
        loss_sum = 0.0
        for micro in range(accum):
            loss = self._loss((step - 1) * accum + micro)
            self.accelerator.backward(loss / accum)
            loss_sum += float(loss.detach())
        grad_norm = self.accelerator.clip_grad_norm_(self.params, self.s.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.device.type == "cuda":
            self.torch.cuda.synchronize()
        return loss_sum / accum, float(grad_norm)

    def _checkpoint(self, checkpoint, lora) -> None:
        path = checkpoint.save(
            self.run, self.step, self.s.max_train_steps, lora.lora_state(self.accelerator.unwrap_model(self.transformer)),
            self.optimizer, self.lr_scheduler, self.gen, keep=self.s.checkpoints_total_limit,
        )  # fmt: skip
        self.run.append_event("checkpoint", step=self.step, path=str(path))
        log(f"checkpoint: {path.name}")

    # -- samples -------------------------------------------------------------------------------------
    def samples(self) -> None:
        """Images of the model as it is now, for one or two prompts, under samples/step_N/."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
        from PIL.PngImagePlugin import PngInfo

        torch, s = self.torch, self.s
        if getattr(self, "vae", None) is None:
            self.vae = AutoencoderKL.from_pretrained(self.model_dir, subfolder="vae", torch_dtype=self.enc_dtype)
        model = self.accelerator.unwrap_model(self.transformer)
        model.eval()
        self.vae.to(self.accelerator.device)
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(self.model_dir, subfolder="scheduler"),
            vae=self.vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=model,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        out = self.run.samples_dir / f"step_{self.step}"
        out.mkdir(parents=True, exist_ok=True)
        guidance = s.guidance_scales[0]
        paths = []
        try:
            with torch.no_grad(), self.accelerator.autocast():
                for i, prompt in enumerate(self.sample_prompts):
                    text = self.text[prompt]
                    dev = self.accelerator.device
                    image = pipe(
                        prompt_embeds=text["t5"][None].to(dev, model.dtype),
                        pooled_prompt_embeds=text["pooled"][None].to(dev, model.dtype),
                        height=s.resolution, width=s.resolution, num_inference_steps=s.num_inference_steps,
                        guidance_scale=guidance, generator=torch.Generator().manual_seed(s.seed),
                    ).images[0]  # fmt: skip
                    meta = PngInfo()
                    for k, v in {"prompt": prompt, "seed": s.seed, "guidance": guidance, "step": self.step,
                                 "num_inference_steps": s.num_inference_steps}.items():  # fmt: skip
                        meta.add_text(k, str(v))
                    path = out / f"{i:02d}.png"
                    image.save(path, pnginfo=meta)
                    paths.append(str(path))
        finally:
            self.vae.to("cpu")
            model.train()
        self.run.append_event("sample", step=self.step, paths=paths, prompts=self.sample_prompts,
                              seed=s.seed, guidance=guidance, num_inference_steps=s.num_inference_steps)  # fmt: skip
        log(f"samples: {len(paths)} image(s) in {out.relative_to(self.run.path)}")

    def export(self) -> None:
        from flux_tui.engine import lora

        tmp = self.run.path / ".lora.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        lora.export_lora(self.accelerator.unwrap_model(self.transformer), self.s, tmp)
        if self.run.lora_dir.exists():
            shutil.rmtree(self.run.lora_dir)
        os.replace(tmp, self.run.lora_dir)
        log(f"lora: {self.run.lora_file}")

    def release(self) -> None:
        for name in ("transformer", "optimizer", "lr_scheduler", "vae", "accelerator"):
            if hasattr(self, name):
                setattr(self, name, None)
        self._free()


def evaluate(run: RunDir) -> None:
    try:
        from flux_tui.engine import evaluate as evaluation
    except ModuleNotFoundError as exc:
        if exc.name != "flux_tui.engine.evaluate":
            raise
        log("eval: evaluation is not available in this version; skipping it")
        return
    evaluation.evaluate_run(run)


class EvaluationFailed(Exception):
    pass


def execute(run: RunDir, settings: Settings, device: str, stop: StopFlag, with_eval: bool) -> str:
    """Prepare, train, export, evaluate. Returns the final message."""
    if run.lora_file.exists():
        log(f"train: {run.lora_file} exists: this run is trained; only evaluating it")
    else:
        trainer = Trainer(run, settings, device, stop)
        trainer.prepare()
        trainer.build()
        trainer.train()
        trainer.export()
        trainer.release()
        del trainer
    if not with_eval:
        return "trained (evaluation skipped: --no-eval)"
    try:
        evaluate(run)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        traceback.print_exc()
        raise EvaluationFailed(f"evaluation failed (the LoRA is kept): {type(exc).__name__}: {exc}") from exc
    return "trained and evaluated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.train", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>/, with its run.json)")
    parser.add_argument("--no-eval", action="store_true", help="train only; skip generation and scoring")
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir.resolve())
    stop = StopFlag()
    stop.install()
    code, state, message = EXIT_FAILED, FAILED, "the trainer stopped unexpectedly"
    settings: Settings | None = None
    try:
        if not run.exists():
            raise FileNotFoundError(f"{run.run_json} not found: not a run folder")
        settings = settings_from_dict(run.config())
        import torch

        from flux_tui.engine.faults import Faults

        Faults.from_env()  # a malformed switch fails here, before any work
        device = "cuda" if torch.cuda.is_available() else "cpu"
        run.mark_started("prepare", device=device_label(device))
        run.append_event("stage", stage="prepare")
        log(f"run {run.name}: pid {os.getpid()}, device {device_label(device)}, torch {torch.__version__}")
        message = execute(run, settings, device, stop, with_eval=not args.no_eval)
        code, state = EXIT_DONE, DONE
    except Cancelled as exc:
        stop.soft = True
        where = f" at step {exc.step}" if exc.step else ""
        ckpt = run.latest_checkpoint()
        resume = f"; relaunch to resume from {ckpt.name}" if ckpt else ""
        code, state, message = 128 + exc.signum, CANCELLED, f"stopped by {signal.Signals(exc.signum).name}{where}{resume}"
        log(message)
    except BaseException as exc:  # noqa: BLE001 - every way out must leave a finished state
        stop.soft = True
        traceback.print_exc()
        from flux_tui.engine.models import MissingLibraryError, ModelError

        if type(exc).__name__ == "OutOfMemoryError":
            code, state = EXIT_OOM, OOM
            message = oom_hint(settings, PROGRESS["step"]) if settings else f"out of memory: {exc}"
            if "injected" in str(exc):
                message += f" ({exc})"
        elif isinstance(exc, ModelError | MissingLibraryError | EvaluationFailed) or type(exc).__name__ in (
            "NoImagesError", "FaultSpecError",
        ):  # fmt: skip
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        log(f"{state}: {message}")
    finally:
        stop.soft = True
        if run.exists():
            run.mark_finished(state, message, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
