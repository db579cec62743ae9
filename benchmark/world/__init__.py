"""The embedded synthetic world: a seeded pool in DataComp's layout with planted, known defects.

    from siftbench.benchmark.world import ensure_world
    world = ensure_world("toy")                # or a dict / DictConfig merged over configs/world/default.yaml
    world.pool_dir, world.reference_dir, world.eval_dir
    world.diagnostics(subset)                 # per-defect recall, precision, contamination kept, ...

Modules: config (YAML defaults + checks), sampling (what each sample is), captions (text and text
defects), render (pixels), suite (eval tasks), layout (files on disk), generate (once, atomically),
world (the handle, oracle subset and diagnostics).
"""

from .config import DEFECTS, config_hash, resolve_config
from .generate import default_cache_dir, ensure_world, generate_world
from .world import WORLD_VERSION, World, WorldError

__all__ = [
    "DEFECTS",
    "WORLD_VERSION",
    "World",
    "WorldError",
    "config_hash",
    "default_cache_dir",
    "ensure_world",
    "generate_world",
    "resolve_config",
]
