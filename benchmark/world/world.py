"""The handle on a generated world: its folders, its ground truth, and diagnostics of a subset.

No strategy reads ``ground_truth.parquet``: the harness does, to report per-defect precision and recall of
a subset, and the oracle filter (filters/oracle.py, a reference, never a strategy) is handed its path to
draw the clean pairs alone, the reference of "oracle gap closed".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.errors import SiftbenchError, SubsetError
from siftbench.benchmark.core.uids import UID_DTYPE, hex_to_uids

from .config import DEFECTS

WORLD_VERSION = "2"  # bump on any change to what the generator writes for a given config


class WorldError(SiftbenchError):
    """A world folder is missing or incomplete, or the generator broke its own invariants."""


@dataclass
class World:
    root: Path
    manifest: dict[str, Any]
    _ground_truth: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, root: str | Path) -> World:
        root = Path(root)
        manifest_path = root / "world.json"
        if not manifest_path.is_file():
            raise WorldError(
                f"{root}: no world.json, so this is not a complete world; generate one with "
                "siftbench.benchmark.world.ensure_world(cfg) or generate_world(cfg, out_dir)"
            )
        return cls(root=root, manifest=json.loads(manifest_path.read_text()))

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    @property
    def reference_dir(self) -> Path:
        return self.root / "reference"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def ground_truth_path(self) -> Path:
        return self.root / "ground_truth.parquet"

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def ground_truth(self) -> pd.DataFrame:
        """One row per pool sample: uid, shard, key, kind, shape, colour, digit, concept, defect, variant,
        language, source_uid (what it copies or whose caption it took), eval_task, eval_key."""
        if self._ground_truth is None:
            table = pq.read_table(self.ground_truth_path)
            self._ground_truth = table.to_pandas(types_mapper={pa.int8(): pd.Int8Dtype()}.get)
        return self._ground_truth.copy()

    def diagnostics(self, subset: np.ndarray) -> dict[str, Any]:
        """What a subset kept and removed, per planted defect, against the ground truth.

        recall = removed / planted per defect; removal_precision = removed defective / removed;
        false_removal_rate = clean removed / clean; contamination_kept counts eval copies still in per
        eval task; duplicate_groups checks that exactly one of each source + copies group survives;
        concept_counts counts repeats (a uid listed k times is trained on k times).
        """
        subset = np.asarray(subset)
        if subset.dtype != UID_DTYPE:
            raise SubsetError(f"diagnostics: subset dtype {subset.dtype}, expected {UID_DTYPE.descr}")
        gt = self.ground_truth()
        times = _multiplicity(hex_to_uids(gt["uid"].to_numpy()), subset)
        kept = times > 0
        defect = gt["defect"].to_numpy()
        out: dict[str, Any] = {
            "pool_size": len(gt),
            "subset_size": len(subset),
            "subset_unique": int(kept.sum()),
            "unknown_uids": int(len(np.unique(_void(subset))) - kept.sum()),
            "defects": {},
        }
        for name in DEFECTS:
            rows = defect == name
            entry = _kept_removed(rows, kept)
            variants = gt.loc[rows, "variant"].dropna()
            if name in ("near_duplicate", "degenerate", "eval_copy", "non_english") and len(variants):
                entry["by_variant"] = {
                    v: _kept_removed(rows & (gt["variant"] == v).to_numpy(), kept)
                    for v in sorted(variants.unique())
                }
            out["defects"][name] = entry
        clean = defect == "clean"
        clean_stats = _kept_removed(clean, kept)
        out["clean"] = {
            "total": clean_stats["planted"],
            "kept": clean_stats["kept"],
            "removed": clean_stats["removed"],
            "false_removal_rate": _ratio(clean_stats["removed"], clean_stats["planted"]),
        }
        removed = int((~kept).sum())
        out["removed"] = removed
        out["removal_precision"] = _ratio(int((~kept & ~clean).sum()), removed)
        copies = gt[defect == "eval_copy"]
        out["contamination_kept"] = {
            task: {"planted": len(g), "kept": int(kept[g.index].sum())}
            for task, g in copies.groupby("eval_task", sort=True)
        }
        out["duplicate_groups"] = _duplicate_groups(gt, kept)
        counts = pd.Series(times, index=gt.index)
        out["concept_counts"] = {
            str(k): int(v) for k, v in counts.groupby(gt["concept"]).sum().sort_index().items()
        }
        shapes = counts[gt["kind"] == "shape"].groupby(gt["shape"]).sum().sort_index()
        out["shape_counts"] = {str(k): int(v) for k, v in shapes.items()}
        return out


def _void(uids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(uids).view(np.dtype((np.void, 16))).ravel()


def _multiplicity(pool: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """How many times each pool uid appears in the subset."""
    values, counts = np.unique(_void(subset), return_counts=True)
    if len(values) == 0:
        return np.zeros(len(pool), dtype=np.int64)
    wanted = _void(pool)
    pos = np.minimum(np.searchsorted(values, wanted), len(values) - 1)
    return np.where(values[pos] == wanted, counts[pos], 0)


def _kept_removed(rows: np.ndarray, kept: np.ndarray) -> dict[str, Any]:
    planted = int(rows.sum())
    k = int((rows & kept).sum())
    return {"planted": planted, "kept": k, "removed": planted - k, "recall": _ratio(planted - k, planted)}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _duplicate_groups(gt: pd.DataFrame, kept: np.ndarray) -> dict[str, int]:
    """Each source with its exact and near copies is one group; ideal dedup keeps exactly one member."""
    copies = gt[gt["defect"].isin(["exact_duplicate", "near_duplicate"])]
    if copies.empty:
        return {"groups": 0, "one_kept": 0, "none_kept": 0, "several_kept": 0}
    kept_by_uid = pd.Series(kept, index=gt["uid"])
    members = pd.concat(
        [
            pd.Series(copies["source_uid"].unique(), index=copies["source_uid"].unique()),
            pd.Series(copies["uid"].to_numpy(), index=copies["source_uid"].to_numpy()),
        ]
    )
    per_group = kept_by_uid.reindex(members.to_numpy()).fillna(False).astype(int).groupby(members.index).sum()
    return {
        "groups": len(per_group),
        "one_kept": int((per_group == 1).sum()),
        "none_kept": int((per_group == 0).sum()),
        "several_kept": int((per_group > 1).sum()),
    }
