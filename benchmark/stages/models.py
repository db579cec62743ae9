"""open_clip models by name: DataComp's architectures from open_clip, ours from configs/model/*.json.

An architecture is a JSON file (add a model = add a file); weights are named separately: a pretrained
tag found in the local cache, or a checkpoint path (open_clip_train's ``epoch_N.pt`` or a plain state dict).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import ConfigError, StageError

MODEL_CONFIG_DIR = Path(str(files("siftbench.configs") / "model"))


def register_model_configs() -> list[str]:
    """Make siftbench's architectures known to open_clip (idempotent). Returns their names."""
    import open_clip  # heavy, optional (siftbench[ml])

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def resolve_architecture(arch: str) -> str:
    """The open_clip name of ``arch``: a registered name, or the path of an architecture JSON file (a custom
    open_clip config), which is registered under its file name."""
    import open_clip  # heavy, optional (siftbench[ml])

    register_model_configs()
    if arch.endswith(".json"):
        path = Path(arch)
        config = read_architecture_file(path)
        known = open_clip.get_model_config(path.stem)
        if known is not None and known != config:
            raise ConfigError(f"{arch}: open_clip already has a different architecture named {path.stem!r}; "
                              "rename the file")
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise ConfigError(f"unknown architecture {arch!r}; open_clip knows e.g. ViT-B-32, and siftbench adds "
                          f"{register_model_configs()} (or give the path of an architecture .json)")
    return arch


def read_architecture_file(path: str | Path) -> dict[str, Any]:
    """An open_clip architecture config read from ``path`` and checked (no open_clip import: it takes seconds)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"architecture file {path} does not exist; give an open_clip config JSON or a name")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); an architecture file is an open_clip model config") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ConfigError(f"{path}: an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    return config


def load_model(arch: str, checkpoint: str | Path | None = None, pretrained: str | None = None, device: str = "cpu"):
    """Return (model, preprocess, tokenizer) in eval mode.

    ``arch`` is an open_clip name or the path of an architecture JSON (see ``resolve_architecture``);
    ``checkpoint`` is a local file; ``pretrained`` a tag whose weights are already in the local cache, or a
    weights file (nothing is ever downloaded; see ``cached_pretrained``).
    """
    import open_clip  # heavy, optional (siftbench[ml])

    arch = resolve_architecture(arch)
    if pretrained is None:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    else:
        # Load the cached file by path (open_clip never reaches the network this way), with the
        # preprocessing and activation the tag's weights were trained with.
        weights, cfg = cached_pretrained(arch, pretrained)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device=device, force_quick_gelu=bool(cfg.get("quick_gelu")),
            image_mean=cfg.get("mean"), image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"))
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


def cached_pretrained(arch: str, tag: str, cache_dir: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """(local weights file, open_clip's config of the tag) for pretrained ``tag`` of ``arch``.

    Looks only where open_clip would have downloaded the weights to (the Hugging Face cache, or
    ``~/.cache/clip`` for URL weights) and downloads nothing; a path to a weights file is taken as it is.
    """
    import open_clip  # heavy, optional (siftbench[ml])

    if Path(tag).is_file():
        return str(tag), {}
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"architecture {arch!r} has no pretrained tag {tag!r}; its tags: {tags or 'none'}. "
                          "Or pass --checkpoint with a local weights file")
    looked = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache  # heavy, optional (siftbench[ml])

        repo, filename = cfg["hf_hub"].rstrip("/"), "open_clip_pytorch_model.bin"
        if not cfg["hf_hub"].endswith("/"):
            repo, filename = cfg["hf_hub"].rsplit("/", 1)
        # open_clip prefers a safetensors file next to the .bin/.pth
        for name in (f"{filename.rsplit('.', 1)[0]}.safetensors".replace("pytorch_model", "model"), filename):
            hit = try_to_load_from_cache(repo, name, cache_dir=None if cache_dir is None else str(cache_dir))
            if isinstance(hit, str):
                return hit, cfg
        looked.append(f"the Hugging Face cache ({repo}/{filename})")
    if cfg.get("url"):
        path = Path(cache_dir or "~/.cache/clip").expanduser() / cfg["url"].rsplit("/", 1)[-1]
        if path.is_file():
            return str(path), cfg
        looked.append(str(path))
    raise StageError(
        f"weights of {arch} {tag!r} are not in the local cache (looked in {' and '.join(looked)}); nothing is "
        f"downloaded here. Fetch them where there is network, e.g. python -c \"import open_clip; "
        f"open_clip.create_model('{arch}', pretrained='{tag}')\", and copy the cache over, or pass --checkpoint FILE"
    )


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch  # heavy, optional (siftbench[ml])

    if not path.is_file():
        raise StageError(f"{path}: no such checkpoint file")
    # weights_only: a checkpoint is data, never code to unpickle and run.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    return {k.removeprefix("module."): v for k, v in state.items()}
