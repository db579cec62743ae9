"""ToTensor + Normalize of uint8 pictures as a table lookup: the same numbers on every device.

A uint8 channel value has 256 possibilities, so ``Normalize(mean, std)(ToTensor()(picture))`` is a
(channels, 256) table, made here once on the CPU by torchvision's own float ops in their order (float,
/255, -mean, /std). Looking pixels up in it gives bit for bit what torchvision gives, on the CPU or on a
GPU, where recomputing would not: CUDA divides by a scalar as a multiplication by its reciprocal.
Used by the embed stage (normalising on the GPU) and the training launcher (uint8 from loader workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def normalize_table(mean: Sequence[float], std: Sequence[float], dtype: Any = None) -> Any:
    """The (channels, 256) table of ToTensor + Normalize for each uint8 value, computed on the CPU."""
    import torch  # heavy, optional (siftbench[ml])

    dtype = dtype or torch.get_default_dtype()
    values = torch.arange(256).to(dtype).expand(len(mean), 256).contiguous().div(255)
    return values.sub_(torch.as_tensor(mean, dtype=dtype).view(-1, 1)).div_(
        torch.as_tensor(std, dtype=dtype).view(-1, 1)
    )


def normalize_uint8(pixels: Any, table: Any) -> Any:
    """(B, C, H, W) uint8 pixels -> (B, C, H, W) floats from ``table``, on the pixels' device."""
    import torch  # heavy, optional (siftbench[ml])

    channels = pixels.shape[1]
    table = table.to(pixels.device, non_blocking=True)
    offsets = torch.arange(channels, dtype=torch.int32, device=pixels.device).view(1, -1, 1, 1) * 256
    index = (pixels.to(torch.int32) + offsets).reshape(-1)
    return table.reshape(-1).index_select(0, index).view(pixels.shape)
