"""Headless commands. The core wing: no Textual, no torch; engine work runs as `python -m` subprocesses.

`flux_tui.main` is the console script: it opens the dashboard itself and hands every other command here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flux_tui.core import config
from flux_tui.core.engine_args import (
    FILE_HELP,
    ablation_args,
    evaluate_args,
    file_arg,
    generate_args,
    score_args,
    to_flags,
)  # fmt: skip

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_DEMO_DIR = "flux-tui-demo"

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: `add_args` declares its arguments, the decorated function runs it."""

    def wrap(fn: Handler) -> Handler:
        COMMANDS[name] = (help, add_args, fn)
        return fn

    return wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux-tui",
        description="LoRA fine-tuning sweeps of FLUX.1-dev: launch, watch, score and compare from the keyboard. "
        "With no command (or only a FILE), opens the dashboard on FILE (default: ./experiments.toml).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if not args.command:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command][2](args)
    except BrokenPipeError:  # `flux-tui status | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


# -- helpers ---------------------------------------------------------------------------------------


def print_problems(problems: Sequence[config.Problem], stream=sys.stderr) -> None:
    for p in problems:
        print(str(p), file=stream)


def load_or_report(path: str | Path) -> config.Study | None:
    """The study, or None after printing every problem (so callers exit 2 and write nothing)."""
    try:
        study = config.load(path)
    except config.ConfigError as exc:
        errors = sum(p.severity == "error" for p in exc.problems)
        print_problems(exc.problems)
        print(f"{path}: {errors} problem(s); nothing was written.", file=sys.stderr)
        return None
    print_problems(study.warnings)
    return study


def format_matrix(study: config.Study) -> str:
    """The expanded experiment matrix as a plain-text table."""
    headers = ("#", "name", "group", "lr", "rank", "alpha", "steps", "scheduler", "res")
    rows = [
        (
            str(e.number),
            e.name,
            e.group,
            f"{e.settings.learning_rate:g}",
            str(e.settings.lora_rank),
            str(e.settings.alpha),
            str(e.settings.max_train_steps),
            e.settings.lr_scheduler,
            str(e.settings.resolution),
        )
        for e in study.experiments
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run_engine(module: str, *args: str) -> int:
    """Run an engine module in a child Python (the core never imports torch itself)."""
    return subprocess.call([sys.executable, "-m", f"flux_tui.engine.{module}", *args])


# -- commands --------------------------------------------------------------------------------------


@command("check", "Validate a study file and print its expanded experiment matrix.", file_arg)
def cmd_check(args: argparse.Namespace) -> int:
    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    print(format_matrix(study))
    print(f"\n{args.file}: {len(study.experiments)} experiment(s), runs in {study.workspace.runs_dir}")
    return EXIT_OK


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=DEFAULT_DEMO_DIR, help="where to build it (default: ./%(default)s)")
    p.add_argument("--no-tui", action="store_true", help="only build the workspace")
    p.add_argument("--force", action="store_true", help="rebuild it from scratch")


@command("demo", "Build (offline) a tiny-model workspace that runs end to end on a CPU, then open it.", _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    """Builds the workspace; opening the dashboard is done by flux_tui.main."""
    extra = ["--force"] if args.force else []
    return run_engine("demo", args.dir, *extra)


def _export_args(p: argparse.ArgumentParser) -> None:
    file_arg(p)
    p.add_argument("--format", choices=("csv", "json", "md"), default="csv", help="default: %(default)s")
    p.add_argument("-o", "--output", help="write to this file (default: standard output)")


@command("export", "Every run with its hyperparameters, state, timings and scores (CSV, JSON or Markdown).", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from flux_tui.core import export, results
    from flux_tui.core.fsutil import atomic_write_text

    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    text = export.render(results.collect(study), args.format)
    if args.output:
        atomic_write_text(Path(args.output), text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="the folder to write report.md and its PNG charts and contact sheets into")
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help=FILE_HELP)


@command("report", "Write a Markdown report with PNG effect charts and prompt x run contact sheets.", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from flux_tui.core import report, results

    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    path = report.write_report(results.collect(study), Path(args.dir), title=f"flux-tui report: {study.file}")
    print(f"wrote {path}")
    return EXIT_OK


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to run, in this order")
    p.add_argument("--all", action="store_true", help="every experiment of the file, in file order")
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help="the study file (default: %(default)s)")
    p.add_argument("--no-eval", action="store_true", help="train only; skip generation and scoring")
    p.add_argument("-v", "--verbose", action="store_true", help="show each run's log instead of a progress line")


@command("run", "Train (then evaluate) experiments one after another in the foreground; Ctrl-C checkpoints.", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from flux_tui.core import run_command as foreground

    if bool(args.names) == args.all:
        print("flux-tui run: give experiment NAMEs or --all (not both)", file=sys.stderr)
        return EXIT_USAGE
    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    unknown = [n for n in args.names if n not in study.names]
    if unknown:
        print(f"{args.file}: no experiment named {', '.join(unknown)} (have: {', '.join(study.names)})",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    chosen = study.experiments if args.all else [study.get(n) for n in args.names]
    return foreground.run_experiments(study, chosen, no_eval=args.no_eval, verbose=args.verbose)


# -- evaluation: score, generate, evaluate, ablation (their engine modules parse these same arguments) ---


def _score_args(p: argparse.ArgumentParser) -> None:
    score_args(p)
    p.add_argument("-f", "--file", metavar="FILE", help="the study whose clip_model, face_weights and cache_dir "
                   f"to use (default: ./{config.DEFAULT_FILE} when there is one)")  # fmt: skip


@command("score", "Score a folder of images: face distance, identity similarity, CLIP score, faceless count.",
         _score_args)  # fmt: skip
def cmd_score(args: argparse.Namespace) -> int:
    """Inside a workspace (-f FILE, or experiments.toml here) the study's models, unless flags say otherwise."""
    file = args.file or (config.DEFAULT_FILE if Path(config.DEFAULT_FILE).is_file() else None)
    if file and (args.clip_model is None or args.face_weights is None or args.cache_dir is None):
        study = load_or_report(file)
        if study is None:
            print("flux-tui score reads its models from that file: fix it, or pass --clip-model and "
                  "--face-weights and run it elsewhere", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        if study.experiments:
            s = study.experiments[0].settings
            args.clip_model = args.clip_model or s.clip_model
            args.face_weights = args.face_weights or s.face_weights
        args.cache_dir = args.cache_dir or str(study.workspace.cache_dir)
        print(f"score: models of {file}: CLIP {args.clip_model}, face weights "
              f"{args.face_weights or 'the torch hub cache'}", file=sys.stderr)  # fmt: skip
    opts = to_flags(args, "reference", "prompt", "clip_model", "face_weights", "cache_dir", "json", "out", "device")
    return run_engine("score", args.images, *opts)


@command("generate", "Generate with one or more runs' LoRAs merged by weight (--lora a --lora b --weights 0.8,0.7).",
         generate_args)  # fmt: skip
def cmd_generate(args: argparse.Namespace) -> int:
    opts = to_flags(args, "lora", "weights", "step", "prompt", "fuse", "images", "seed", "guidance", "steps", "resolution",
                  "base_model", "out", "score_against", "clip_model", "face_weights", "batch_size", "device")  # fmt: skip
    return run_engine("generate", *([args.run] if args.run else []), *opts)


@command("evaluate", "Generate a run's evaluation images and score them again (or only score: --score-only).",
         evaluate_args)  # fmt: skip
def cmd_evaluate(args: argparse.Namespace) -> int:
    folders: list[Path] = []
    study = None
    for item in args.runs:
        if (Path(item) / "run.json").is_file():
            folders.append(Path(item))
            continue
        study = study or load_or_report(args.file)
        if study is None:
            return EXIT_USAGE
        folder = study.workspace.runs_dir / item
        if not (folder / "run.json").is_file():
            print(f"flux-tui evaluate: {item!r} is neither a run folder nor a run of {args.file} with a folder",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        folders.append(folder)
    code = EXIT_OK
    for folder in folders:
        code = max(code, run_engine("evaluate", str(folder), *to_flags(args, "score_only", "batch_size", "device")))
    return code


@command("ablation", "The study's ablation: base model without LoRA, and the real name instead of the trigger token.",
         ablation_args)  # fmt: skip
def cmd_ablation(args: argparse.Namespace) -> int:
    opts = to_flags(args, "experiments", "real_name", "force", "batch_size", "device")
    return run_engine("ablation", args.file, *opts)


# -- the queue, headless: submit, status, stop (the same queue as the dashboard's) -------------------


def _names_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help=f"experiments to {what}")
    p.add_argument("--all", action="store_true", help=f"{what} every experiment of the file")
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help=FILE_HELP)


def _scheduler(args: argparse.Namespace, verb: str):
    """The study and its scheduler, or None (after saying why) when the file or the NAMEs are wrong."""
    from flux_tui.core.scheduler import Scheduler
    from flux_tui.core.telemetry import Telemetry

    if verb and bool(args.names) == args.all:
        print(f"flux-tui {verb}: give experiment NAMEs or --all (not both)", file=sys.stderr)
        return None
    study = load_or_report(args.file)
    if study is None:
        return None
    unknown = [n for n in getattr(args, "names", []) if n not in study.names]
    if unknown:
        print(f"{args.file}: no experiment named {', '.join(unknown)} (have: {', '.join(study.names)})",
              file=sys.stderr)  # fmt: skip
        return None
    return Scheduler(study, gpus=Telemetry().gpus)


@command("submit", "Queue runs and return at once; they start as slots free, with or without a dashboard.",
         lambda p: _names_args(p, "queue"))  # fmt: skip
def cmd_submit(args: argparse.Namespace) -> int:
    scheduler = _scheduler(args, "submit")
    if scheduler is None:
        return EXIT_USAGE
    outcomes = scheduler.queue_all() if args.all else scheduler.enqueue(args.names)
    started = set(scheduler.tick())
    refused = []
    for o in outcomes:
        st = scheduler.run(o.name).status()
        if o.ok and o.name in started and st.job_id:
            print(f"{o.name} submitted to Slurm as job {st.job_id}")
        elif o.ok and o.name in started:
            print(f"{o.name} started on {st.device} (pid {st.pid})")
        elif o.ok and st.state == "queued":
            print(f"{o.message}: {st.message if st.message.startswith('waiting:') else 'waits for a free slot'}")
        elif o.ok and st.state == "failed":  # could not start: Slurm refused the job, a missing data folder
            refused.append(o.name)
            print(f"{o.name} failed to start: {st.message}", file=sys.stderr)
        elif o.ok:
            print(f"{o.name}: {st.state}")
        else:
            print(f"not queued: {o.message}", file=sys.stderr)
    if not outcomes:
        print("nothing to queue: every run is done, running or queued")
    print(f"runs in {scheduler.runs_dir} (logs: <name>/train.log); follow with `flux-tui status -f {args.file}`"
          " or the dashboard")  # fmt: skip
    return EXIT_OK if all(o.ok for o in outcomes) and not refused else EXIT_FAIL


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help=FILE_HELP)
    p.add_argument("--json", action="store_true", help="one JSON record per run, for scripts")


@command("status", "Every run's state, stage, step, device, pid or job id and scores.", _status_args)
def cmd_status(args: argparse.Namespace) -> int:
    from flux_tui.core import status_table

    scheduler = _scheduler(args, "")
    if scheduler is None:
        return EXIT_USAGE
    statuses = scheduler.reconcile()
    table = status_table.rows(scheduler.study, statuses, scheduler.queue(statuses))
    if args.json:
        sys.stdout.write(status_table.to_json(table))
    else:
        sys.stdout.write(status_table.to_text(table))
        print(f"\n{status_table.summary(table)} · runs in {scheduler.runs_dir}")
    return EXIT_OK


def _stop_args(p: argparse.ArgumentParser) -> None:
    _names_args(p, "stop")
    p.add_argument("--kill", action="store_true",
                   help="SIGKILL instead of SIGTERM (work since the last checkpoint is lost)")  # fmt: skip


@command("stop", "Stop runs (SIGTERM: a checkpoint, then `cancelled`; --kill: SIGKILL) or take them off the queue.",
         _stop_args)  # fmt: skip
def cmd_stop(args: argparse.Namespace) -> int:
    from flux_tui.core.runs import QUEUED, RUNNING, Status

    scheduler = _scheduler(args, "stop")
    if scheduler is None:
        return EXIT_USAGE
    statuses = scheduler.reconcile()
    names = [n for n, st in statuses.items() if st.state in (RUNNING, QUEUED)] if args.all else args.names
    if not names:
        print("nothing to stop: no run is running or queued")
    # Queued runs first: a run stopped first would otherwise free a slot for one of them to start.
    names = sorted(names, key=lambda n: statuses.get(n, Status()).state != QUEUED)
    outcomes = [scheduler.stop(name, kill=args.kill) for name in names]
    for o in outcomes:
        print(o.message, file=sys.stdout if o.ok else sys.stderr)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAIL


# -- reset: a run's folder moved aside, so it trains again from scratch ------------------------------


def _reset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help="runs to reset (experiments of the file, or run folders)")
    p.add_argument("-f", "--file", default=config.DEFAULT_FILE, help=FILE_HELP)


@command("reset", "Move runs' folders aside to runs/.old/<name>-<time>/ (nothing is deleted) so they train again "
         "from scratch with the file's settings; refuses a running run.", _reset_args)  # fmt: skip
def cmd_reset(args: argparse.Namespace) -> int:
    from flux_tui.core import reset
    from flux_tui.core.runs import run_dir

    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    unknown = [n for n in args.names if n not in study.names and not run_dir(study, n).path.exists()]
    if unknown:
        print(f"{args.file}: no experiment or run folder named {', '.join(unknown)} (have: {', '.join(study.names)})",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    code = EXIT_OK
    for name in args.names:
        try:
            done = reset.reset_run(run_dir(study, name))
        except reset.ResetRefused as exc:
            print(f"flux-tui reset: {exc}", file=sys.stderr)
            code = EXIT_FAIL
            continue
        if done.moved_to is None:
            print(f"{name}: no folder yet, nothing to reset")
        else:
            where = done.moved_to.relative_to(study.workspace.root) if done.moved_to.is_relative_to(
                study.workspace.root) else done.moved_to  # fmt: skip
            print(f"{name}: folder moved to {where}; the run is new again")
    return code
