"""Headless commands. The core wing: no Textual, no torch; engine work runs as `python -m` subprocesses.

`flux_tui.main` is the console script: it opens the dashboard itself and hands every other command here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flux_tui import config

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
    return COMMANDS[args.command][2](args)


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


def _file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default=config.DEFAULT_FILE, help="the study file (default: %(default)s)")


@command("check", "Validate a study file and print its expanded experiment matrix.", _file_arg)
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
    _file_arg(p)
    p.add_argument("--format", choices=("csv", "json", "md"), default="csv", help="default: %(default)s")
    p.add_argument("-o", "--output", help="write to this file (default: standard output)")


@command("export", "Every run with its hyperparameters, state, timings and scores (CSV, JSON or Markdown).", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from flux_tui import export, results
    from flux_tui.fsutil import atomic_write_text

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
    p.add_argument("--file", default=config.DEFAULT_FILE, help="the study file (default: %(default)s)")


@command("report", "Write a Markdown report with PNG effect charts and prompt x run contact sheets.", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from flux_tui import report, results

    study = load_or_report(args.file)
    if study is None:
        return EXIT_USAGE
    path = report.write_report(results.collect(study), Path(args.dir), title=f"flux-tui report: {study.file}")
    print(f"wrote {path}")
    return EXIT_OK
