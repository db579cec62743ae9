"""The static site as files: self-contained, safely embedded data, plots, and the local server."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
from leaderboard_fixtures import FAKES, make_pool, make_run

from siftbench.leaderboard import build_site, cli, submit
from siftbench.leaderboard.site import embed_json, make_server

HOSTILE = "</script><script>alert(1)</script><!--"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    pool = make_pool(tmp / "pool")
    store = tmp / "lb.sqlite"
    for i, name in enumerate((HOSTILE, "price $x^2$ \\frac", "plain")):
        dirs = [make_run(tmp / "runs", pool, f"e{i}", s) for s in range(3)]
        submit(dirs, name, "filtering", store, pool, **FAKES)
    submit(
        [make_run(tmp / "runs", pool, "t", 0, scale="tiny")], "tiny one", "filtering", store, pool, **FAKES
    )
    out = tmp / "out"
    build_site(store, out)
    return out


def embedded(index_html: str) -> dict:
    match = re.search(
        r'<script id="leaderboard-data" type="application/json">(.*?)</script>', index_html, re.S
    )
    assert match, "no embedded data"
    return json.loads(match.group(1))


def test_the_site_is_self_contained(site):
    assert {p.name for p in site.iterdir()} == {"index.html", "app.js", "style.css", "plots"}
    for name in ("index.html", "app.js", "style.css"):
        text = (site / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9]", text.replace("http-equiv", "")), (
            f"{name} loads from the network"
        )
    plots = sorted(p.name for p in (site / "plots").iterdir())
    assert plots == ["board-1-size.png", "board-1-tasks.png", "board-2-size.png", "board-2-tasks.png"]
    assert all((site / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_submitted_text_cannot_leave_the_data_block(site):
    html = (site / "index.html").read_text()
    assert HOSTILE not in html and "<script>alert" not in html and html.count("</script>") == 2
    data = embedded(html)
    names = {e["name"] for b in data["boards"] for e in b["entries"]}
    assert names == {HOSTILE, "price $x^2$ \\frac", "plain", "tiny one"}
    assert "Content-Security-Policy" in html and "script-src 'self'" in html


def test_embed_json_escapes_every_html_special_character():
    text = embed_json({"s": "<>&\u2028\u2029", "nan": float("nan")})
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"s": "<>&\u2028\u2029", "nan": None}


def test_the_server_serves_the_site_on_localhost_with_its_policy(site):
    server = make_server(site, 0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/index.html", timeout=10) as response:
            assert response.status == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/../../etc/passwd", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_serving_an_unbuilt_folder_says_to_build_first(tmp_path):
    from siftbench.benchmark.core.errors import SiftbenchError

    with pytest.raises(SiftbenchError, match="build the site first"):
        make_server(tmp_path, 0)


def test_the_cli_builds_and_exports(tmp_path, capsys):
    pool = make_pool(tmp_path / "pool")
    store = tmp_path / "lb.sqlite"
    submit(
        [make_run(tmp_path / "runs", pool, "a", s) for s in range(3)], "a", "filtering", store, pool, **FAKES
    )
    assert cli.main(["leaderboard", "build", "--store", str(store), "--out", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    out = tmp_path / "board.md"
    argv = ["leaderboard", "export", "--store", str(store), "--format", "markdown", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "| 1 | a |" in out.read_text()
