"""open_clip models by name: DataComp's architectures from open_clip, ours from configs/model/*.json.

An architecture is a JSON file (add a model = add a file); weights are named separately: a pretrained
tag found in the local cache, or a checkpoint path (open_clip_train's ``epoch_N.pt`` or a plain state dict).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from .core.errors import ConfigError, StageError

MODEL_CONFIG_DIR = Path(str(files("siftbench.configs") / "model"))


def register_model_configs() -> list[str]:
    """Make siftbench's architectures known to open_clip (idempotent). Returns their names."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def load_model(arch: str, checkpoint: str | Path | None = None, pretrained: str | None = None, device: str = "cpu"):
    """Return (model, preprocess, tokenizer) in eval mode.

    ``checkpoint`` is a local file; ``pretrained`` a tag whose weights are already in open_clip's cache
    (nothing is downloaded: HF_HUB_OFFLINE is honoured by open_clip).
    """
    import open_clip

    register_model_configs()
    if arch not in open_clip.list_models():
        raise ConfigError(f"unknown architecture {arch!r}; open_clip knows e.g. ViT-B-32, and siftbench adds "
                          f"{register_model_configs()}")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    if checkpoint is not None:
        state = _read_state_dict(Path(checkpoint))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise StageError(
                f"{checkpoint}: does not fit architecture {arch!r} ({str(e).splitlines()[0]}...); "
                "pass the --model the checkpoint was trained with"
            ) from None
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise StageError(f"{path}: no such checkpoint file")
    # weights_only: a checkpoint is data, never code to unpickle and run.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    return {k.removeprefix("module."): v for k, v in state.items()}
