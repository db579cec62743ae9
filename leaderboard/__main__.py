"""``python -m siftbench.leaderboard``: the leaderboard commands without the rest of the CLI."""

import sys

from .cli import main

sys.exit(main())
