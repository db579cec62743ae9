from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, from_source, register_filter
from siftbench.benchmark.core.pool import ShardBatch

from .common.embeddings import embedding_frame, embedding_matrix
from .common.neighbours import assign, normalised_rows, train_kmeans, uid_rank


@register_filter("image_based")
@dataclass
class ImageBased(Filter):
    """DataComp's image-based filter: k-means over the pool's image embeddings, keep the samples whose
    cluster is the nearest cluster of at least one target embedding.

    DataComp clustered L/14 image embeddings (k = 100,000 for 12.8M, 20 iterations, seed 0) and used
    ImageNet-1k training images as targets. Here ``targets`` is a ``.npy`` of (m, dim) embeddings made
    by the same model as ``embedding`` (on the world, its source fills in the scorer's embeddings of the
    clean reference images; text embeddings of concept prompts fall into a few clusters across the modality
    gap); ``n_clusters`` defaults to DataComp's ratio, one per 128 samples.
    k-means sees rows in uid order, so the clusters do not depend on shard order.
    """

    embedding: str = "l14_img"
    targets: str | None = from_source("image_targets")
    n_clusters: int | None = None
    iterations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.targets or not Path(self.targets).is_file():
            raise ConfigError(f"image_based: targets={self.targets!r} is not a file; give a .npy of target embeddings")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"image_based: n_clusters={self.n_clusters} must be >= 1")

    def embeddings(self) -> tuple[str, ...]:
        return (self.embedding,)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        return embedding_frame(batch.embeddings[self.embedding])

    def _targets(self, dim: int) -> np.ndarray:
        try:
            targets = np.load(self.targets, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"image_based: targets {self.targets} unreadable ({e})") from None
        if targets.ndim != 2 or targets.shape[1] != dim:
            raise ConfigError(f"image_based: targets {self.targets} have shape {targets.shape}; expected (m, {dim}) "
                              f"like the pool's {self.embedding!r}")  # fmt: skip
        x, valid = normalised_rows(targets)
        if not valid.any():
            raise ConfigError(f"image_based: targets {self.targets} hold no finite non-zero vector")
        return x[valid]

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        vectors, valid = normalised_rows(embedding_matrix(values))  # DataComp clusters unit embeddings
        near = np.zeros(len(values), dtype=bool)
        notes: dict = {"clusters": 0, "target_clusters": 0}
        if valid.any():
            targets = self._targets(vectors.shape[1])
            rows = np.flatnonzero(valid)
            rows = rows[np.argsort(uid_rank(uids[rows]), kind="stable")]
            k = self.n_clusters or max(1, round(len(rows) / 128))
            centroids = train_kmeans(vectors, rows, k, self.iterations, self.seed, len(rows), spherical=False)
            labels, _ = assign(vectors, centroids, spherical=False)
            wanted = np.unique(assign(targets, centroids, spherical=False)[0][:, 0])
            near = valid & np.isin(labels[:, 0], wanted)
            notes = {"clusters": len(centroids), "target_clusters": len(wanted)}
        decision = Decision.from_reasons({"invalid_embedding": ~valid, "cluster_not_near_target": ~near}, len(values))
        decision.notes = notes
        return decision
