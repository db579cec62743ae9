"""Moving per-row embeddings from the score map to the global select as plain float16 columns.

A filter whose decision needs every embedding at once (dedup, clustering) returns them from
``score`` as columns ``<prefix>0000, <prefix>0001, ...`` so the pipeline stores them in its uid-keyed
score files; ``select`` stacks them back. float16 halves the bytes and is what pools store anyway.
This suits pools up to a few million rows; the heavy functions also take a memory-mapped array.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import PoolError

PREFIX = "emb"


def embedding_frame(array: np.ndarray, prefix: str = PREFIX) -> pd.DataFrame:
    array = np.asarray(array)
    if array.ndim != 2:
        raise PoolError(f"expected a (rows, dim) embedding array, got shape {array.shape}")
    names = [f"{prefix}{i:04d}" for i in range(array.shape[1])]
    return pd.DataFrame(np.ascontiguousarray(array, dtype=np.float16), columns=names)


def embedding_matrix(values: pd.DataFrame, prefix: str = PREFIX) -> np.ndarray:
    names = [c for c in values.columns if c.startswith(prefix) and c[len(prefix) :].isdigit()]
    out = np.empty((len(values), len(names)), dtype=np.float16)
    for k, name in enumerate(names):
        out[:, k] = values[name].to_numpy()
    return out
