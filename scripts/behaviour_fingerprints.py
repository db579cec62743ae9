"""sha256 of what siftbench writes, so a refactor can show it changed no behaviour.

    python scripts/behaviour_fingerprints.py OUT_DIR > fingerprints.txt

One line per output, `<name> <sha256>`:
- `filter/<config>`: subset.npy of every configs/filter/*.yaml on the default world at seed 0;
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

from siftbench.benchmark.experiment.config import compose_config
from siftbench.benchmark.experiment.runner import resolve_pool, select_stage

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "filter"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(out: Path) -> None:
    for config in sorted(CONFIGS.glob("*.yaml")):
        cfg = compose_config([f"filter={config.stem}", "seed=0"])
        pool_root, world = resolve_pool(cfg)
        run_dir = out / "filter" / config.stem
        run_dir.mkdir(parents=True, exist_ok=True)
        select_stage(cfg, pool_root, world, run_dir)
        print(f"filter/{config.stem} {sha256(run_dir / 'subset.npy')}", flush=True)

    runs = out / "runs"
    subprocess.run(["siftbench", "run", "filter=clip_score", "scale=toy", "world=toy", "seed=0", "name=toy",
                    f"runs_dir={runs}"], check=True, stdout=subprocess.DEVNULL)
    run = runs / "toy"
    for path in [run / "shards" / "manifest.json", *sorted((run / "shards").glob("*.tar")),
                 run / "eval_results.jsonl"]:
        print(f"toy/{path.relative_to(run)} {sha256(path)}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
