"""sha256 of what siftbench writes, so a refactor can show it changed no behaviour.

    python scripts/behaviour_fingerprints.py OUT_DIR > fingerprints.txt

One line per output, `<name> <sha256>`:
- `filter/<config>`: subset.npy of every `filter=<name>` (configs/filter/*.yaml, and each registered filter's
  dataclass defaults) on the default world at seed 0; a filter whose defaults need a parameter (concept_match:
  a vocabulary) has no default subset and no line;
- `toy/...`: the reshard manifest, every training shard and eval_results.jsonl of one `toy` run
  (clip_score on the toy world, seed 0).
Run it before and after a change on an empty cache (SIFTBENCH_CACHE) and diff the two lists. Training is a
function of its seed only at a fixed thread count, so run both under the same `taskset`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.experiment.config import compose_config, options
from siftbench.benchmark.experiment.runner import pool_source, select_stage


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(out: Path) -> None:
    for name in options("filter"):
        cfg = compose_config([f"filter={name}", "seed=0"])
        run_dir = out / "filter" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            select_stage(cfg, pool_source(cfg), run_dir)
        except ConfigError:
            continue  # its defaults need a parameter; a config that lost a line shows in the diff
        print(f"filter/{name} {sha256(run_dir / 'subset.npy')}", flush=True)

    runs = out / "runs"
    subprocess.run(["siftbench", "run", "filter=clip_score", "scale=toy", "world=toy", "seed=0", "name=toy",
                    f"runs_dir={runs}"], check=True, stdout=subprocess.DEVNULL)
    run = runs / "toy"
    for path in [run / "shards" / "manifest.json", *sorted((run / "shards").glob("*.tar")),
                 run / "eval_results.jsonl"]:
        print(f"toy/{path.relative_to(run)} {sha256(path)}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
