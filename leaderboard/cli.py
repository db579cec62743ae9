"""Command line: ``siftbench submit`` and ``siftbench leaderboard show|build|serve|export|screenshot``.

``add_leaderboard_commands(subparsers)`` adds both to the main ``siftbench`` dispatcher; each parser's
``func(args) -> int`` runs it and raises SiftbenchError for what the user must fix.
``python -m siftbench.leaderboard`` runs the same commands on their own. As in the main dispatcher, each
command imports what it needs when it runs, so adding these parsers costs `siftbench --help` nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import ArgumentParser, SiftbenchError, out_file, out_folder

from . import store

SUBMIT_EXAMPLE = """examples:
  siftbench submit runs/clip30-s0 runs/clip30-s1 runs/clip30-s2 --name "CLIP L/14 top 30%" --track filtering
  siftbench submit runs/mine-s0 --name mine --pool pools/tiny --store boards/tiny.sqlite
"""
LEADERBOARD_EXAMPLE = """examples:
  siftbench leaderboard show --scale tiny
  siftbench leaderboard export --scale tiny --format csv --out tiny.csv
  siftbench leaderboard build --out site/ && siftbench leaderboard serve --out site/
"""


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"SQLite store (default: ${store.STORE_ENV}, else ./{store.DEFAULT_STORE})",
    )


def add_leaderboard_commands(subparsers: Any) -> None:
    """Add ``submit`` and ``leaderboard`` (show, build, serve, export, screenshot) to a subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    sub = subparsers.add_parser(
        "submit",
        help="validate run folders and add them to the leaderboard",
        epilog=SUBMIT_EXAMPLE,
        formatter_class=fmt,
        description="Validate run folders (seeds of one entry) and add them to the store. "
        "Every rule is checked before anything is written; the same run submitted twice is stored once.",
    )
    sub.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="runs/<name>/ folders, one per seed"
    )
    sub.add_argument("--name", required=True, help="the entry's name on the board")
    sub.add_argument("--track", default="filtering", choices=("filtering", "byod"),
                     help="filtering (the pool as given) or byod (bring your own data)")
    sub.add_argument(
        "--pool", type=Path, default=None, help="pool to check uids against (default: results.json pool.path)"
    )
    sub.add_argument(
        "--suite-root", type=Path, default=None, help="eval datasets for re-evaluation (toy, tiny)"
    )
    sub.add_argument(
        "--skip-reevaluation",
        action="store_true",
        help="do not re-evaluate toy/tiny checkpoints (the page marks the entry as not re-evaluated)",
    )
    _store_arg(sub)
    sub.set_defaults(func=cmd_submit)

    board = subparsers.add_parser(
        "leaderboard",
        help="show, export or publish the rankings",
        epilog=LEADERBOARD_EXAMPLE,
        formatter_class=fmt,
    )
    actions = board.add_subparsers(dest="leaderboard_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the ranking table")
    export = actions.add_parser("export", help="write the rankings as CSV, markdown or JSON")
    for parser in (show, export):
        parser.add_argument("--scale", default=None, help="one scale (default: all)")
        parser.add_argument("--track", default=None, choices=("filtering", "byod"), help="one track (default: both)")
        _store_arg(parser)
    show.add_argument("--format", default="table", choices=("table", "csv", "markdown", "json"), help="output format")
    show.set_defaults(func=cmd_show)
    export.add_argument("--format", default="csv", choices=("csv", "markdown", "json"), help="file format")
    export.add_argument("--out", type=out_file, required=True, help="file to write")
    export.set_defaults(func=cmd_export)
    build = actions.add_parser("build", help="write the static web page (works offline)")
    build.add_argument("--out", type=out_folder, default=Path("site"), help="folder for the page")
    _store_arg(build)
    build.set_defaults(func=cmd_build)
    serve = actions.add_parser("serve", help="serve the built page on http://127.0.0.1:PORT")
    serve.add_argument("--out", type=Path, default=Path("site"), help="the folder `build` wrote")
    serve.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    serve.set_defaults(func=cmd_serve)
    shot = actions.add_parser(
        "screenshot", help="PNG of the built page in headless Chromium (needs the dev extra)"
    )
    shot.add_argument("--out", type=Path, default=Path("site"), help="the folder `build` wrote")
    shot.add_argument("--png", type=Path, default=Path("docs/leaderboard.png"), help="file to write")
    shot.set_defaults(func=cmd_screenshot)


def _store_path(args: argparse.Namespace) -> Path:
    return args.store if args.store is not None else store.default_store_path()


def cmd_submit(args: argparse.Namespace) -> int:
    from .submission import HARNESS, submit

    kwargs = dict(getattr(args, "submit_kwargs", None) or {})
    if args.skip_reevaluation:
        kwargs["reevaluate"] = None
    kwargs.setdefault("reevaluate", HARNESS)
    result = submit(
        args.run_dirs,
        args.name,
        args.track,
        _store_path(args),
        args.pool,
        suite_root=args.suite_root,
        **kwargs,
    )
    print(result.summary())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .tables import show

    if args.scale is not None:
        from siftbench.benchmark.core.scales import check_scale_name

        check_scale_name(args.scale)  # a typo is an error, not "no entries"
    sys.stdout.write(show(_store_path(args), args.scale, args.track, args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.atomic import write_text

    from .tables import show

    if args.scale is not None:
        from siftbench.benchmark.core.scales import check_scale_name

        check_scale_name(args.scale)
    write_text(args.out, show(_store_path(args), args.scale, args.track, args.format))
    print(f"wrote {args.out}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .site import build_site

    index = build_site(_store_path(args), args.out)
    print(f"wrote {index} (open it in a browser, or `siftbench leaderboard serve --out {args.out}`)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .site import serve

    serve(args.out, args.port)
    return 0


def cmd_screenshot(args: argparse.Namespace) -> int:
    from .site import screenshot

    print(f"wrote {screenshot(args.out, args.png)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m siftbench.leaderboard", description=__doc__.splitlines()[0])
    add_leaderboard_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None, submit_kwargs: dict[str, Any] | None = None) -> int:
    """Run one command; a SiftbenchError is printed as one line and exits 2.

    ``submit_kwargs`` reach ``submit()`` (e.g. another re-evaluator), for programs that embed the CLI.
    """
    try:
        args = build_parser().parse_args(argv)
        args.submit_kwargs = submit_kwargs
        return int(args.func(args))
    except SiftbenchError as e:
        print(f"siftbench: error: {e}", file=sys.stderr)
        return 2
