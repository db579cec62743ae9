"""Assigning concepts to samples, for the balancing filters: by caption, by zero-shot class, by cluster.

Caption matching is MetaCLIP's: captions and entries are lower-cased, punctuation becomes space,
whitespace runs collapse, and an entry matches where `` entry `` (space-padded) occurs in
`` caption ``, so "cat" matches "a cat." but not "concatenate". The whole shard is normalised by Arrow
in one pass and searched by one Aho-Corasick scan over the concatenated captions, so no Python runs per
caption. filters/concept_match.py and the balancing filters share this one matcher.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Filter
from siftbench.benchmark.core.pool import ShardBatch

from .embeddings import embedding_frame, embedding_matrix
from .neighbours import assign, normalised_rows, train_kmeans, uid_rank

CONCEPT_SOURCES = ("caption", "zeroshot", "cluster")
_PUNCTUATION = r"[.,;:!?\"'()\[\]{}<>/\\|#*]"
_WHITESPACE = r"[\s\v\x{1c}-\x{1f}\x{85}\p{Z}]+"  # what Python's str.split() splits on
# ASCII fast path: punctuation and whitespace (but not the NUL separator) become a space.
_ASCII_TABLE = bytes(32 if (chr(b) in ".,;:!?\"'()[]{}<>/\\|#*" or chr(b).isspace()) and b else b for b in range(256))


def normalise_texts(texts: Sequence[str] | np.ndarray):
    """Lower-case, punctuation -> space, whitespace runs -> one space (an Arrow string array; the
    NUL separator survives)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(np.asarray(texts, dtype=object), pa.string()) if not isinstance(texts, pa.Array) else texts
    arr = pc.fill_null(arr, "")
    arr = pc.utf8_lower(arr)
    arr = pc.replace_substring_regex(arr, _PUNCTUATION, " ")
    return pc.replace_substring_regex(arr, _WHITESPACE, " ")


class ConceptMatcher:
    """A validated concept vocabulary and its Aho-Corasick automaton."""

    def __init__(self, vocabulary: Sequence[str], who: str) -> None:
        raw = [str(v) for v in vocabulary]
        if not raw:
            raise ConfigError(f"{who}: vocabulary is empty; list concepts in filter.vocabulary")
        entries = normalise_texts(raw).to_pylist()
        entries = [e.strip() for e in entries]
        empty = [i for i, e in enumerate(entries) if not e]
        if empty:
            raise ConfigError(f"{who}: vocabulary entries at {empty} are empty after normalisation; remove them")
        seen: dict[str, int] = {}
        dupes = []
        for i, e in enumerate(entries):
            if e in seen:
                dupes.append(f"{raw[seen[e]]!r} (#{seen[e]}) = {raw[i]!r} (#{i})")
            seen.setdefault(e, i)
        if dupes:
            raise ConfigError(f"{who}: vocabulary has duplicates {dupes}; list each concept once")
        self.entries = entries
        self.names = [r.strip() for r in raw]

    @cached_property
    def _automaton(self):
        import ahocorasick

        automaton = ahocorasick.Automaton()
        for i, entry in enumerate(self.entries):
            automaton.add_word(f" {entry} ", i)
        automaton.make_automaton()
        return automaton

    def match(self, texts: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, concept) for every vocabulary entry named in each text, each pair once, rows ascending,
        concepts in order of first appearance within a row."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # One string: " caption \0 caption \0 ... ", normalised in one pass. An entry never holds
        # a NUL or two spaces, so no match can span two captions.
        joined = " " + " \0 ".join(texts) + " "
        if joined.isascii():
            raw = np.frombuffer(joined.encode("ascii").lower().translate(_ASCII_TABLE), dtype=np.uint8)
            doubled = np.zeros(len(raw), dtype=bool)
            doubled[1:] = (raw[1:] == 32) & (raw[:-1] == 32)
            raw = raw[~doubled]
            text = raw.tobytes().decode("ascii")
            separators = np.flatnonzero(raw == 0)
        else:
            import pyarrow as pa

            text = normalise_texts(pa.array([joined])).to_pylist()[0]
            separators = np.flatnonzero(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 0)
        flat = np.fromiter(itertools.chain.from_iterable(self._automaton.iter(text)), dtype=np.int64)
        ends, concepts = flat[0::2], flat[1::2]
        rows = np.searchsorted(separators, ends)
        key = rows * len(self.entries) + concepts
        _, first = np.unique(key, return_index=True)
        first.sort()
        return rows[first], concepts[first]


@cache
def _load_class_embeddings(path: str, mtime: float) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"class_embeddings {path}: unreadable ({e}); save a (classes, dim) float array with np.save") from None
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ConfigError(f"class_embeddings {path}: expected a finite (classes, dim) array, got shape {array.shape}")
    return normalised_rows(array)[0]


@dataclass
class ConceptFilter(Filter):
    """Base for filters that balance over concepts; ``by`` chooses how a sample gets its concepts.

    - ``caption``: entries of ``vocabulary`` named in the caption (several per sample possible);
    - ``zeroshot``: the nearest row of ``class_embeddings`` (a ``.npy`` of text embeddings of the class
      prompts, made by the model that made ``embedding``), names from ``vocabulary`` if given;
    - ``cluster``: the sample's k-means cluster over ``embedding`` (``n_clusters``, seed 0).
    """

    by: str = "caption"
    vocabulary: list[str] = field(default_factory=list)
    text_column: str = "text"
    embedding: str | None = None
    class_embeddings: str | None = None
    n_clusters: int | None = None
    max_concepts: int = 8

    def _check_concepts(self) -> None:
        who = self.name or type(self).__name__
        if self.by not in CONCEPT_SOURCES:
            raise ConfigError(f"{who}: by={self.by!r}; choose one of {CONCEPT_SOURCES}")
        if self.by == "caption":
            ConceptMatcher(self.vocabulary, who)  # validates now, not in a worker
        elif not self.embedding:
            raise ConfigError(f"{who}: by={self.by!r} needs embedding= (an image embedding key such as b32_img)")
        if self.by == "zeroshot":
            if not self.class_embeddings or not Path(self.class_embeddings).is_file():
                raise ConfigError(
                    f"{who}: by='zeroshot' needs class_embeddings= pointing at a .npy of class text embeddings "
                    f"(got {self.class_embeddings!r})"
                )
            if self.vocabulary and len(self.vocabulary) != len(self._classes()):
                raise ConfigError(
                    f"{who}: vocabulary has {len(self.vocabulary)} names but class_embeddings has "
                    f"{len(self._classes())} rows; give one name per row or none"
                )
        if self.by == "cluster" and self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"{who}: n_clusters={self.n_clusters} must be >= 1")
        if self.max_concepts < 1:
            raise ConfigError(f"{who}: max_concepts={self.max_concepts} must be >= 1")

    def _classes(self) -> np.ndarray:
        path = Path(self.class_embeddings or "")
        return _load_class_embeddings(str(path.resolve()), path.stat().st_mtime)

    @cached_property
    def _matcher(self) -> ConceptMatcher:
        return ConceptMatcher(self.vocabulary, self.name)

    def columns(self) -> tuple[str, ...]:
        return (self.text_column,) if self.by == "caption" else ()

    def embeddings(self) -> tuple[str, ...]:
        return () if self.by == "caption" else (self.embedding,)  # type: ignore[return-value]

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        n = len(batch)
        if self.by == "cluster":
            return embedding_frame(batch.embeddings[self.embedding])  # clustered globally in select
        concepts = np.full((n, self.max_concepts), -1, dtype=np.int32)
        count = np.zeros(n, dtype=np.int16)
        if self.by == "caption":
            rows, ids = self._matcher.match(batch.table[self.text_column].to_numpy(dtype=object))
            count = np.bincount(rows, minlength=n).astype(np.int16)
            slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within the row's matches
            fits = slot < self.max_concepts
            concepts[rows[fits], slot[fits]] = ids[fits]
        else:
            x, valid = normalised_rows(batch.embeddings[self.embedding])
            classes = self._classes()
            if x.shape[1] != classes.shape[1]:
                raise ConfigError(
                    f"{self.name}: embedding {self.embedding!r} has dim {x.shape[1]} but class_embeddings has "
                    f"{classes.shape[1]}; embed the class prompts with the same model"
                )
            best = np.argmax(x @ classes.T, axis=1) if n else np.zeros(0, dtype=np.int64)
            concepts[:, 0] = np.where(valid, best, -1)
            count = np.where(valid, 1, -1).astype(np.int16)  # -1: no usable embedding
        frame = pd.DataFrame(concepts, columns=[f"concept{i}" for i in range(self.max_concepts)])
        frame["n_concepts"] = count
        return frame

    def concepts(self, values: pd.DataFrame, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(concept matrix (rows, max_concepts) padded with -1, per-row status, concept names).

        status: 0 has a concept, 1 invalid embedding, 2 no concept.
        """
        if self.by == "cluster":
            vectors = embedding_matrix(values)
            x_valid = normalised_rows(vectors)[1] if len(vectors) else np.zeros(0, bool)
            matrix = np.full((len(values), 1), -1, dtype=np.int32)
            k = self.n_clusters or max(1, round((len(vectors) / 2) ** 0.5))
            names = [f"cluster_{i}" for i in range(k)]
            if x_valid.any():
                rows = np.flatnonzero(x_valid)
                rows = rows[np.argsort(uid_rank(uids[rows]), kind="stable")]
                centroids = train_kmeans(vectors, rows, k, 20, 0, max(50_000, 40 * k), spherical=True)
                labels, _ = assign(vectors, centroids, spherical=True)
                matrix[x_valid, 0] = labels[x_valid, 0]
                names = [f"cluster_{i}" for i in range(len(centroids))]
            status = np.where(x_valid, 0, 1).astype(np.int8)
            return matrix, status, names
        matrix = np.stack([values[f"concept{i}"].to_numpy() for i in range(self.max_concepts)], axis=1)
        count = values["n_concepts"].to_numpy()
        status = np.where(count < 0, 1, np.where(count == 0, 2, 0)).astype(np.int8)
        if self.by == "caption":
            names = self._matcher.names
        else:
            names = list(self.vocabulary) or [f"class_{i}" for i in range(len(self._classes()))]
        return matrix.astype(np.int32), status, names


def concept_counts(matrix: np.ndarray, rows: np.ndarray, n_concepts: int) -> np.ndarray:
    """Per concept: how many of ``rows`` name it (a row counts once per concept)."""
    ids = matrix[rows].ravel()
    return np.bincount(ids[ids >= 0], minlength=n_concepts)


def named_counts(counts: np.ndarray, names: list[str]) -> dict[str, int]:
    return {names[i]: int(c) for i, c in enumerate(counts) if c}
