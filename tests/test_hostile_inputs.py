"""Hostile inputs: each one is a clear error or a counted skip, never a traceback or a silently wrong answer.

One row of CASES per case: a short id, its family, a function that builds the bad input under tmp_path and
returns the command line, and words the one line on stderr must hold. Every case runs the real command
in-process and checks the exit code (2 for a user error), exactly one stderr line `siftbench: error: ...`
holding those words (case-insensitive), no traceback, nothing written outside the command's output
(``tmp_path/out``), and no finished-looking output left in it for a later stage to take. A case that exits
0 (a counted skip) prints only `siftbench: warning:` lines, and its ``check`` looks at what it counted.
docs/reliability.md lists the same table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from leaderboard_fixtures import FAKES, edit_results, make_pool, make_run, replace_subset
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.uids import UID_DTYPE, hex_to_uids, write_subset
from siftbench.benchmark.experiment import cli
from siftbench.benchmark.perf.bench import make_metadata_pool
from siftbench.leaderboard import cli as leaderboard_cli

# What a later stage takes for finished work: none of it may be left by a command that failed.
FINISHED = ("config.yaml", "subset.npy", "subset_stats.json", "manifest.json", "train_stats.json", "results.json",
            "evaluation.json", "eval_results.jsonl", "lb.sqlite")
CLIP = ["filter=clip_score", "filter.column=clip_b32_similarity_score", "filter.fraction=0.5"]


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    build: Callable[[Path], list[str]]  # writes the input under tmp_path; returns argv (outputs go to tmp_path/out)
    expect: str | tuple[str, ...] | None  # words of the one stderr line (None: stderr stays empty)
    code: int = 2
    leaderboard: bool = False  # run `python -m siftbench.leaderboard` with the test scale table, not `siftbench`
    check: Callable[[Path, str], None] | None = None  # more checks on (tmp_path, stdout) of a case that exits 0


# ----------------------------------------------------------------------------------------- input builders


def hexes(n: int, start: int = 1) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


def parquet(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def metadata_pool(tmp: Path) -> Path:
    """Three metadata files (00000000..00000002.parquet) with uid, text and clip_b32_similarity_score."""
    return make_metadata_pool(tmp / "pool", 60, files=3)


def one_file_pool(tmp: Path, **columns) -> Path:
    pool = tmp / "pool"
    parquet(pool / "metadata" / "00000000.parquet", **columns)
    return pool


def filter_cmd(tmp: Path, pool: Path, *overrides: str, base: list[str] = CLIP) -> list[str]:
    return ["filter", str(pool), "--out", str(tmp / "out"), *base, *overrides]


def without(pool: Path, folder: str) -> Path:
    shutil.rmtree(pool / folder)
    return pool


def metadata_file(pool: Path, where: str) -> Path:
    files = sorted((pool / "metadata").glob("*.parquet"))
    return {"first": files[0], "middle": files[len(files) // 2], "last": files[-1]}[where]


def damaged_listing(where: str, content: bytes) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        pool = metadata_pool(tmp)
        metadata_file(pool, where).write_bytes(content)
        return filter_cmd(tmp, pool)

    return build


def uid_column(values: list) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return filter_cmd(tmp, one_file_pool(tmp, uid=values, clip_b32_similarity_score=np.ones(len(values))))

    return build


def score_column(values: list | np.ndarray) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return filter_cmd(tmp, one_file_pool(tmp, uid=hexes(len(values)), clip_b32_similarity_score=values))

    return build


def filter_with(*overrides: str, base: list[str] = CLIP) -> Callable[[Path], list[str]]:
    return lambda tmp: filter_cmd(tmp, metadata_pool(tmp), *overrides, base=base)


def run_cmd(*overrides: str) -> Callable[[Path], list[str]]:
    """``siftbench run`` on a metadata pool into tmp/out, its eval sets missing (the first thing it reads)."""
    return lambda tmp: ["run", f"pool={metadata_pool(tmp)}", f"eval_root={tmp / 'eval'}", *CLIP, f"runs_dir={tmp}",
                        "name=out", "scale=toy", *overrides]


def plugin(source: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "bad_plugin.py").write_text(source)
        return filter_cmd(tmp, metadata_pool(tmp), f"plugins=[{tmp / 'bad_plugin.py'}]")

    return build


def metadata_npz_rows(tmp: Path) -> list[str]:
    """DataComp's own embeddings (metadata/<name>.npz, in the parquet's row order), one row short in one file."""
    pool = metadata_pool(tmp)
    for meta in sorted((pool / "metadata").glob("*.parquet")):
        rows = pq.ParquetFile(meta).metadata.num_rows - (meta.stem == "00000001")
        np.savez(meta.with_suffix(".npz"), b32_img=np.ones((rows, 8), np.float16))
    return filter_cmd(tmp, pool, base=["filter=semantic_dedup", "filter.embedding=b32_img"])


# A pool with images, and embeddings of our own (embeddings/m/<shard>.npz: uid, image, text, similarity).


def tiny_pool(tmp: Path) -> Path:
    pool = tmp / "pool"
    make_tiny_pool(pool, n_shards=2, per_shard=8)
    return pool


def with_embeddings(pool: Path) -> Path:
    folder = pool / "embeddings" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    for meta in sorted((pool / "metadata").glob("*.parquet")):
        uids = hex_to_uids(pq.read_table(meta, columns=["uid"]).column("uid"))
        rng = np.random.default_rng(len(uids))
        np.savez(folder / f"{meta.stem}.npz", uid=uids, image=rng.normal(size=(len(uids), 4)).astype(np.float16),
                 text=rng.normal(size=(len(uids), 4)).astype(np.float16),
                 similarity=rng.uniform(0, 1, len(uids)).astype(np.float32))  # fmt: skip
    return folder


def damaged_embeddings(damage: Callable[[Path, dict], None]) -> Callable[[Path], list[str]]:
    """Embeddings for every shard, then ``damage(npz path, its arrays)`` rewrites the second shard's."""

    def build(tmp: Path) -> list[str]:
        pool = tiny_pool(tmp)
        npz = with_embeddings(pool) / "00000001.npz"
        with np.load(npz) as z:
            arrays = dict(z)
        damage(npz, arrays)
        return filter_cmd(tmp, pool, base=["filter=clip_score", "filter.column=clip_m_similarity_score",
                                           "filter.fraction=0.5"])  # fmt: skip

    return build


# Subsets and tars, for reshard.


def reshard_cmd(tmp: Path, pool: Path, subset: Path, *options: str) -> list[str]:
    return ["reshard", str(pool), str(subset), "--out", str(tmp / "out"), *options]


def full_subset(tmp: Path, pool: Path) -> Path:
    uids = np.concatenate([hex_to_uids(pq.read_table(f).column("uid")) for f in sorted(pool.glob("metadata/*"))])
    return write_subset(tmp / "subset.npy", uids)


def subset_file(write: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        pool = tiny_pool(tmp)
        write(tmp / "subset.npy")
        return reshard_cmd(tmp, pool, tmp / "subset.npy")

    return build


def npy(array: np.ndarray, allow_pickle: bool = False, cut: int = 0) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        np.save(path, array, allow_pickle=allow_pickle)
        if cut:
            path.write_bytes(path.read_bytes()[:-cut])

    return write


def damaged_tar(damage: Callable[[Path], None], tar: str = "00000000.tar") -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        pool = tiny_pool(tmp)
        subset = full_subset(tmp, pool)
        damage(pool / "shards" / tar)
        return reshard_cmd(tmp, pool, subset)

    return build


def garble_header(tar: Path, member: int = 3) -> None:
    with tarfile.open(tar) as t:
        offset = t.getmembers()[member].offset
    data = bytearray(tar.read_bytes())
    data[offset : offset + 512] = bytes(range(256)) * 2
    tar.write_bytes(bytes(data))


def cut_tar(tar: Path, member: int = 5) -> None:
    with tarfile.open(tar) as t:
        info = t.getmembers()[member]
    tar.write_bytes(tar.read_bytes()[: info.offset_data + info.size // 2])


def resharded_with_damage(tmp: Path, out: str) -> None:
    stats = json.loads(out)
    assert stats["damaged_tars"] == 1 and stats["damaged_members"] >= 1, stats
    manifest = json.loads((tmp / "out" / "manifest.json").read_text())
    assert 8 <= manifest["num_samples"] < 16  # the second tar whole, the first up to its damage and after


def resharded_without_a_tar(tmp: Path, out: str) -> None:
    assert json.loads(out)["damaged_tars"] == 1
    assert json.loads((tmp / "out" / "manifest.json").read_text())["num_samples"] == 8  # the intact tar's


# Training shards, evaluation, submissions.


def train_on(make: Callable[[Path], None], *options: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        shards = tmp / "shards"
        shards.mkdir()
        make(shards)
        return ["train", str(shards), "--out", str(tmp / "out"), *options]

    return build


def evaluate_with(*options: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "weights.pt").write_bytes(b"never read: the arguments are checked first")
        (tmp / "eval").mkdir()
        return ["evaluate", "--checkpoint", str(tmp / "weights.pt"), "--eval-root", str(tmp / "eval"),
                *(o.replace("{tmp}", str(tmp)) for o in options)]

    return build


def run_folder(name: str, content: str) -> Callable[[Path], list[str]]:
    """``evaluate RUN_DIR`` of a run folder whose ``name`` holds ``content``."""
    def build(tmp: Path) -> list[str]:
        run = tmp / "run"
        run.mkdir()
        (run / "config.yaml").write_text("scale: {model: siftbench-tiny}\n")
        (run / name).write_text(content)
        return ["evaluate", str(run), "--out", str(tmp / "out")]

    return build


def submission(damage: Callable[[Path], None], store: str = "out/lb.sqlite") -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        pool = make_pool(tmp / "pool")
        run = make_run(tmp / "runs", pool, "entry")
        damage(run)
        return ["submit", str(run), "--name", "entry", "--store", str(tmp / store)]

    return build


def bad_store(run: Path) -> None:
    (run.parents[1] / "store.sqlite").write_text("a text file, not SQLite\n")


def with_out_a_file(build: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    """The same command, with tmp_path/out an existing file."""
    def wrapped(tmp: Path) -> list[str]:
        (tmp / "out").write_text("a file where a folder should be\n")
        return build(tmp)

    return wrapped


def leaderboard_cmd(*argv: str, folder: str = "") -> Callable[[Path], list[str]]:
    """``leaderboard ...`` with ``{tmp}`` in argv replaced; ``folder`` (under tmp) is made first."""
    def build(tmp: Path) -> list[str]:
        if folder:
            (tmp / folder).mkdir()
        return [a.replace("{tmp}", str(tmp)) for a in argv]

    return build


def no_results(run: Path) -> None:
    (run / "results.json").unlink()


INF_SCORES = np.linspace(0.0, 1.0, 20)
INF_SCORES[[2, 3]], INF_SCORES[4], INF_SCORES[5] = np.inf, -np.inf, np.nan


def inf_scores(tmp: Path) -> list[str]:
    return filter_cmd(tmp, one_file_pool(tmp, uid=hexes(20), clip_b32_similarity_score=INF_SCORES))


def inf_dropped_and_counted(tmp: Path, out: str) -> None:
    stats = json.loads((tmp / "out" / "subset_stats.json").read_text())
    dropped = stats["steps"][0]["dropped"]
    not_finite = sum(n for reason, n in dropped.items() if "nan" in reason or "finite" in reason)
    assert not_finite == 4, dropped  # +inf twice, -inf and NaN: none ranked, each counted
    kept = {f"{int(hi):016x}{int(lo):016x}" for hi, lo in np.load(tmp / "out" / "subset.npy")}
    # The top half of the 16 finite scores by DataComp's rule: keep score >= sorted_desc[int(16 * 0.5)] (9 rows).
    finite = np.isfinite(INF_SCORES)
    threshold = -np.sort(-INF_SCORES[finite])[int(finite.sum() * 0.5)]
    assert kept == {uid for uid, s, f in zip(hexes(20), INF_SCORES, finite, strict=True) if f and s >= threshold}
    assert kept.isdisjoint(hexes(20)[2:6]) and len(kept) == 9, sorted(kept)


def basic_sizes(width: list, height: list) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        pool = one_file_pool(tmp, uid=hexes(len(width)), text=["a photo of a red circle"] * len(width),
                             original_width=width, original_height=height)  # fmt: skip
        return filter_cmd(tmp, pool, base=["filter=basic"])

    return build


def sizes_dropped_and_counted(tmp: Path, out: str) -> None:
    stats = json.loads((tmp / "out" / "subset_stats.json").read_text())
    assert stats["steps"][0]["dropped"] == {"nan_size": 2, "infinite_size": 1}, stats["steps"][0]
    kept = {f"{int(hi):016x}{int(lo):016x}" for hi, lo in np.load(tmp / "out" / "subset.npy")}
    assert kept == {hexes(4)[0]}


# ----------------------------------------------------------------------------------------------- the table

GARBAGE_PARQUET = b"PAR1" + b"\x07" * 40 + b"PAR1"

CASES = [
    # metadata
    Case("score-strings", "metadata", score_column(["high", "low", "high", "low"]),
         ("clip_b32_similarity_score", "string")),
    Case("score-numeric-strings", "metadata", score_column(["0.9", "0.1", "0.5", "0.3"]),
         ("clip_b32_similarity_score", "string")),
    Case("score-inf", "metadata", inf_scores, None, code=0, check=inf_dropped_and_counted),
    Case("score-all-nan", "metadata", score_column(np.full(4, np.nan)), "every value of 'clip_b32_similarity_score' is nan"),
    Case("score-booleans", "metadata", score_column([True, False, True, True]),
         ("clip_b32_similarity_score", "boolean")),
    Case("size-strings", "metadata", basic_sizes(["400", "300", "100", "400"], [400] * 4),
         ("00000000.parquet", "'original_width'", "string")),
    Case("size-nan-inf", "metadata", basic_sizes([400.0, np.nan, np.inf, 400.0], [400, 400, 400, None]), None,
         code=0, check=sizes_dropped_and_counted),
    Case("parquet-empty-first", "metadata", damaged_listing("first", b""), "00000000.parquet"),
    Case("parquet-empty-middle", "metadata", damaged_listing("middle", b""), "00000001.parquet"),
    Case("parquet-empty-last", "metadata", damaged_listing("last", b""), "00000002.parquet"),
    Case("parquet-garbage-first", "metadata", damaged_listing("first", GARBAGE_PARQUET), "00000000.parquet"),
    Case("parquet-garbage-middle", "metadata", damaged_listing("middle", GARBAGE_PARQUET), "00000001.parquet"),
    Case("parquet-garbage-last", "metadata", damaged_listing("last", GARBAGE_PARQUET), "00000002.parquet"),
    Case("parquet-no-uid-later", "metadata",
         lambda tmp: filter_cmd(tmp, parquet(metadata_file(metadata_pool(tmp), "last"), id=hexes(3)).parents[1]),
         ("00000002.parquet", "no 'uid' column")),
    Case("uid-null", "metadata", uid_column(["01", None, "03"]), "uid at row 1 is missing (null)"),
    Case("uid-not-hex", "metadata", uid_column(["01", "zz", "03"]), "uid 'zz' is not a hex string"),
    Case("uid-too-long", "metadata", uid_column(["01", "f" * 33]), "more than 32 hex digits"),
    Case("uid-duplicate", "metadata", uid_column(["01", "02", "02"]), "appear more than once"),
    Case("pool-missing", "metadata", lambda tmp: filter_cmd(tmp, tmp / "nowhere"), "nowhere does not exist"),
    Case("pool-no-metadata", "metadata", lambda tmp: filter_cmd(tmp, without(tiny_pool(tmp), "metadata")),
         "no metadata/*.parquet"),
    Case("column-not-numeric", "metadata", filter_with("filter.column=text"), ("'text'", "string")),
    Case("column-missing", "metadata", filter_with("filter.column=clip_l14_similarity_score"),
         "needs column(s) ['clip_l14_similarity_score']"),
    # embeddings: DataComp's own (metadata/<name>.npz, row order) and ours (embeddings/<key>/, joined on uid)
    Case("metadata-npz-rows", "embeddings", metadata_npz_rows, ("00000001.npz", "19 rows", "has 20")),
    Case("emb-rows-short", "embeddings",
         damaged_embeddings(lambda npz, a: np.savez(npz, **{**a, "similarity": a["similarity"][:-1]})),
         ("00000001.npz", "rows")),
    Case("emb-no-uid", "embeddings",
         damaged_embeddings(lambda npz, a: np.savez(npz, **{k: v for k, v in a.items() if k != "uid"})),
         ("00000001.npz", "'uid'")),
    Case("emb-not-npz", "embeddings", damaged_embeddings(lambda npz, a: npz.write_bytes(b"not a zip")),
         ("00000001.npz", "unreadable")),
    Case("emb-pickled-uid", "embeddings",
         damaged_embeddings(lambda npz, a: np.savez(npz, **{**a, "uid": np.array(list(a["uid"]), dtype=object)})),
         ("00000001.npz", "pickle")),
    # tars: pool shards (read by reshard, damage counted and skipped) and training shards (refused)
    Case("tar-garbled-header", "tars", damaged_tar(garble_header), ("00000000.tar", "damaged"), code=0,
         check=resharded_with_damage),
    Case("tar-cut-short", "tars", damaged_tar(cut_tar), ("00000000.tar", "damaged"), code=0,
         check=resharded_with_damage),
    Case("tar-not-a-tar", "tars", damaged_tar(lambda tar: tar.write_bytes(b"\x01" * 3000), "00000001.tar"),
         ("00000001.tar", "damaged"), code=0, check=resharded_without_a_tar),
    Case("tar-empty", "tars", damaged_tar(lambda tar: tar.write_bytes(b""), "00000001.tar"),
         ("00000001.tar", "an empty file"), code=0, check=resharded_without_a_tar),
    Case("train-empty-tar", "tars", train_on(lambda s: (s / "00000.tar").write_bytes(b"")),
         ("00000.tar", "an empty file")),
    Case("train-not-a-tar", "tars", train_on(lambda s: (s / "00000.tar").write_bytes(b"\x01" * 2048)),
         ("00000.tar", "not a tar")),
    Case("train-bad-manifest", "tars", train_on(lambda s: (s / "manifest.json").write_text("{oops")),
         ("manifest.json", "not valid json")),
    # subsets (reshard's input)
    Case("subset-truncated", "subsets", subset_file(npy(hex_to_uids(hexes(8)), cut=5)), "unreadable .npy"),
    Case("subset-pickled", "subsets", subset_file(npy(np.array([1, "x"], dtype=object), allow_pickle=True)),
         "holds pickled python objects"),
    Case("subset-float", "subsets", subset_file(npy(np.zeros(4))), "dtype float64, expected"),
    Case("subset-2d", "subsets", subset_file(npy(np.zeros((2, 2), UID_DTYPE))), "2-d array, expected 1-d"),
    Case("subset-unsorted", "subsets", subset_file(npy(hex_to_uids(["02", "01"]))), "not sorted ascending"),
    Case("subset-not-npy", "subsets", subset_file(lambda p: p.write_text("0001\n0002\n")), "not a .npy file"),
    Case("subset-empty", "subsets", subset_file(npy(np.zeros(0, UID_DTYPE))), "holds no uids"),
    Case("subset-missing", "subsets", lambda tmp: reshard_cmd(tmp, tiny_pool(tmp), tmp / "nope.npy"),
         "no such subset file"),
    Case("subset-other-pool", "subsets", subset_file(npy(hex_to_uids(hexes(3)))), "none of the 3 subset uids occur"),
    # configs (key=value overrides)
    Case("seed-not-a-number", "configs", filter_with("seed=abc"), "seed='abc' is not a seed"),
    Case("seed-negative", "configs", filter_with("seed=-1"), "seed=-1 is not a seed"),
    Case("filter-typo", "configs", filter_with("filter=clip_scor", base=[]), "did you mean 'clip_score'"),
    Case("scale-typo", "configs", filter_with("scale=tinyy"), "did you mean 'tiny'"),
    Case("eval-typo", "configs", filter_with("eval=wrld"), "did you mean 'world'"),
    Case("executor-typo", "configs", filter_with("executor=rayy"), "did you mean 'ray'"),
    Case("filter-name-typo", "configs", filter_with("filter.name=radnom", base=[]), "did you mean 'random'"),
    Case("filter-param-typo", "configs", filter_with("filter.fractoin=0.3"), ("fractoin", "did you mean 'fraction'")),
    Case("filter-param-typo-plus", "configs", filter_with("+filter.fractoin=0.3"),
         ("fractoin", "did you mean 'fraction'")),
    Case("step-param-typo", "configs", filter_with("filter=dedup", "filter.steps.1.radus=3", base=[]),
         ("perceptual_dedup", "'radus'", "did you mean 'radius'")),
    Case("setting-typo", "configs", filter_with("seeed=1"), "no setting 'seeed'; did you mean 'seed'"),
    Case("scale-key-typo", "configs", filter_with("scale.lrr=1"), "has no key 'lrr'; did you mean 'lr'"),
    Case("override-unreadable", "configs", filter_with("filter.=3"), "cannot read the override 'filter.=3'"),
    Case("threshold-and-fraction", "configs", filter_with("filter.threshold=0.25"),
         "give exactly one of threshold= or fraction="),
    Case("fraction-not-a-number", "configs", filter_with("filter.fraction=abc"), "fraction='abc' has type str"),
    Case("fraction-bool", "configs", filter_with("filter.fraction=true"), "fraction=true has type bool"),
    Case("fraction-zero", "configs", filter_with("filter.fraction=0"), "fraction=0.0 must be in (0, 1]"),
    Case("fraction-above-one", "configs", filter_with("filter.fraction=1.5"), "fraction=1.5 must be in (0, 1]"),
    Case("executor-param-type", "configs", filter_with("executor.workers=abc"),
         "workers='abc' has type str, expected int"),
    Case("scale-param-type", "configs", run_cmd("scale.lr=abc"), "scale 'toy': lr='abc' is not a float"),
    Case("run-eval-sets-missing", "configs", run_cmd(), "eval task folder(s) missing under"),
    Case("plugin-missing", "configs", filter_with("plugins=[missing.py]"), "plugin missing.py: no such file"),
    Case("plugin-syntax-error", "configs", plugin("def broken(:\n"), ("bad_plugin.py", "syntax")),
    Case("plugin-indentation-error", "configs", plugin("def f():\nreturn 1\n"),
         ("bad_plugin.py, line 2", "indentation error")),
    Case("plugin-raises", "configs", plugin("import os\nraise RuntimeError('boom')\n"),
         ("bad_plugin.py, line 2", "RuntimeError: boom")),
    Case("plugin-missing-dependency", "configs", plugin("import no_such_dependency_here\n"),
         ("bad_plugin.py, line 1", "install 'no_such_dependency_here'")),
    Case("plugin-not-a-module", "configs", filter_with("plugins=[no_such_module_here]"),
         "no module named 'no_such_module_here'"),
    # command-line arguments
    Case("seed-option-not-a-number", "arguments", lambda tmp: reshard_cmd(tmp, tmp, tmp / "s.npy", "--seed", "x"),
         "argument --seed: 'x' is not a seed"),
    Case("seed-option-negative", "arguments", train_on(lambda s: None, "--seed", "-1"),
         "argument --seed: '-1' is not a seed"),
    Case("out-is-a-file-filter", "arguments", with_out_a_file(filter_with()), "out is a file"),
    Case("out-is-a-file-reshard", "arguments",
         with_out_a_file(lambda tmp: reshard_cmd(tmp, tiny_pool(tmp), tmp / "s.npy")), "out is a file"),
    Case("out-is-a-file-train", "arguments", with_out_a_file(train_on(lambda s: None)), "out is a file"),
    Case("out-is-a-file-evaluate", "arguments",
         with_out_a_file(evaluate_with("--model", "siftbench-tiny", "--out", "{tmp}/out")), "out is a file"),
    Case("out-inside-a-file", "arguments",
         with_out_a_file(lambda tmp: ["filter", str(metadata_pool(tmp)), "--out", str(tmp / "out" / "sub"), *CLIP]),
         "is inside"),
    Case("out-missing", "arguments", lambda tmp: ["filter", str(metadata_pool(tmp)), *CLIP],
         "required: --out"),
    Case("unknown-command", "arguments", lambda tmp: ["filtre", str(tmp)], "invalid choice: 'filtre'"),
    Case("count-zero", "arguments", lambda tmp: ["embed", str(tmp), "--model", "x", "--batch-size", "0"],
         "argument --batch-size: 0 is below 1"),
    Case("count-not-a-number", "arguments", lambda tmp: ["bench", "--rows", "many"],
         "argument --rows: 'many' is not a whole number"),
    Case("seeds-list", "arguments", lambda tmp: ["baselines", "--seeds", "0", "x"], "'x' is not a seed"),
    Case("train-scale-typo", "arguments", train_on(lambda s: None, "--scale", "tinyy"), "did you mean 'tiny'"),
    Case("evaluate-model-missing-json", "arguments", evaluate_with("--model", "nope.json"),
         "architecture file nope.json does not exist"),
    Case("evaluate-checkpoint-missing", "arguments",
         lambda tmp: ["evaluate", "--model", "siftbench-tiny", "--checkpoint", str(tmp / "gone.pt")],
         "gone.pt: no such file"),
    Case("evaluate-suite-typo", "arguments", evaluate_with("--model", "siftbench-tiny", "--suite", "wrld"),
         "did you mean 'world'"),
    Case("evaluate-run-bad-results", "arguments", run_folder("results.json", "{oops"),
         "results.json: not a results file"),
    Case("evaluate-run-bad-config", "arguments", run_folder("config.yaml", "scale: [toy\n"), "config.yaml: unreadable"),
    Case("download-no-metadata", "arguments", lambda tmp: ["download", str(tmp / "meta"), "--out", str(tmp / "out")],
         "metadata folder"),
    # leaderboard submissions
    Case("submit-empty-subset", "leaderboard", submission(lambda run: replace_subset(run, np.zeros(0, UID_DTYPE))),
         "subset.npy holds no uids", leaderboard=True),
    Case("submit-no-results", "leaderboard", submission(no_results), "no results.json", leaderboard=True),
    Case("submit-pickled-subset", "leaderboard",
         submission(lambda run: replace_subset(run, np.array([1, "x"], dtype=object), allow_pickle=True)),
         "never unpickles", leaderboard=True),
    Case("submit-truncated-subset", "leaderboard",
         submission(lambda run: (run / "subset.npy").write_bytes((run / "subset.npy").read_bytes()[:-7])),
         "unreadable .npy", leaderboard=True),
    Case("submit-results-not-json", "leaderboard",
         submission(lambda run: (run / "results.json").write_text("{oops")), "results.json is not valid json",
         leaderboard=True),
    Case("submit-nan-score", "leaderboard",
         submission(lambda run: edit_results(run, lambda r: r["tasks"]["shapes"].update(score=float("nan")))),
         "task 'shapes' score nan", leaderboard=True),
    Case("submit-store-not-a-store", "leaderboard", submission(bad_store, store="store.sqlite"),
         "not a leaderboard store", leaderboard=True),
    Case("show-scale-typo", "leaderboard", leaderboard_cmd("leaderboard", "show", "--scale", "tinyy"),
         "unknown scale 'tinyy'. did you mean 'tiny'"),
    Case("show-no-store", "leaderboard", leaderboard_cmd("leaderboard", "show", "--store", "{tmp}/none.sqlite"),
         "no leaderboard store at"),
    Case("export-out-is-a-folder", "leaderboard",
         leaderboard_cmd("leaderboard", "export", "--out", "{tmp}/made", folder="made"), "made is a folder"),
    Case("build-out-is-a-file", "leaderboard",
         with_out_a_file(leaderboard_cmd("leaderboard", "build", "--out", "{tmp}/out")), "out is a file"),
]


# ---------------------------------------------------------------------------------------------- the checks


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` but the command's output folder ``root/out``: (is a folder, size, mtime)."""
    out = root / "out"
    seen = {}
    for path in root.rglob("*"):
        if (out in path.parents or (path == out and path.is_dir())) or "__pycache__" in path.parts:
            continue
        stat = path.lstat()
        seen[str(path.relative_to(root))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return seen


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a default output (./leaderboard.sqlite, ./site) would land here and be seen
    argv = case.build(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()  # what building the input printed
    code = leaderboard_cli.main(argv, submit_kwargs=FAKES) if case.leaderboard else cli.main(argv)
    out, err = capsys.readouterr()

    assert "Traceback" not in err, err
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    lines = err.splitlines()
    expect = (case.expect,) if isinstance(case.expect, str) else case.expect or ()
    if case.code:
        assert len(lines) == 1 and lines[0].startswith("siftbench: error: "), f"not one error line:\n{err}"
    else:
        assert all(line.startswith("siftbench: warning: ") for line in lines), err
        assert len(lines) == (1 if expect else 0), err
    for words in expect:
        assert words.lower() in err.lower(), f"{words!r} not in {err!r}"
    assert snapshot(tmp_path) == before, "the command wrote outside its output (tmp_path/out)"
    if case.code and (tmp_path / "out").is_dir():
        left = [p for name in FINISHED for p in (tmp_path / "out").rglob(name)]
        assert not left, f"a failed command left finished-looking output: {left}"
    if case.check:
        case.check(tmp_path, out)


def test_the_table_is_wide() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.family for c in CASES} == {"metadata", "embeddings", "tars", "subsets", "configs", "arguments",
                                         "leaderboard"}  # fmt: skip


def test_docs_list_every_case() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    assert [c.id for c in CASES if f"| {c.id} | {c.family} |" not in docs] == []


# The inputs the cases damage work when they are not damaged, so each case fails for its own reason.


def test_the_undamaged_inputs_work(tmp_path: Path, capsys) -> None:
    def fresh(name: str) -> Path:
        (tmp_path / name).mkdir()
        return tmp_path / name

    assert cli.main(filter_cmd(fresh("metadata"), metadata_pool(tmp_path / "metadata"))) == 0
    assert cli.main(damaged_embeddings(lambda npz, arrays: None)(fresh("embeddings"))) == 0
    assert cli.main(damaged_tar(lambda tar: None)(fresh("tars"))) == 0
    assert json.loads((tmp_path / "tars" / "out" / "manifest.json").read_text())["num_samples"] == 16
    assert leaderboard_cli.main(submission(lambda run: None)(fresh("submit")), submit_kwargs=FAKES) == 0
    assert capsys.readouterr().err == ""


def test_a_user_error_in_a_real_process(tmp_path: Path) -> None:
    """The same contract across a process boundary: exit status 2 and one line, as a shell sees them."""
    argv = filter_cmd(tmp_path, metadata_pool(tmp_path), "seed=abc")
    done = subprocess.run([sys.executable, "-m", "siftbench.benchmark.experiment.cli", *argv],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["siftbench: error: seed='abc' is not a seed; give a whole number >= 0, "
                                        "e.g. seed=0"]  # fmt: skip
    assert not (tmp_path / "out").exists()
