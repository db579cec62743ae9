"""Read (and write) eval tasks in clip_benchmark's webdataset layout, so real DataComp eval sets drop in.

    <task>/
      classnames.txt                          one class name per line (classification)
      zeroshot_classification_templates.txt   one prompt per line, "{c}" stands for the class name
      dataset_type.txt                        optional; "retrieval" for image-text retrieval tasks
      test/nshards.txt                        N
      test/0.tar ... test/{N-1}.tar           {key}.webp|png|jpg|jpeg + {key}.cls (int) or {key}.txt
                                              + {key}.npy: per-sample metadata, for worst-group metrics

Worst-group metrics (DataComp's FMoW worst region, Dollar Street worst income group, GeoDE worst
region) need a group label per sample. It lives where DataComp's eval sets keep it: ``{key}.npy`` in the
sample, a 1-D integer array of metadata fields (FMoW: region, year, label; Dollar Street: income group,
income, region; GeoDE: region, country). The suite's task says which field is the group
(``group_field``: its index in that array), so the folder itself stays exactly as downloaded. ``.npy``
is read with ``allow_pickle=False``.

Text files are read as clip_benchmark reads them: every line, stripped, blank lines kept (a class name's
line number is its label). Tars are read with the standard library. A sample that cannot be used (no
image, undecodable image, no or bad label, no caption) is skipped and counted by reason; a damaged tar
loses the rest of that shard, which is reported by shard name because the number lost is unknown.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siftbench.benchmark.core.errors import PoolError, SiftbenchError
from siftbench.benchmark.core.tars import iter_tar_samples

# clip_benchmark's order of preference when a sample has several images ("0.webp": multi-view sets).
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg", "0.webp")
DATASET_TYPES = ("classification", "retrieval")


class EvalDataError(SiftbenchError):
    """An eval task folder does not have clip_benchmark's layout."""


class MissingDatasetError(EvalDataError):
    """An eval task folder is not there at all (not downloaded or not generated yet)."""


@dataclass(frozen=True)
class TaskData:
    """One task folder, checked: its shards exist and its text files are read."""

    folder: Path
    split: str
    dataset_type: str
    shards: tuple[Path, ...]
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    # Set from the suite's task (not the folder): index of the group label in each sample's .npy.
    group_field: int | None = None
    exclude_groups: tuple[int, ...] = ()


@dataclass
class SkipCounter:
    """What was left out of a task, so a score always says how many samples it rests on."""

    reasons: Counter = field(default_factory=Counter)
    damaged_shards: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: SkipCounter) -> None:
        self.reasons.update(other.reasons)
        self.damaged_shards.extend(other.damaged_shards)


def open_task(folder: str | Path, split: str = "test") -> TaskData:
    """Check a task folder's layout and read its metadata; raise EvalDataError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDatasetError(f"eval task folder {folder} does not exist")
    nshards_file = folder / split / "nshards.txt"
    if not nshards_file.is_file():
        raise EvalDataError(
            f"{folder}: no {split}/nshards.txt; a clip_benchmark task folder holds {split}/nshards.txt "
            f"(the number of shards) and {split}/0.tar ... {split}/<N-1>.tar"
        )
    text = nshards_file.read_text().strip()
    try:
        nshards = int(text)
    except ValueError:
        raise EvalDataError(f"{nshards_file}: {text!r} is not a number of shards") from None
    shards = tuple(folder / split / f"{i}.tar" for i in range(nshards))
    missing = [s.name for s in shards if not s.is_file()]
    extra = sorted(
        (p.name for p in (folder / split).glob("*.tar") if p not in shards), key=lambda n: (len(n), n)
    )
    problems = [f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} missing"] if missing else []
    problems += [f"{', '.join(extra[:5])} not counted in it"] if extra else []
    problems += ["it lists no shards"] if nshards < 1 else []
    if problems:
        raise EvalDataError(
            f"{folder}: {split}/nshards.txt says {nshards} shard(s) but {'; '.join(problems)}; "
            "re-download the task or fix nshards.txt"
        )
    type_file = folder / "dataset_type.txt"
    dataset_type = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
    if dataset_type not in DATASET_TYPES:
        raise EvalDataError(
            f"{type_file}: dataset type {dataset_type!r} is not supported (supported: {', '.join(DATASET_TYPES)})"
        )
    if dataset_type == "retrieval":
        return TaskData(folder, split, dataset_type, shards)
    classnames = _read_lines(folder / "classnames.txt", "one class name per line; line i names label i")
    templates = _read_lines(
        folder / "zeroshot_classification_templates.txt", 'one prompt per line with "{c}" for the class name'
    )
    return TaskData(folder, split, dataset_type, shards, classnames, templates)


def _read_lines(path: Path, what: str) -> tuple[str, ...]:
    if not path.is_file():
        raise EvalDataError(
            f"{path.parent}: no {path.name} ({what}); a classification task needs it "
            "(a retrieval task says so in dataset_type.txt)"
        )
    lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    if not lines:
        raise EvalDataError(f"{path}: empty ({what})")
    return lines


def iter_samples(data: TaskData, shards: Sequence[Path] | None = None, skipped: SkipCounter | None = None
                 ) -> Iterator[tuple[str, bytes, int | tuple[int, int] | list[str]]]:
    """Yield ``(shard/key, image bytes, target)`` in shard order; count what is skipped.

    The target is the label, ``(label, group)`` when the task has a ``group_field``, or the captions.
    The image is not decoded here (that is the expensive part, done where it can run in parallel).
    """
    skipped = skipped if skipped is not None else SkipCounter()
    num_classes = len(data.classnames) if data.classnames is not None else 0
    for shard in data.shards if shards is None else shards:
        try:
            for key, sample in iter_tar_samples(shard):
                image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
                if image is None:
                    skipped.reasons["no_image"] += 1
                    continue
                target = _captions(sample) if data.dataset_type == "retrieval" else _label(sample, num_classes)
                if isinstance(target, str):
                    skipped.reasons[target] += 1
                    continue
                if data.group_field is not None and data.dataset_type != "retrieval":
                    group = _group(sample, data.group_field)
                    if isinstance(group, str):
                        skipped.reasons[group] += 1
                        continue
                    target = (target, group)
                yield f"{shard.stem}/{key}", image, target
        except PoolError:
            skipped.damaged_shards.append(shard.name)


def _label(sample: dict[str, bytes], num_classes: int) -> int | str:
    if "cls" not in sample:
        return "no_label"
    try:
        label = int(sample["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        return "bad_label"
    return label if 0 <= label < num_classes else "bad_label"


def _group(sample: dict[str, bytes], field: int) -> int | str:
    """Field ``field`` of the sample's .npy metadata vector, or why it cannot be read."""
    if "npy" not in sample:
        return "no_group"
    try:
        values = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).reshape(-1)
        value = values[field]
    except (ValueError, OSError, IndexError, EOFError):
        return "bad_group"
    if not np.issubdtype(values.dtype, np.number) or value != int(value):
        return "bad_group"
    return int(value)


def _captions(sample: dict[str, bytes]) -> list[str] | str:
    if "txt" not in sample:
        return "no_captions"
    try:
        captions = sample["txt"].decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return "bad_captions"
    return captions if captions else "no_captions"


def decode_image(data: bytes):
    """PIL RGB image, or None when the bytes are not an image (decoded as webdataset's "pil" does)."""
    from PIL import Image  # heavy, optional (siftbench[ml])

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return None
