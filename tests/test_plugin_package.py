"""A filter that lives in another package, found through the `siftbench.filters` entry-point group."""

import json
import os
import subprocess
import sys
import textwrap

from siftbench.benchmark.perf.bench import make_metadata_pool

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "siftbench-test-plugin"
version = "0.1"

[project.entry-points."siftbench.filters"]
short_captions_only = "siftbench_test_plugin:ShortCaptionsOnly"
"""

MODULE = """
from dataclasses import dataclass

from siftbench.benchmark.core.filtering import Decision, Filter


@dataclass
class ShortCaptionsOnly(Filter):
    max_chars: int = 10

    def columns(self):
        return ("text",)

    def score(self, batch):
        return batch.table.assign(chars=batch.table.text.str.len())[["chars"]]

    def select(self, values, uids, ctx):
        return Decision.from_mask(values.chars.to_numpy() <= self.max_chars, "long_caption")
"""


def test_filter_from_an_installed_package(tmp_path):
    package = tmp_path / "plugin"
    package.mkdir()
    (package / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (package / "siftbench_test_plugin.py").write_text(textwrap.dedent(MODULE))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(package)],
        check=True,
    )
    pool = make_metadata_pool(tmp_path / "pool", 40, files=2)  # every caption is "a photo of something"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-m", "siftbench.benchmark.experiment.cli", "filter", str(pool), "--out", str(tmp_path / "o"),
         "filter.name=short_captions_only", "+filter.max_chars=25"],
        env=env, capture_output=True, text=True, check=True,
    )
    stats = json.loads(out.stdout)
    assert stats["kept"] == 40
    assert stats["steps"][0]["name"] == "short_captions_only"
    strict = subprocess.run(
        [sys.executable, "-m", "siftbench.benchmark.experiment.cli", "filter", str(pool), "--out", str(tmp_path / "o2"),
         "filter.name=short_captions_only", "+filter.max_chars=5"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert json.loads(strict.stdout)["steps"][0]["dropped"] == {"long_caption": 40}
