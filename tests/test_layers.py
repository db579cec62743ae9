"""The layer contracts of pyproject's [tool.importlinter] hold on the tree, and each breaks on a wrong import.

lint-imports runs on a copy of the packages laid out as the installed ``siftbench`` namespace, so a wrong
import can be added without touching the repo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("layers")
    for package in ("benchmark", "filters", "eval_suite", "leaderboard"):
        shutil.copytree(ROOT / package, top / "siftbench" / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", top)
    (top / "siftbench" / "filters" / "_scratch.py").write_text("")  # a private module to import wrongly
    return top


def lint(tree: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    args = [str(LINT_IMPORTS), "--no-cache", *(["--contract", contract] if contract else [])]
    return subprocess.run(args, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=120)


def test_every_contract_holds_on_the_tree(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout and " kept" in result.stdout


@pytest.mark.parametrize(("contract", "module", "wrong_import"), [
    ("layers", "benchmark/core/uids.py", "from siftbench.filters import clip_score"),
    ("layers", "filters/clip_score.py", "from siftbench.benchmark.stages import select"),
    ("layers", "benchmark/stages/reshard.py", "from siftbench.benchmark.world import ensure_world"),
    ("world-without-filters", "benchmark/world/render.py", "import siftbench.filters.no_filter"),
    ("private-modules", "benchmark/stages/select.py", "from siftbench.filters import _scratch"),
    ("leaderboard-without-training", "leaderboard/store.py", "from siftbench.benchmark.stages import train"),
    ("no-cycles", "benchmark/core/atomic.py", "from siftbench.benchmark.core import uids"),
])  # fmt: skip
def test_a_wrong_import_breaks_its_contract(tree, contract, module, wrong_import):
    path = tree / "siftbench" / module
    original = path.read_text()
    assert lint(tree, contract).returncode == 0
    path.write_text(original + f"\n{wrong_import}\n")
    try:
        result = lint(tree, contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout
    assert "BROKEN" in result.stdout
