"""Errors a user can act on. Each message says what is wrong, where, and how to fix it.

The command line's own mistakes (a missing argument, an --out that is a file) become these errors too, through
``ArgumentParser`` and the argument types below, so the CLI prints every one of them the same way: one line.
"""

import argparse
from pathlib import Path
from typing import NoReturn


class SiftbenchError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(SiftbenchError):
    """A configuration value is missing, unknown or contradictory."""


class PoolError(SiftbenchError):
    """The pool folder does not have the DataComp layout, or a file in it is unreadable."""


class SubsetError(SiftbenchError):
    """A subset file breaks the DataComp contract (dtype, order, pickles, unknown uids)."""


class MissingColumnError(PoolError):
    """A filter needs a metadata column or embedding the pool does not have."""


class StageError(SiftbenchError):
    """A pipeline stage (train, evaluate, ...) failed in a way the user must look at."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for siftbench's commands: a bad argument is a ConfigError, printed as one line like every
    other user error, instead of usage text and argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("siftbench").strip()
        raise ConfigError(f"{command + ': ' if command else ''}{message}; see `{self.prog} --help`")


def out_folder(value: str) -> Path:
    """An argparse type: a folder to write, new or existing, but never an existing file (or inside one)."""
    path = Path(value)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, a file"
        raise argparse.ArgumentTypeError(f"{value} {where}; give a folder (it is created if it does not exist)")
    return path


def out_file(value: str) -> Path:
    """An argparse type: a file to write, never an existing folder."""
    if Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder; give the path of a file to write")
    return Path(value)
