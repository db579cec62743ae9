"""The leaderboard: validated submissions in a SQLite store, seed-aware rankings, a static web page.

Plain functions for the ``siftbench`` CLI and for scripts; none of them imports torch.
"""

from .cli import add_leaderboard_commands
from .site import build_site, serve
from .submit import SubmitResult, submit, submit_groups
from .tables import show
from .validate import SubmissionRefused

__all__ = [
    "SubmissionRefused",
    "SubmitResult",
    "add_leaderboard_commands",
    "build_site",
    "serve",
    "show",
    "submit",
    "submit_groups",
]
