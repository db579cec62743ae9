"""The pool-stage benchmark's data: embeddings written as `siftbench embed` writes them, read by clip_score."""

import numpy as np
import pytest

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.uids import read_subset
from siftbench.benchmark.perf.bench_pool import make_embedded_pool, measure_score_select, run_sections


def test_score_select_over_a_synthetic_embedded_pool(tmp_path):
    make_embedded_pool(str(tmp_path / "pool"), 25_000, shard_rows=10_000, dim=16)
    batch = Pool.open(tmp_path / "pool").read_shard("00000002", columns=["clip_bench_similarity_score"],
                                                    embeddings=["bench_img"])
    assert len(batch) == 5_000 and batch.embeddings["bench_img"].dtype == np.float16
    result = measure_score_select(str(tmp_path / "pool"), str(tmp_path / "out"), fraction=0.3, workers=1)
    # DataComp's rule: keep score >= sorted_desc[int(N * f)], so the threshold row itself too.
    assert result["pool_size"] == 25_000 and result["kept"] == len(read_subset(tmp_path / "out" / "subset.npy"))
    scores = np.concatenate([np.load(p)["similarity"] for p in sorted((tmp_path / "pool/embeddings/bench").glob("*.npz"))])
    assert result["kept"] == (scores >= np.sort(scores)[::-1][7_500]).sum() == 7_501


def test_unknown_bench_section_is_named():
    with pytest.raises(ConfigError, match="unknown section"):
        run_sections(["embedd"])
