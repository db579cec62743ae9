"""One bookkeeping for every stage that writes a folder: what made it, who writes it, what may be cleaned.

    with stage_folder(out, fingerprint("reshard", STAGE_VERSION, inputs), on_change="refuse", what="shards"):
        ...  # write the outputs with core.atomic, skipping the ones that exist

- **Fingerprint.** ``out/stage.json`` records the stage, its code version, the siftbench version and the
  stage's inputs. Finished work in the folder is reused only when it matches. Otherwise the stage either
  starts over (``on_change="restart"``: its outputs are a cache of the config, deleted and redone) or
  refuses with a message naming the keys that differ (``"refuse"``: outputs too costly, or not ours, to
  delete).
- **Lock.** One exclusive lock per folder and stage (``out/.<stage>.lock``, flock through ``filelock``).
  A second writer waits, saying on stderr which pid holds it, then finds the finished work. The OS
  releases the lock when its holder dies, so a killed stage simply resumes.
- **Temporaries.** ``atomic_path`` names them after their writer (``.NAME.tmp-HOST-PID``). The lock holder
  removes, at start, those whose writer is no longer alive; never a live writer's file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .atomic import HOST, jsonable, temporary_writer, write_json, write_text
from .errors import StageError

STAGE_FILE = "stage.json"


def fingerprint(stage: str, stage_version: int, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What produces a stage's output: ``stage_version`` is the stage's constant, bumped whenever its
    output changes for the same inputs; ``inputs`` must be JSON-able (it is stored as JSON)."""
    return json.loads(json.dumps({
        "stage": stage, "stage_version": stage_version, "siftbench_version": siftbench_version(),
        "inputs": dict(inputs),
    }, default=jsonable))


@contextmanager
def stage_folder(
    folder: str | Path,
    wanted: Mapping[str, Any],
    *,
    on_change: Literal["refuse", "restart"],
    outputs: Sequence[str] = (),
    what: str = "the output",
    fix: str = "write to a new folder, or delete this one to start over",
    check_unclaimed: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Hold ``folder`` for the stage of fingerprint ``wanted`` (see the module docstring) and yield it.

    ``outputs``: glob patterns of what ``restart`` deletes. ``what``/``fix`` word a refusal:
    "<folder> holds <what> of another <stage> (different ...); <fix>". ``check_unclaimed(folder)`` runs
    when a refusing stage finds no stage.json, and raises if the folder holds what it must not overwrite.
    """
    folder = Path(folder)
    stage = wanted["stage"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StageError(f"{folder}: a file is in the way (the {stage} stage writes a folder here); give a folder "
                         "path, or move the file") from None
    with exclusive(folder, stage):
        remove_dead_temporaries(folder)
        path = folder / STAGE_FILE
        found = json.loads(path.read_text()) if path.exists() else None
        if found is not None and found.get("stage") != stage:
            raise StageError(f"{folder} holds the output of the {found.get('stage')} stage ({path}); "
                             f"give {stage} a folder of its own")
        if found != wanted:
            if on_change == "restart":
                stale = _matches(folder, outputs)
                if stale:
                    made = f"of another {stage} (different {_shown(found, wanted)})" if found else "that no stage.json describes"
                    _say(f"{folder} holds {what} {made}; recomputing")
                for old in stale:
                    if old.is_dir():
                        shutil.rmtree(old)
                    else:
                        old.unlink()
            elif found is not None:
                raise StageError(f"{folder} holds {what} of another {stage} (different {_shown(found, wanted)}); {fix}")
            elif check_unclaimed is not None:
                check_unclaimed(folder)
            write_json(path, wanted)
        yield folder


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Delete the ``atomic_path`` temporaries under ``folder`` whose writer is no longer alive; return them.

    Subfolders holding their own stage.json belong to another stage and are left to it.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (Path(root, d) / STAGE_FILE).exists()]
        for name in files:
            writer = temporary_writer(name)
            if writer is not None and not _alive(*writer):
                Path(root, name).unlink(missing_ok=True)
                removed.append(Path(root, name))
    return removed


@cache
def siftbench_version() -> str | None:
    try:
        return version("siftbench")
    except PackageNotFoundError:
        return None


@contextmanager
def exclusive(folder: Path, stage: str) -> Iterator[None]:
    """Hold ``folder``'s lock for ``stage`` for the block, waiting for its holder if there is one.

    The holder's pid sits beside the lock (``.<stage>.pid``), so a waiter can say whom it waits for.
    """
    lock = FileLock(folder / f".{stage}.lock")
    holder = folder / f".{stage}.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"{folder} is in use by {_holder(holder)} ({stage}); waiting for it to finish")
        lock.acquire()
    try:
        write_text(holder, f"{os.getpid()} {HOST}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)  # before the release: the next holder writes its own
        lock.release()


def _holder(path: Path) -> str:
    try:
        pid, host = path.read_text().split()
    except (OSError, ValueError):  # not written yet, or just removed
        return "another process"
    return f"pid {pid}" + ("" if host == HOST else f" on {host}")


def _alive(host: str, pid: int) -> bool:
    if host != HOST or pid == os.getpid():
        return True  # another machine's process cannot be checked from here: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _matches(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def _lifted(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    # The inputs are what a user knows and changes: name them as they are, beside stage and versions.
    return {**{k: v for k, v in fingerprint.items() if k != "inputs"}, **fingerprint.get("inputs", {})}


def _differing(old: Any, new: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str) for d in _differing(old.get(k), new.get(k), (*path, k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _differing(a, b, (*path, i))]
    return [] if old == new else [path]


def _shown(old: Mapping[str, Any], new: Mapping[str, Any], most: int = 4) -> str:
    """``key: old here, new now`` for a few keys, values cut short: what changed, without a diff tool."""
    def value(data: Any, path: tuple) -> str:
        for part in path:
            data = data.get(part) if isinstance(data, dict) else data[part] if isinstance(data, list) else None
        text = data if isinstance(data, str) else json.dumps(data)
        return text if len(text) <= 40 else text[:37] + "..."

    old, new = _lifted(old), _lifted(new)
    paths = _differing(old, new)
    shown = [f"{'.'.join(map(str, p))}: {value(old, p)} here, {value(new, p)} now" for p in paths[:most]]
    return "; ".join(shown) + (f"; +{len(paths) - most} more" if len(paths) > most else "")


def _say(message: str) -> None:
    print(f"siftbench: {message}", file=sys.stderr, flush=True)
