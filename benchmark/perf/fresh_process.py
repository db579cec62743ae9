"""Measurements in a fresh interpreter, so each peak RSS is its own and not an earlier measurement's.

A benchmark module keeps a ``MEASUREMENTS`` table and calls ``child_main`` from its ``__main__``; the
parent runs ``run_in_fresh_process(module, name, **kwargs)`` and reads back the JSON line the child prints.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any


def run_in_fresh_process(module: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Run measurement ``name`` of ``module`` (e.g. ``siftbench.benchmark.perf.bench_pool``); return its result."""
    cmd = [sys.executable, "-m", module, name, json.dumps(kwargs)]
    # Passive OpenMP waits: on a shared machine spinning faiss/torch threads slow everyone down, us included.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_gb() -> tuple[float, float]:
    """(this process, its largest finished child process) peak RSS in GB; ru_maxrss is KiB on Linux."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own * 1024 / 1e9, children * 1024 / 1e9
