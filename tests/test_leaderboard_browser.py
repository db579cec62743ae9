"""The built page in a real headless Chromium: every entry found, sorting, the breakdown, and no XSS.

Never skipped: without Debian's chromium (`apt-get install chromium`) or Playwright's Python package
(the dev extra) this test fails, because an untested page is how leaderboards break.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from leaderboard_fixtures import FAKES, TASKS, make_pool, make_run

from siftbench.leaderboard import build_site, submit
from siftbench.leaderboard.rank import load_boards
from siftbench.leaderboard.site import CHROMIUM, CHROMIUM_ARGS, make_server

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    pool = make_pool(tmp / "pool")
    store = tmp / "lb.sqlite"
    entries = [(XSS, 0.45, 3, 0.3), ("clip top 30%", 0.55, 3, 0.3), ("basic", 0.35, 3, 0.7),
               ("no_filter", 0.30, 3, 1.0), ("two seeds", 0.60, 2, 0.5)]  # fmt: skip
    for i, (name, level, seeds, fraction) in enumerate(entries):
        dirs = [make_run(tmp / "runs", pool, f"e{i}", s, fraction=fraction,
                         scores={t: level + 0.01 * s + 0.001 * j for j, t in enumerate(TASKS)})
                for s in range(seeds)]  # fmt: skip
        submit(dirs, name, "filtering", store, pool, **FAKES)
    dirs = [make_run(tmp / "runs", pool, "tiny", s, scale="tiny") for s in range(3)]
    submit(dirs, "tiny entry", "filtering", store, pool, **FAKES)
    out = tmp / "site"
    build_site(store, out)
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html", load_boards(store), out
    server.shutdown()
    server.server_close()


def test_the_page_in_headless_chromium(served):
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    )
    from playwright.sync_api import sync_playwright  # the dev extra; an ImportError fails the test

    url, boards, site = served
    problems: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on(
                "console", lambda m: m.type in ("error", "warning") and problems.append(f"console: {m.text}")
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            page.wait_for_selector("table.ranking tbody tr")
            page.wait_for_load_state("networkidle")
            toy = next(b for b in boards if b.scale == "toy")
            check_every_entry_is_listed(page, boards)
            check_sorting(page, toy.id)
            check_breakdown(page, toy, "clip top 30%")
            check_hostile_name_is_text(page, toy)
            check_plots_loaded(page)
            page.wait_for_timeout(200)  # let a late onerror fire, if anything planted one
            # Offline, straight from the disk: same page, same entries, same silence.
            offline = browser.new_page()
            offline.on("console", lambda m: problems.append(f"file:// console: {m.text}"))
            offline.goto((site / "index.html").as_uri())
            offline.wait_for_selector("table.ranking tbody tr")
            check_every_entry_is_listed(offline, boards)
            check_plots_loaded(offline)
        finally:
            browser.close()
    assert dialogs == [], f"a submitted name ran script: {dialogs}"
    assert problems == []


def check_every_entry_is_listed(page, boards) -> None:
    assert page.locator("section.board").count() == len(boards) == 2
    for board in boards:
        names = page.locator(f"section[data-board-id='{board.id}'] table.ranking tbody button.entry")
        assert sorted(names.all_text_contents()) == sorted(e.name for e in board.entries)
        ranks = page.locator(f"section[data-board-id='{board.id}'] table.ranking tbody td.rank")
        assert [r.strip() for r in ranks.all_text_contents()] == [
            f"{e.rank}{' ≈' if e.tied_with_leader else ''}" if e.rank else "–" for e in board.entries
        ]


def _column(page, board_id: int, index: int) -> list[str]:
    return page.locator(
        f"table.ranking[data-board-id='{board_id}'] tbody tr td:nth-child({index})"
    ).all_text_contents()


def _averages(page, board_id: int) -> list[float]:
    return [float(text.split("±")[0]) for text in _column(page, board_id, 3)]


def check_sorting(page, board_id: int) -> None:
    header = page.locator(f"table.ranking[data-board-id='{board_id}'] th[data-key='average'] button")
    header.click()
    values = _averages(page, board_id)
    assert values == sorted(values, reverse=True) and len(values) == 5
    assert page.get_attribute(
        f"table.ranking[data-board-id='{board_id}'] th[data-key='average']", "aria-sort"
    ) == ("descending")
    header.click()
    assert _averages(page, board_id) == sorted(values)
    page.locator(f"table.ranking[data-board-id='{board_id}'] th[data-key='subset_size'] button").click()
    sizes = [int(s.replace(",", "")) for s in _column(page, board_id, 5)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    page.locator(f"table.ranking[data-board-id='{board_id}'] th[data-key='rank'] button").click()
    ranks = [r.strip() for r in _column(page, board_id, 1)]
    assert ranks[:4] == ["1", "2", "3", "4"] and ranks[-1] == "–"  # unranked stays last


def check_breakdown(page, board, name: str) -> None:
    entry = next(e for e in board.entries if e.name == name)
    section = page.locator(f"section[data-board-id='{board.id}']")
    assert not section.locator(".breakdown").is_visible()
    section.locator("button.entry", has_text=name).click()
    panel = section.locator(".breakdown")
    assert panel.is_visible()
    assert panel.locator("h3.entry-name").text_content() == name
    rows = panel.locator("table.tasks tbody tr")
    assert rows.count() == len(board.tasks)
    for task in board.tasks:
        mean, std = entry.task_stats(task)
        cells = panel.locator(f"table.tasks tbody tr[data-task='{task}'] td").all_text_contents()
        assert cells[0] == task and cells[1] == f"{mean:.4f} ± {std:.4f}"
        assert cells[2:5] == [f"{r.tasks[task]:.4f}" for r in entry.runs]
    assert '"fraction": 0.3' in panel.locator("pre.config").text_content()
    assert panel.locator("table.runs tbody tr").count() == 3
    panel.locator("button.close").click()
    assert not panel.is_visible()


def check_hostile_name_is_text(page, board) -> None:
    assert page.locator("img[src='x']").count() == 0
    button = page.locator(f"section[data-board-id='{board.id}'] button.entry", has_text="onerror")
    assert button.text_content() == XSS and button.locator("*").count() == 0
    button.click()
    assert page.locator(f"section[data-board-id='{board.id}'] .breakdown h3.entry-name").text_content() == XSS
    assert page.locator("img[src='x']").count() == 0


def check_plots_loaded(page) -> None:
    images = page.locator("figure img")
    assert images.count() == 4
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
