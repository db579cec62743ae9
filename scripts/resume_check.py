#!/usr/bin/env python
"""Kill a training run midway (SIGKILL), resume it, compare with an uninterrupted run.

    .venv/bin/python scripts/resume_check.py runs/no_filter-tiny-s0/shards --scale tiny --out runs/resume-check \
        --reference runs/no_filter-tiny-s0/train --suite world --eval-root ~/.cache/siftbench/<world>/eval

Exit status 0 when samples seen and optimizer steps match. See siftbench.benchmark.perf.resume_check.
"""

import sys

from siftbench.benchmark.perf.resume_check import main

if __name__ == "__main__":
    sys.exit(main())
