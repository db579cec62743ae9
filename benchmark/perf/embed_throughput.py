"""How fast the embed stage runs end to end, against the model alone on the same batches."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from string import hexdigits
from typing import Any

from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.stages.embed import EmbedModel, _collect_stats, embed_tars
from siftbench.benchmark.stages.embed.preprocess import AsciiFastTokenizer, BatchPreprocess, _decode_shard

_HEX = frozenset(hexdigits)


def benchmark_embed_throughput(
    pool_root: str | Path,
    arch: str,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    max_shards: int | None = None,
    num_workers: int = 0,
    rounds: int = 5,
) -> dict[str, Any]:
    """Pairs/s of the whole stage (read, decode, preprocess, model, write) against the model alone on
    in-memory tensors, in this process; ``ratio`` = stage / model.

    The reference runs on the pool's own first batches, decoded into memory beforehand (a constant
    image is not the same work: its cost differs from real pictures'), for as many batches as the stage
    runs. The two alternate for ``rounds`` rounds, so a machine that slows down or speeds up midway
    (noisy neighbours, CPU steal) weighs on both; the ratio is over the summed times, with each round's
    own ratio reported too. The stage writes into a temporary folder, so the pool is left as it was.
    """
    import torch  # heavy, optional (siftbench[ml])

    spec = EmbedModel(arch, None if checkpoint is None else str(checkpoint), pretrained, device)
    model, preprocess, tokenizer = bundle = spec.load()
    tars = sorted((Path(pool_root) / "shards").glob("*.tar"))[:max_shards]
    if not tars:
        raise PoolError(f"pool {pool_root}: no shards/*.tar to embed")
    model = model.to(device).eval()
    batcher, fast_tokenizer = BatchPreprocess(preprocess), AsciiFastTokenizer.wrap(tokenizer)
    in_memory = []
    for item in _decode_shard(0, tars[0], batcher, fast_tokenizer, batch_size):
        if item[0] == "batch" and item[3] is not None and item[5] is not None:
            in_memory.append((item[3].to(device), item[5].to(device)))
        if len(in_memory) == 8:
            break
    if not in_memory:
        raise PoolError(f"{tars[0]}: no sample with both an image and a caption to measure the model on")
    # What the stage feeds the model on this device must be what the CPU preprocess gives, bit for bit.
    later = BatchPreprocess(preprocess, normalize_later=torch.device(device).type == "cuda")
    first = next(item for item in _decode_shard(0, tars[0], later, fast_tokenizer, batch_size) if item[3] is not None)
    same_inputs = bool(torch.equal(later.to_device(first[3], device).cpu(), in_memory[0][0].cpu()))

    def model_only(batches: int) -> float:
        clock = time.perf_counter()
        with torch.no_grad():
            for i in range(batches):
                images, tokens = in_memory[i % len(in_memory)]
                torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1).cpu()
                torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu()
        return time.perf_counter() - clock

    model_only(2)  # warm-up: allocator, thread pool, lazy inits
    stage_times, model_times, pairs, model_seconds = [], [], 0, 0.0
    for _ in range(max(1, rounds)):
        with tempfile.TemporaryDirectory() as tmp:
            clock = time.perf_counter()
            embed_tars(bundle, tars, Path(tmp), batch_size=batch_size, device=device,
                       num_workers=num_workers, progress=False)  # fmt: skip
            stage_times.append(time.perf_counter() - clock)
            stats = _collect_stats(Path(tmp), tars)
        pairs, model_seconds = stats["samples"], model_seconds + stats["model_seconds"]
        batches = max(1, round(pairs / batch_size))
        model_times.append(model_only(batches) * pairs / (batches * batch_size))  # the model alone, for `pairs`
    stage_rate = pairs * len(stage_times) / sum(stage_times)
    model_rate = pairs * len(model_times) / sum(model_times)
    return {
        "arch": arch,
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "shards": len(tars),
        "pairs": pairs,
        "rounds": len(stage_times),
        "stage_seconds": round(sum(stage_times), 3),
        "stage_model_seconds": round(model_seconds, 3),
        "stage_pairs_per_s": stage_rate,
        "in_memory_pairs_per_s": model_rate,
        "ratio": stage_rate / model_rate,
        "ratio_per_round": [round(m / s, 3) for s, m in zip(stage_times, model_times, strict=True)],
        "stage_inputs_equal_cpu_preprocess": same_inputs,
    }
