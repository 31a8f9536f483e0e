"""The `flux-tui` console script: opens the dashboard, or hands a headless command to `flux_tui.cli`.

This module sits above the wings: it may import both the core and the dashboard, never the engine.

Python's cyclic garbage collector is off while the modules import and, for the dashboard, until its first
frame is on the terminal. Start-up makes ~120,000 objects the collector tracks, ~70,000 of which live as long
as the process (pydantic's validators, Textual's styles); it would walk them ~180 times, ~10% of the time to
the first frame (bench/tui_load.py). A command turns it back on before it runs. The dashboard collects once
after its first frame and freezes what is left (`gc.freeze`), so later collections skip the start-up objects.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from pathlib import Path


def open_dashboard(file: str | Path, collecting: bool = True) -> int:
    """`collecting`: whether the garbage collector was on before main(); the dashboard turns it back on."""
    from flux_tui import cli

    gc.disable()
    study = cli.load_or_report(file)
    if study is None:
        return cli.EXIT_USAGE
    from flux_tui.tui import graphics

    graphics.start_asking()  # the terminal answers while the dashboard's modules import
    from flux_tui.tui.app import run_dashboard  # Textual loads only when a dashboard opens

    return run_dashboard(study, gc_paused=collecting)


def main(argv: Sequence[str] | None = None) -> int:
    collecting = gc.isenabled()
    gc.disable()
    try:
        from flux_tui import cli
        from flux_tui.core import config

        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0] in cli.COMMANDS:
            if collecting:
                gc.enable()
            code = cli.run(argv)
            if argv[0] == "demo" and code == cli.EXIT_OK:
                args = cli.build_parser().parse_args(argv)
                if not args.no_tui:
                    return open_dashboard(Path(args.dir) / config.DEFAULT_FILE, collecting)
            return code
        if argv and argv[0].startswith("-") or len(argv) > 1:
            cli.build_parser().print_help()
            return cli.EXIT_OK if argv[0] in ("-h", "--help") else cli.EXIT_USAGE
        return open_dashboard(argv[0] if argv else config.DEFAULT_FILE, collecting)
    finally:
        if collecting:
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())
