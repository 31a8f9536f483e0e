"""The `flux-tui` console script: opens the dashboard, or hands a headless command to `flux_tui.cli`.

This module sits above the wings: it may import both the core and the dashboard, never the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from flux_tui import cli
from flux_tui.core import config


def open_dashboard(file: str | Path) -> int:
    study = cli.load_or_report(file)
    if study is None:
        return cli.EXIT_USAGE
    from flux_tui.tui import graphics

    graphics.start_asking()  # the terminal answers while the dashboard's modules import
    from flux_tui.tui.app import run_dashboard  # Textual loads only when a dashboard opens

    return run_dashboard(study)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in cli.COMMANDS:
        code = cli.run(argv)
        if argv[0] == "demo" and code == cli.EXIT_OK:
            args = cli.build_parser().parse_args(argv)
            if not args.no_tui:
                return open_dashboard(Path(args.dir) / config.DEFAULT_FILE)
        return code
    if argv and argv[0].startswith("-") or len(argv) > 1:
        cli.build_parser().print_help()
        return cli.EXIT_OK if argv[0] in ("-h", "--help") else cli.EXIT_USAGE
    return open_dashboard(argv[0] if argv else config.DEFAULT_FILE)


if __name__ == "__main__":
    sys.exit(main())
