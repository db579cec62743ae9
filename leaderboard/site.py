"""The static leaderboard site: one HTML page, a small script and a stylesheet, plots drawn at build time.

Everything works offline (no CDN, no fonts fetched). The rankings travel as JSON inside the page, escaped
so no submitted string can close the script element; the script builds the page with ``textContent``
only, and a Content-Security-Policy forbids inline scripts, so a name like ``<img onerror=...>`` stays
text.
"""

from __future__ import annotations

import functools
import json
import shutil
import textwrap
import threading
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import SiftbenchError

from .rank import ALPHA, MIN_SEEDS, RULE_TEXT, Board, load_boards
from .tables import board_dict, json_safe

PLACEHOLDER = "__SIFTBENCH_LEADERBOARD_DATA__"
ASSETS = ("app.js", "style.css")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'"
)
CSP_HEADER = CSP + "; frame-ancestors 'none'"  # browsers honour frame-ancestors only as a header
CHROMIUM = "/usr/bin/chromium"  # Debian's package; nothing is downloaded
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_PLOTTED_ENTRIES = 6  # the per-task plot compares the top entries; more markers are unreadable


def embed_json(data: Any) -> str:
    """JSON safe inside an HTML <script> element: no '<', '>' or '&' survive, so nothing can close it."""
    text = json.dumps(json_safe(data), ensure_ascii=False, sort_keys=True)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def build_site(store_path: str | Path, out_dir: str | Path) -> Path:
    """Write index.html, app.js, style.css and plots/ for every board in the store; return index.html."""
    out = Path(out_dir)
    boards = load_boards(store_path)
    web = files("siftbench.leaderboard") / "web"
    plots = out / "plots"
    if plots.is_dir():
        shutil.rmtree(plots)  # plots of boards that no longer exist must not linger
    plots.mkdir(parents=True)
    payload = []
    for board in boards:
        data = board_dict(board)
        data["plots"] = draw_plots(board, plots)
        payload.append(data)
    page = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "rule": RULE_TEXT,
        "alpha": ALPHA,
        "min_seeds": MIN_SEEDS,
        "boards": payload,
    }
    for asset in ASSETS:
        (out / asset).write_bytes((web / asset).read_bytes())
    html = (web / "index.html").read_text(encoding="utf-8").replace("__CSP__", CSP)
    index = out / "index.html"
    index.write_text(html.replace(PLACEHOLDER, embed_json(page)), encoding="utf-8")
    return index


def draw_plots(board: Board, plots_dir: Path) -> dict[str, str]:
    """Average vs subset size, and per-task scores of the top entries, as PNGs; returns relative paths."""
    if not board.entries:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # parse_math off: a name with '$' must be drawn as typed, not parsed as TeX.
    style = {
        "text.parse_math": False,
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.fonttype": "path",
        "figure.dpi": 110,
    }
    paths = {}
    with plt.rc_context(style):
        paths["size"] = _size_plot(plt, board, plots_dir / f"board-{board.id}-size.png")
        paths["tasks"] = _task_plot(plt, board, plots_dir / f"board-{board.id}-tasks.png")
    return {k: f"plots/{v.name}" for k, v in paths.items()}


def _label(name: str, width: int = 28) -> str:
    return textwrap.shorten(name, width=width, placeholder="…") or name[:width]


def _size_plot(plt: Any, board: Board, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, e in enumerate(sorted(board.entries, key=lambda e: e.mean)):
        leader = e.rank == 1
        ax.errorbar(
            e.subset_size,
            e.mean,
            yerr=e.std or 0.0,
            fmt="o",
            capsize=3,
            ms=7 if leader else 5,
            color="#c2410c" if leader else "#1d4ed8",
            mfc="white" if not e.ranked else None,
            zorder=3,
        )
        ax.annotate(  # alternate above / below in score order, so neighbours' labels overlap less
            _label(e.name),
            (e.subset_size, e.mean),
            xytext=(6, 4 if i % 2 else -11),
            textcoords="offset points",
            fontsize=7.5,
            color="#374151",
        )
    sizes = [e.subset_size for e in board.entries]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("subset size (samples kept, mean over seeds)")
    ax.set_ylabel("average score (mean ± std over seeds)")
    ax.set_title(f"{board.title}: average vs subset size (hollow: unranked)", fontsize=9.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _task_plot(plt: Any, board: Board, path: Path) -> Path:
    entries = board.entries[:MAX_PLOTTED_ENTRIES]
    tasks = board.tasks
    fig, ax = plt.subplots(figsize=(6.4, max(2.6, 0.9 + 0.32 * len(tasks) * (1 + len(entries) / 8))))
    markers = "os^DvP"
    step = 0.6 / max(len(entries), 1)
    for i, e in enumerate(entries):
        ys = [t_i + (i - (len(entries) - 1) / 2) * step for t_i in range(len(tasks))]
        stats = [e.task_stats(t) for t in tasks]
        ax.errorbar(
            [m for m, _ in stats],
            ys,
            xerr=[s or 0.0 for _, s in stats],
            fmt=markers[i % len(markers)],
            ms=5,
            capsize=2,
            label=_label(e.name, 36),
        )
    ax.set_yticks(range(len(tasks)), [_label(t, 30) for t in tasks])
    ax.invert_yaxis()
    ax.set_xlabel("main metric (mean ± std over seeds)")
    ax.set_title(f"{board.title}: per-task scores of the top {len(entries)} entries", fontsize=9.5)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        fontsize=7.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16 * 6 / max(len(tasks), 6) - 0.1),
        ncol=3,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class _Handler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP_HEADER)
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(out_dir: str | Path, port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for the built site, bound to localhost only (port 0: any free port)."""
    out = Path(out_dir)
    if not (out / "index.html").is_file():
        raise SiftbenchError(
            f"{out}: no index.html; build the site first with `siftbench leaderboard build --out {out}`"
        )
    return ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(out)))


def serve(out_dir: str | Path, port: int = 8000) -> None:
    """Serve the built site on http://127.0.0.1:PORT until interrupted."""
    server = make_server(out_dir, port)
    print(f"serving {Path(out_dir).resolve()} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def screenshot(site_dir: str | Path, png: str | Path, width: int = 1280, height: int = 1100) -> Path:
    """A PNG of the built page in headless Chromium (docs/leaderboard.png); needs the dev extra."""

    from playwright.sync_api import sync_playwright

    server = make_server(site_dir, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_selector("table.ranking tbody tr")
            page.locator("table.ranking tbody tr button.entry").first.click()
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(png), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return Path(png)
