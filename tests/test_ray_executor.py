"""Pool stages on a local Ray instance give byte-identical outputs to the local executor."""

import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from siftbench.benchmark.core.errors import PoolError  # noqa: E402
from siftbench.benchmark.core.executors import LocalExecutor, RayExecutor, make_executor, map_with_state  # noqa: E402
from siftbench.benchmark.core.uids import read_subset  # noqa: E402
from siftbench.benchmark.perf.bench import make_metadata_pool  # noqa: E402
from siftbench.benchmark.stages.select import run_filter  # noqa: E402

FILTER = {
    "name": "clip_then_random",
    "combine": "sequence",
    "steps": [
        {"name": "clip_score", "column": "clip_b32_similarity_score", "fraction": 0.5},
        {"name": "random", "fraction": 0.5},
    ],
}


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance for the whole module (start-up costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Ray's workers cannot import this test module: ship its helper functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield RayExecutor(progress=False)
    ray.shutdown()


def test_filter_on_ray_writes_the_same_subset_bytes(tmp_path, local_ray):
    pool = make_metadata_pool(tmp_path / "pool", 6_000, files=6, seed=3)
    local = run_filter(pool, FILTER, tmp_path / "local", seed=7, executor=LocalExecutor(workers=2, progress=False))
    on_ray = run_filter(pool, FILTER, tmp_path / "ray", seed=7, executor=local_ray)
    want = (tmp_path / "local" / "subset.npy").read_bytes()
    assert (tmp_path / "ray" / "subset.npy").read_bytes() == want
    assert on_ray["kept"] == local["kept"] == len(read_subset(tmp_path / "ray" / "subset.npy")) == 1_500
    assert [s["dropped"] for s in on_ray["steps"]] == [s["dropped"] for s in local["steps"]]


def test_results_in_item_order_and_task_errors_keep_their_type(local_ray):
    assert local_ray.map(abs, [-3, 2, -1, 0]) == [3, 2, 1, 0]
    with pytest.raises(PoolError, match="shard 2 is broken"):
        local_ray.map(_fail_on_two, [1, 2, 3])


def test_stateful_map_builds_state_once_per_actor(local_ray):
    executor = RayExecutor(actors=1, progress=False)
    # One actor: its state is built once and sees every item, in order.
    assert map_with_state(executor, list, _append, [1, 2, 3]) == [[1], [1, 2], [1, 2, 3]]
    # The same call on the local executor (state cached per process).
    assert map_with_state(LocalExecutor(progress=False), _fresh_list, _append, [4, 5])[-1][-2:] == [4, 5]


def test_embed_on_ray_actors_and_reshard_on_ray_tasks_match_local(tmp_path, local_ray, one_torch_thread):
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from pool_factory import make_tiny_pool

    from siftbench.benchmark.core.uids import hex_to_uids, sort_uids
    from siftbench.benchmark.stages.embed import embed_pool
    from siftbench.benchmark.stages.models import load_model
    from siftbench.benchmark.stages.reshard import reshard

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(load_model("siftbench-tiny")[0].state_dict(), checkpoint)
    outputs = {}
    # One embed actor: a Ray worker runs torch on one thread, as this process does here, so the fp32
    # similarity is bit-identical too (thread count changes float summation order).
    for name, executor in (("local", None), ("ray", RayExecutor(actors=1, progress=False))):
        pool = tmp_path / name
        uids = make_tiny_pool(pool, n_shards=3, per_shard=8)
        stats = embed_pool(pool, "siftbench-tiny", "tiny", checkpoint=checkpoint, batch_size=5, progress=False,
                           executor=executor)
        assert stats["shards_embedded_now"] == 3 and stats["embedded"] == 24
        subset = sort_uids(np.concatenate([hex_to_uids(uids[::3]), hex_to_uids(uids[:4])]))  # 4 repeated
        shard_stats = reshard(pool, subset, tmp_path / f"{name}-shards", seed=1, samples_per_shard=7,
                              progress=False, executor=executor or LocalExecutor(workers=2, progress=False))
        assert shard_stats["num_samples"] == len(subset) == 12
        outputs[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"{name}-shards").glob("*.tar"))}
        for path in sorted((pool / "embeddings" / "tiny").glob("*.npz")):  # zip entries carry a timestamp
            with np.load(path, allow_pickle=False) as z:
                outputs[name].update({f"{path.name}:{k}": z[k].tobytes() for k in z.files})
    assert len(outputs["local"]) == 2 + 3 * 4  # 12 subset rows at 7 per shard -> 2 tars; 3 npz of 4 arrays
    assert outputs["ray"] == outputs["local"]


def test_make_executor_reads_the_config_group():
    from siftbench.benchmark.experiment.config import compose_config, to_dict

    executor = make_executor(to_dict(compose_config(["executor=ray", "executor.num_cpus=2"]).executor))
    assert isinstance(executor, RayExecutor) and executor.num_cpus == 2 and executor.address is None


def _append(state: list, item: int) -> list:
    state.append(item)
    return list(state)


def _fresh_list() -> list:
    return []


def _fail_on_two(item: int) -> int:
    if item == 2:
        raise PoolError("shard 2 is broken")
    return item
