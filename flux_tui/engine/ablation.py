"""The study's ablation: what the base model does without a LoRA, and with the subject's real name.

    python -m flux_tui.engine.ablation STUDY_FILE [--experiments exp01,exp03] [--real-name NAME] [--force]

Pseudo-runs, kept beside the real runs under runs/ (run.json `kind` = "ablation") so they sit in the
same tables, each generated and scored like a real run:

    ablation-base            the base model, no LoRA, the evaluation prompts as written (trigger token)
    ablation-base-realname   the base model, no LoRA, the trigger token replaced by the real name
    <exp>-realname           the experiment's LoRA, the trigger token replaced by the real name

The pipeline and the scorers load once for all of them. A pseudo-run whose settings have not changed
and that already has scores is skipped (`--force` redoes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flux_tui.core import config
from flux_tui.core.config import Experiment, Study
from flux_tui.core.engine_args import ablation_args
from flux_tui.core.runs import KIND_ABLATION, RunDir, run_dir
from flux_tui.engine.errors import EngineError
from flux_tui.engine.evaluate import EvaluateError, ModelCache, check_ready, evaluate_owned
from flux_tui.engine.run_owner import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_USAGE,
    Cancelled,
    exit_code_for_signal,
    signal_of,
)
from flux_tui.engine.runlog import logging_to

GROUP = "Ablation"


class AblationError(EngineError):
    pass


def replace_trigger(prompt: str, trigger: str, name: str) -> str:
    """`trigger` as a whole word (cr7man, not cr7manly) replaced by `name`."""
    return re.sub(rf"(?<![\w]){re.escape(trigger)}(?![\w])", name, prompt)


@dataclasses.dataclass
class PseudoRun:
    name: str
    variant: str  # base | base-realname | realname
    experiment: Experiment  # settings as evaluated (prompts rewritten where the variant says)
    source_run: str | None
    lora: Path | None
    description: str

    def extra(self, real_name: str | None) -> dict[str, Any]:
        return {
            "kind": KIND_ABLATION,
            "variant": self.variant,
            "source_run": self.source_run,
            "lora": str(self.lora) if self.lora else None,
            "real_name": real_name,
        }


def plan(study: Study, names: Sequence[str] | None, real_name: str | None) -> list[PseudoRun]:
    """The pseudo-runs for the chosen experiments (default: every experiment with a trained LoRA)."""
    if names:
        unknown = [n for n in names if n not in study.names]
        if unknown:
            raise AblationError(f"no experiment named {', '.join(unknown)} in {study.file} "
                                f"(it has {', '.join(study.names)})")  # fmt: skip
        chosen = [study.get(n) for n in names]
    else:
        chosen = [e for e in study.experiments if run_dir(study, e.name).lora_file.is_file()]
    if not chosen:
        raise AblationError("no experiment has a trained LoRA yet: train one first, or name them with --experiments")
    first = chosen[0]
    s = first.settings
    name = real_name or s.real_name
    out = [PseudoRun("ablation-base", "base", _as(first, "ablation-base", s.eval_prompts), None, None,
                     f"base model without LoRA, prompts with {s.trigger_token!r}")]  # fmt: skip
    if not name:
        print(f"ablation: no real name (set real_name in {study.file} or pass --real-name): "
              "only the base-model pseudo-run", flush=True)  # fmt: skip
        return out
    renamed = [replace_trigger(p, s.trigger_token, name) for p in s.eval_prompts]
    if renamed == list(s.eval_prompts):
        print(f"ablation: warning: no evaluation prompt contains the trigger token {s.trigger_token!r}", flush=True)
    out.append(PseudoRun("ablation-base-realname", "base-realname", _as(first, "ablation-base-realname", renamed),
                         None, None, f"base model without LoRA, {s.trigger_token!r} -> {name!r}"))  # fmt: skip
    for exp in chosen:
        es = exp.settings
        prompts = [replace_trigger(p, es.trigger_token, name) for p in es.eval_prompts]
        run = run_dir(study, exp.name)
        out.append(PseudoRun(f"{exp.name}-realname", "realname", _as(exp, f"{exp.name}-realname", prompts),
                             exp.name, run.lora_file, f"{exp.name}'s LoRA, {es.trigger_token!r} -> {name!r}"))  # fmt: skip
    return out


def _as(exp: Experiment, name: str, prompts: Sequence[str]) -> Experiment:
    settings = exp.settings.model_copy(update={"eval_prompts": list(prompts)})
    return dataclasses.replace(exp, name=name, group=GROUP, settings=settings)


def _up_to_date(run: RunDir, pr: PseudoRun, real_name: str | None) -> bool:
    stored = run.read_run() or {}
    lora_ok = pr.lora is None or (pr.lora.is_file() and run.scores_json.exists() and pr.lora.stat().st_mtime <= run.scores_json.stat().st_mtime)
    return (
        stored.get("config_hash") == pr.experiment.config_hash
        and stored.get("lora") == (str(pr.lora) if pr.lora else None)
        and run.scores() is not None
        and lora_ok
    )  # fmt: skip


def run_ablation(study: Study, names: Sequence[str] | None = None, real_name: str | None = None, *,
                 force: bool = False, models: ModelCache | None = None, batch_size: int = 4) -> list[RunDir]:  # fmt: skip
    """Write, generate and score every pseudo-run; returns their folders. Raises AblationError."""
    pseudo = plan(study, names, real_name)
    real = real_name or pseudo[0].experiment.settings.real_name
    models = models or ModelCache()
    done, failed = [], []
    for pr in pseudo:
        run = run_dir(study, pr.name)
        if not force and _up_to_date(run, pr, real):
            print(f"ablation: {pr.name} is up to date (scores in {run.scores_json}; --force redoes it)", flush=True)
            done.append(run)
            continue
        exp = dataclasses.replace(pr.experiment, description=pr.description)
        run.write_run(exp, study, extra=pr.extra(real))
        try:
            check_ready(run)
        except EvaluateError as exc:
            print(f"ablation: {pr.name}: {exc}", file=sys.stderr, flush=True)
            failed.append(pr.name)
            continue
        print(f"\nablation: {pr.name}: {pr.description}", flush=True)
        with logging_to(run):
            code = evaluate_owned(run, models, batch_size=batch_size)
        if (signum := signal_of(code)) is not None:
            raise Cancelled(signum)  # a stop signal: no further pseudo-run starts
        (done if code == EXIT_DONE else failed).append(run if code == EXIT_DONE else pr.name)
    if failed:
        raise AblationError(f"{len(failed)} pseudo-run(s) failed: {', '.join(failed)} (see their status)")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.ablation", description=__doc__.split("\n")[0])
    ablation_args(parser)  # the same arguments as `flux-tui ablation`
    args = parser.parse_args(argv)
    try:
        study = config.load(args.file)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    names = [n.strip() for n in args.experiments.split(",") if n.strip()] if args.experiments else None
    try:
        runs = run_ablation(study, names, args.real_name, force=args.force, models=ModelCache(args.device),
                            batch_size=args.batch_size)  # fmt: skip
    except AblationError as exc:
        print(f"ablation: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Cancelled as exc:
        return exit_code_for_signal(exc.signum)
    except KeyboardInterrupt:  # Ctrl-C between two pseudo-runs, when no run's handlers are in place
        return exit_code_for_signal(signal.SIGINT)
    print("\nablation:")
    for run in runs:
        s = run.scores() or {}
        fd, cs = s.get("face_distance"), s.get("clip_score")
        print(f"  {run.name:<28} face {'-' if fd is None else f'{fd:.4f}'}  CLIP {'-' if cs is None else f'{cs:.4f}'}"
              f"  faceless {s.get('faceless', '-')}/{s.get('n_images', '-')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
