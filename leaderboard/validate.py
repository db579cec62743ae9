"""Submission rules: a run is accepted only when its comparison with the others is fair and safe.

Each rule has a short name; a refusal names the run, the rule, what is wrong and how to fix it. Nothing
submitted is unpickled or executed: results.json is parsed as JSON, subset.npy is loaded with
``allow_pickle=False``, and the run's config.yaml is never read. The checkpoint is only opened by the
re-evaluation step, which must load weights without unpickling (``torch.load(weights_only=True)``).

| rule | refuses |
|---|---|
| results-file | no results.json, not JSON, or a field the leaderboard needs is missing or mistyped |
| results-schema | a results schema version this siftbench does not read |
| track | a track other than ``filtering`` or ``byod`` |
| name | an empty, over-long or control-character submission name |
| suite-complete | a shipped-suite task without a result, a result for a task it lacks, or an unshipped suite |
| task-version | a task evaluated at another version than the shipped suite has now |
| task-score | a task whose score is not its main metric, or an ``average`` that is not the mean of the scores |
| scale | an unknown scale, or hyperparameters that differ from the scale's (lr, batch, samples seen, ...) |
| subset-format | subset.npy missing, pickled, not a 1-D sorted ``u8,u8`` array, or empty |
| subset-sha256 | the sha256 recorded in results.json is not the sha256 of subset.npy |
| subset-size | the recorded size or unique count is not the file's |
| pool | (filtering) no pool, or not the pool results.json names (world hash / metadata fingerprint) |
| subset-in-pool | (filtering) uids that are not in the pool |
| checkpoint | (toy, tiny) the checkpoint is missing or lies outside the run folder |
| reevaluation | (toy, tiny) re-evaluating the checkpoint differs from the submitted scores by more than 1e-4 |
| consistent-runs | runs submitted under one name that differ in scale, world, pool, suite or filter config |
| name-taken | the name is already on that board with another filter config |
| seed-taken | the entry already has a different run for that seed |
| run-elsewhere | the same run is already on the board under another name |
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core import scales
from siftbench.benchmark.core.atomic import atomic_path
from siftbench.benchmark.core.errors import ConfigError, SiftbenchError
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.results import SCHEMA_VERSION, ResultsError, validate_results
from siftbench.benchmark.core.uids import file_sha256, isin_uids, read_subset, uids_to_hex
from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
from siftbench.eval_suite import load_suite
from siftbench.eval_suite.suite import shipped_suite_versions

TRACKS = ("filtering", "byod")
CPU_SCALES = ("toy", "tiny")
REEVAL_TOLERANCE = 1e-4
MAX_NAME_LENGTH = 120

ScaleChecker = Callable[[Mapping[str, Any], str], list[str]]
SuiteVersions = Callable[[str], Mapping[str, Any] | None]
# (run_dir, results, eval_root) -> {task: main-metric score}; must never unpickle the checkpoint.
# eval_root is the operator's copy of the suite's datasets (never a path taken from the submission).
Reevaluator = Callable[[Path, Mapping[str, Any], Path | None], Mapping[str, float]]


class SubmissionRefused(SiftbenchError):
    """One rule refused one submitted run; nothing was written."""

    def __init__(self, where: str | Path, rule: str, problem: str, fix: str):
        self.where, self.rule, self.problem, self.fix = str(where), rule, problem, fix
        super().__init__(f"{where}: refused by rule '{rule}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class BoardKey:
    """What must be equal for two results to share a ranking."""

    scale: str
    track: str
    world_version: str
    world_hash: str
    pool_hash: str
    suite_name: str
    suite_version: str
    suite_hash: str


@dataclass
class CheckedRun:
    """A run directory that passed every rule, with what the store records about it."""

    run_dir: Path
    results: dict[str, Any]
    board: BoardKey
    suite_tasks: dict[str, str]
    run_key: str
    results_sha256: str
    subset_sha256: str
    subset_size: int
    subset_unique: int
    filter_config_json: str
    filters_json: str
    seed: int
    eval_copies_kept: int | None
    reevaluated: bool
    reeval_max_abs_diff: float | None
    notes: list[str] = field(default_factory=list)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_name(name: str) -> str:
    """Names are shown as text everywhere, so any printable string is fine; control characters are not."""
    if not isinstance(name, str) or not name.strip():
        raise SubmissionRefused("--name", "name", "the submission name is empty", "pass --name 'my filter'")
    if len(name) > MAX_NAME_LENGTH:
        raise SubmissionRefused(
            "--name", "name", f"the name has {len(name)} characters", f"use at most {MAX_NAME_LENGTH}"
        )
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise SubmissionRefused(
            "--name", "name", "the name contains control characters", "use printable text"
        )
    return name.strip()


def check_track(track: str) -> str:
    if track not in TRACKS:
        raise SubmissionRefused(
            "--track",
            "track",
            f"unknown track {track!r}",
            "use --track filtering (a subset of the pool) or --track byod (bring your own data)",
        )
    return track


# ---------------------------------------------------------------------------------------------- scale


def same_value(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers (YAML 1.1 reads ``5e-4`` as a string), else as text."""
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0)


def shipped_check_scale(resolved: Mapping[str, Any], name: str) -> list[str]:
    """Differences from ``configs/scale/<name>.yaml``, as the harness itself checks them before training."""
    try:
        return list(scales.check_scale(dict(resolved), name))
    except SiftbenchError as e:  # an unknown scale
        return [str(e)]


# ------------------------------------------------------------------------------------------- results


def _get(results: Mapping[str, Any], dotted: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value: Any = results
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise SubmissionRefused(
                where,
                "results-file",
                f"results.json has no field {dotted!r}",
                "re-run `siftbench evaluate` on the run directory with this siftbench version",
            )
        value = value[part]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SubmissionRefused(
            where,
            "results-file",
            f"field {dotted!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}",
            "re-run `siftbench evaluate` on the run directory",
        )
    return value


def load_run_results(run_dir: Path) -> tuple[dict[str, Any], str]:
    """Parse results.json (as JSON only) and check its schema; return it with its file's sha256."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise SubmissionRefused(
            run_dir,
            "results-file",
            "no results.json in the run folder",
            "pass the folder `siftbench run` made (runs/<name>/), after its evaluate stage finished",
        )
    raw = path.read_bytes()
    try:
        results = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubmissionRefused(
            run_dir, "results-file", f"results.json is not valid JSON ({e})", "re-run `siftbench evaluate`"
        ) from None
    version = results.get("schema_version") if isinstance(results, dict) else None
    if isinstance(results, dict) and version != SCHEMA_VERSION:
        raise SubmissionRefused(
            run_dir,
            "results-schema",
            f"results schema version {version!r}, this leaderboard reads {SCHEMA_VERSION}",
            "re-evaluate the checkpoint with this siftbench (`siftbench evaluate RUN_DIR`)",
        )
    try:
        validate_results(results, where="results.json")
    except ResultsError as e:
        raise SubmissionRefused(run_dir, "results-file", str(e), "re-run `siftbench evaluate`") from None
    return results, hashlib.sha256(raw).hexdigest()


def check_suite(
    results: Mapping[str, Any], run_dir: Path, reference: Mapping[str, Any] | None
) -> dict[str, str]:
    """Every task of the shipped suite has a result, at the version the suite has now."""
    suite = _get(results, "suite.name", str, run_dir)
    declared = {str(k): str(v) for k, v in _get(results, "suite.tasks", dict, run_dir).items()}
    if reference is None:
        raise SubmissionRefused(
            run_dir,
            "suite-complete",
            f"eval suite {suite!r} is not one this leaderboard knows (configs/eval/{suite}.yaml)",
            "evaluate with a shipped suite (`siftbench evaluate RUN_DIR eval=world`)",
        )
    current = {str(k): str(v) for k, v in reference.items()}
    tasks = results["tasks"]
    missing = sorted((set(current) | set(declared)) - set(tasks))
    if missing:
        raise SubmissionRefused(
            run_dir,
            "suite-complete",
            f"suite {suite!r} has task(s) {missing} but results.json has no result for them",
            "evaluate the checkpoint on the whole suite with every task's data present "
            "(`siftbench evaluate RUN_DIR`), not a subset of tasks",
        )
    extra = sorted(set(tasks) - set(current))
    if extra:
        raise SubmissionRefused(
            run_dir,
            "suite-complete",
            f"results for {extra}, which suite {suite!r} does not have",
            "submit results of the shipped suite only; re-run `siftbench evaluate`",
        )
    for task, version in current.items():
        got = str(tasks[task]["version"])
        if got != version or declared.get(task, version) != version:
            raise SubmissionRefused(
                run_dir,
                "task-version",
                f"task {task!r} was evaluated at version {got}, suite {suite!r} has version {version} now",
                "re-evaluate the checkpoint with this siftbench so every task runs at its current version "
                "(`siftbench evaluate RUN_DIR`)",
            )
    return current


def check_scores(results: Mapping[str, Any], run_dir: Path) -> None:
    """The ranked number must follow from the per-task metrics, so nobody can edit just the average."""
    scores = []
    for task, entry in results["tasks"].items():
        score = entry["score"]
        main = entry["metrics"].get(entry["main_metric"])
        if not _number(score) or not _number(main) or not same_value(score, main):
            raise SubmissionRefused(
                run_dir,
                "task-score",
                f"task {task!r} score {score!r} is not its main metric {entry['main_metric']} = {main!r}",
                "re-run `siftbench evaluate`; do not edit results.json",
            )
        scores.append(float(score))
    mean = sum(scores) / len(scores) if scores else float("nan")
    if not _number(results["average"]) or abs(float(results["average"]) - mean) > 1e-9:
        raise SubmissionRefused(
            run_dir,
            "task-score",
            f"average {results['average']!r} is not the mean of the task scores ({mean!r})",
            "re-run `siftbench evaluate`; do not edit results.json",
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_scale(results: Mapping[str, Any], run_dir: Path, checker: ScaleChecker) -> str:
    scale = _get(results, "scale.name", str, run_dir)
    hyper = _get(results, "scale.hyperparameters", dict, run_dir)
    problems = checker(hyper, scale)
    if problems:
        raise SubmissionRefused(
            run_dir,
            "scale",
            f"scale {scale!r}: " + "; ".join(problems),
            f"train with the scale's fixed hyperparameters (`siftbench run scale={scale}` without overriding "
            "them); filtering entries compete on data, never on the training recipe",
        )
    return scale


# -------------------------------------------------------------------------------------------- subset


def check_subset(results: Mapping[str, Any], run_dir: Path) -> tuple[np.ndarray, str, int]:
    """subset.npy is a plain sorted u8,u8 array whose sha256 and size are the recorded ones.

    Returns the uids, the file's sha256 and the number of distinct uids.
    """
    path = run_dir / "subset.npy"
    if not path.is_file():
        raise SubmissionRefused(
            run_dir,
            "subset-format",
            "no subset.npy in the run folder",
            "submit the run folder `siftbench run` made; it holds the subset.npy the model was trained on",
        )
    try:
        uids = read_subset(path)
    except SiftbenchError as e:
        raise SubmissionRefused(
            run_dir,
            "subset-format",
            str(e).replace(str(path), "subset.npy"),
            "write the subset with siftbench.benchmark.core.uids.write_subset (sorted, dtype u8,u8, no pickle)",
        ) from None
    if len(uids) == 0:
        raise SubmissionRefused(
            run_dir,
            "subset-format",
            "subset.npy holds no uids: a model trained on nothing says nothing about a filter",
            "submit a run whose filter kept at least one pair",
        )
    recorded = _get(results, "subset.sha256", str, run_dir)
    actual = file_sha256(path)
    if recorded.lower() != actual:
        raise SubmissionRefused(
            run_dir,
            "subset-sha256",
            f"results.json records subset sha256 {recorded[:16]}..., subset.npy has {actual[:16]}...",
            "submit the subset.npy this model was trained on, unchanged; if you changed the "
            "subset, re-run training and evaluation on it",
        )
    size = _get(results, "subset.size", int, run_dir)
    if size != len(uids):
        raise SubmissionRefused(
            run_dir,
            "subset-size",
            f"results.json records {size} uids, subset.npy has {len(uids)}",
            "re-run `siftbench evaluate` so results.json describes this subset",
        )
    unique = results["subset"].get("unique")
    n_unique = len(np.unique(np.ascontiguousarray(uids).view(np.dtype((np.void, 16))))) if len(uids) else 0
    if unique is not None and unique != n_unique:
        raise SubmissionRefused(
            run_dir,
            "subset-size",
            f"results.json records {unique} unique uids, subset.npy has {n_unique}",
            "re-run `siftbench evaluate` so results.json describes this subset",
        )
    return uids, actual, n_unique


def pool_uid_index(pool_root: Path, cache_dir: Path | None = None) -> np.ndarray:
    """Sorted unique uids of a pool, cached per metadata-file listing so big pools are read once."""
    files = sorted((pool_root / "metadata").glob("*.parquet"))
    stamp = canonical_json([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    cached = cache_dir / f"{sha256_text(str(pool_root.resolve()) + stamp)[:32]}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False)

    uids = Pool.open(pool_root).all_uids()
    index = np.unique(np.ascontiguousarray(uids).view(np.dtype((np.void, 16)))).view(uids.dtype)
    if cached is not None:
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.save(f, index, allow_pickle=False)
    return index


def pool_fingerprint(pool_root: Path) -> str:
    """What results.json's pool.hash records for a pool that is not the embedded world."""
    return Pool.open(pool_root).fingerprint()


def check_pool_identity(results: Mapping[str, Any], pool_root: Path, run_dir: Path) -> Path | None:
    """The pool the uids are checked against is the one the run (and so its board) names.

    For the embedded world, the world's manifest beside the pool must carry the recorded hash; returns
    that world's folder, whose eval/ holds the datasets to re-evaluate with.
    """
    recorded = str(_get(results, "pool.hash", (str, int), run_dir))
    world = results.get("world")
    fix = "pass --pool with the pool this run selected from (for the embedded world: <world>/pool)"
    if world:
        manifest_path = pool_root.parent / "world.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise SubmissionRefused(
                run_dir,
                "pool",
                f"results.json names world {world.get('hash')!r}, but {pool_root} is not a "
                "world's pool (no readable world.json beside it)",
                fix,
            ) from None
        have = str(manifest.get("content_hash"))
        if have != str(world.get("hash")) or have != recorded:
            raise SubmissionRefused(
                run_dir,
                "pool",
                f"the world at {pool_root.parent} has hash {have[:16]}, results.json records "
                f"world {str(world.get('hash'))[:16]} and pool {recorded[:16]}",
                fix,
            )
        return pool_root.parent
    have = pool_fingerprint(pool_root)
    if have != recorded:
        raise SubmissionRefused(
            run_dir,
            "pool",
            f"pool {pool_root} has fingerprint {have[:16]}, results.json records {recorded[:16]}",
            fix,
        )
    return None


def check_in_pool(uids: np.ndarray, index: np.ndarray, run_dir: Path, pool_root: Path) -> None:
    inside = isin_uids(uids, index)
    if not inside.all():
        outside = uids[~inside]
        shown = ", ".join(uids_to_hex(outside[:3]))
        raise SubmissionRefused(
            run_dir,
            "subset-in-pool",
            f"{len(outside)} of {len(uids)} uids are not in pool {pool_root} (first: {shown})",
            "the filtering track selects from the pool only: drop those uids, or submit "
            "with --track byod if you brought your own data",
        )


# ------------------------------------------------------------------------------------- re-evaluation


def checkpoint_path(results: Mapping[str, Any], run_dir: Path) -> Path:
    """The checkpoint, which must be a file inside the run folder (no ``..`` or absolute escapes)."""
    relative = _get(results, "model.checkpoint", str, run_dir)
    root = run_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise SubmissionRefused(
            run_dir,
            "checkpoint",
            f"model.checkpoint {relative!r} points outside the run folder",
            "keep the checkpoint inside the run folder and record its relative path",
        )
    if not path.is_file():
        raise SubmissionRefused(
            run_dir,
            "checkpoint",
            f"checkpoint {relative} does not exist",
            "submit the whole run folder, checkpoints/ included",
        )
    return path


def harness_reevaluate(run_dir: Path, results: Mapping[str, Any], eval_root: Path | None) -> dict[str, float]:
    """Re-run the harness's own evaluation on the submitted checkpoint (needs siftbench[ml]).

    The checkpoint is loaded with ``torch.load(weights_only=True)`` by ``models.load_model``: data, not code.
    """
    if eval_root is None:
        raise ConfigError(
            "no eval datasets to re-evaluate with: pass --suite-root (for the embedded world it is found "
            "beside the verified pool)"
        )

    suite = load_suite(results["suite"]["name"], root=eval_root)
    arch, checkpoint = results["model"]["arch"], checkpoint_path(results, run_dir)
    return task_scores(evaluate_checkpoint(arch, checkpoint, suite, progress=False))


def task_scores(out: Any) -> dict[str, float]:
    """{task: score} from whatever evaluate returns: a results dict, {task: entry} or {task: float}."""
    tasks = out.get("tasks", out) if isinstance(out, Mapping) else out
    return {t: float(e["score"] if isinstance(e, Mapping) else e) for t, e in tasks.items()}


def check_reevaluation(
    results: Mapping[str, Any], run_dir: Path, reevaluate: Reevaluator, eval_root: Path | None
) -> float:
    """Re-evaluate the checkpoint and compare every task score; return the largest difference."""
    checkpoint_path(results, run_dir)
    arch = _get(results, "model.arch", str, run_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", arch):
        raise SubmissionRefused(
            run_dir,
            "checkpoint",
            f"model.arch {arch!r} is not an architecture name",
            "record a registered architecture name, e.g. siftbench-tiny",
        )
    try:
        fresh = reevaluate(run_dir, results, eval_root)
    except ImportError as e:
        raise SubmissionRefused(
            run_dir,
            "reevaluation",
            f"cannot re-evaluate the checkpoint here ({e})",
            "install the ML stack (`pip install -e .[ml]`): toy and tiny results are re-evaluated on submit",
        ) from None
    except Exception as e:  # a damaged or hostile checkpoint fails in torch: a refusal, not a traceback
        raise SubmissionRefused(
            run_dir,
            "reevaluation",
            f"re-evaluation failed ({type(e).__name__}: {e})",
            "submit the checkpoint the results came from, as `siftbench run` saved it",
        ) from None
    diffs = {}
    for task, entry in results["tasks"].items():
        if task not in fresh:
            raise SubmissionRefused(
                run_dir,
                "reevaluation",
                f"re-evaluation produced no score for task {task!r}",
                "check that the suite the run names is the one installed here",
            )
        diffs[task] = abs(float(fresh[task]) - float(entry["score"]))
    worst = max(diffs.values(), default=0.0)
    if not worst <= REEVAL_TOLERANCE:
        bad = ", ".join(
            f"{t}: submitted {results['tasks'][t]['score']:.6f}, re-evaluated {float(fresh[t]):.6f}"
            for t, d in sorted(diffs.items())
            if not d <= REEVAL_TOLERANCE
        )
        raise SubmissionRefused(
            run_dir,
            "reevaluation",
            f"re-evaluating the checkpoint differs by more than {REEVAL_TOLERANCE} ({bad})",
            "submit results.json exactly as `siftbench evaluate` wrote it for this checkpoint (fp32 on CPU)",
        )
    return worst


# ---------------------------------------------------------------------------------------------- a run


def eval_copies_kept(results: Mapping[str, Any]) -> int | None:
    """Planted eval-image copies the subset kept (embedded world only; None when unknown).

    Read from ``diagnostics.contamination_kept`` ({task: {"planted", "kept"}}, what the world reports) or
    ``diagnostics.eval_copies_kept`` (a count, or {task: count}).
    """
    if not results.get("world"):
        return None
    diagnostics = results.get("diagnostics") or {}
    kept = diagnostics.get("contamination_kept", diagnostics.get("eval_copies_kept"))
    if isinstance(kept, Mapping):
        counts = [v.get("kept") if isinstance(v, Mapping) else v for v in kept.values()]
        kept = sum(c for c in counts if isinstance(c, int | float) and not isinstance(c, bool))
    return int(kept) if isinstance(kept, int | float) and not isinstance(kept, bool) else None


def check_run(
    run_dir: str | Path,
    track: str,
    *,
    pool_index: Callable[[Path], np.ndarray] | None = None,
    pool_root: Path | None = None,
    check_scale_fn: ScaleChecker = shipped_check_scale,
    suite_versions: SuiteVersions = shipped_suite_versions,
    reevaluate: Reevaluator | None = None,
    suite_root: Path | None = None,
) -> CheckedRun:
    """Apply every rule to one run folder; return what to store, or raise SubmissionRefused.

    ``suite_root``: the eval datasets for re-evaluation; by default the verified world's eval/ folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SubmissionRefused(
            run_dir,
            "results-file",
            "no such run folder",
            "pass the folder `siftbench run` made, e.g. runs/<name>/",
        )
    results, results_sha = load_run_results(run_dir)
    seed = _get(results, "run.seed", int, run_dir)
    scale = check_scale(results, run_dir, check_scale_fn)
    suite_name = _get(results, "suite.name", str, run_dir)
    suite_tasks = check_suite(results, run_dir, suite_versions(suite_name))
    check_scores(results, run_dir)
    uids, subset_sha, n_unique = check_subset(results, run_dir)
    world_root = None
    if track == "filtering":
        root = pool_root
        if root is None:
            recorded = Path(_get(results, "pool.path", str, run_dir))
            root = recorded if recorded.is_absolute() else run_dir / recorded
        if not (root / "metadata").is_dir():
            raise SubmissionRefused(
                run_dir,
                "pool",
                f"pool {root} has no metadata/ folder",
                "pass --pool POOL_DIR: the pool the filtering track selects from",
            )
        world_root = check_pool_identity(results, root, run_dir)
        index = pool_index(root) if pool_index else pool_uid_index(root)
        check_in_pool(uids, index, run_dir, root)
    reeval_diff = None
    if scale in CPU_SCALES and reevaluate is not None:
        eval_root = suite_root or (world_root / "eval" if world_root else None)
        reeval_diff = check_reevaluation(results, run_dir, reevaluate, eval_root)
    world = results.get("world") or {}
    board = BoardKey(
        scale=scale,
        track=track,
        world_version=str(world.get("version", "")),
        world_hash=str(world.get("hash", "")),
        pool_hash=str(_get(results, "pool.hash", (str, int), run_dir)),
        suite_name=suite_name,
        suite_version=str(_get(results, "suite.version", (str, int), run_dir)),
        suite_hash=str(_get(results, "suite.hash", str, run_dir)),
    )
    filter_config = _get(results, "filter.config", dict, run_dir)
    filters = results["filter"].get("filters", [])
    canonical = canonical_json(results)
    kept = eval_copies_kept(results)
    notes = []
    if kept:
        notes.append(f"the subset kept {kept} planted copies of eval images: the entry is flagged")
    return CheckedRun(
        run_dir=run_dir,
        results=results,
        board=board,
        suite_tasks=suite_tasks,
        run_key=sha256_text(canonical + subset_sha),
        results_sha256=results_sha,
        subset_sha256=subset_sha,
        subset_size=len(uids),
        subset_unique=n_unique,
        filter_config_json=canonical_json(filter_config),
        filters_json=canonical_json(filters),
        seed=seed,
        eval_copies_kept=kept,
        reevaluated=reeval_diff is not None,
        reeval_max_abs_diff=reeval_diff,
        notes=notes,
    )
