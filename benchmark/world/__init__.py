"""The embedded synthetic world: a seeded pool in DataComp's layout with planted, known defects.

    from siftbench.benchmark.world import ensure_world
    world = ensure_world("toy")         # a config name, a dict or a Hydra DictConfig over default.yaml
    world.pool_dir, world.reference_dir, world.eval_dir
    world.diagnostics(subset)           # per-defect recall, removal precision, contamination kept, ...

Each pool sample carries at most one defect (ground_truth.parquet at the world root, never under
pool/): misaligned, wrong_colour, wrong_shape, near_synonym, spam, non_english, exact_duplicate,
near_duplicate, degenerate, eval_copy. A duplicate's source stays "clean", so the oracle filter
(filters/oracle.py) keeps one member of every duplicate group. Identical configs give byte-identical
worlds on any worker count.

Modules: config (YAML defaults + checks), sampling (what each sample is), captions (text and text
defects), render (pixels), suite (eval tasks), layout (files on disk), generate (once, atomically),
world (the handle and diagnostics), source (the world as a pool source for the runner), scorer
(its CLIP scoring model).
"""

from .config import DEFECTS, config_hash, resolve_config
from .generate import default_cache_dir, ensure_world, generate_world
from .source import WorldSource
from .world import WORLD_VERSION, World, WorldError

__all__ = [
    "DEFECTS",
    "WORLD_VERSION",
    "World",
    "WorldError",
    "WorldSource",
    "config_hash",
    "default_cache_dir",
    "ensure_world",
    "generate_world",
    "resolve_config",
]
