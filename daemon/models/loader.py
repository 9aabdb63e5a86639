"""Find a checkpoint, build our model for it and fill the model from safetensors by name."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vlmctl.daemon.models.layers import MergedLinear
from vlmctl.daemon.models.registry import model_class

logger = logging.getLogger(__name__)

_ALWAYS_IGNORED = (r"\.position_ids$", r"rotary_emb\.inv_freq$")
_CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


class WeightsError(ValueError):
    """The checkpoint's tensors do not match the model its config describes."""


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id through the huggingface_hub cache.

    With HF_HUB_OFFLINE=1 only the cache is consulted, so cached models load offline.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model folder?")
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the model's folder or a hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), allow_patterns=_CHECKPOINT_PATTERNS))
    except Exception as exc:  # the hub client raises many types; all mean "not found"
        raise FileNotFoundError(
            f"model {str(model)!r} is neither a local folder nor a hub id available here "
            f"(offline: only cached models load): {exc}"
        ) from exc


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Build modules without random init: every weight is overwritten from the checkpoint."""
    classes = (nn.Linear, nn.Embedding, nn.Conv2d, nn.LayerNorm)
    saved = {cls: cls.reset_parameters for cls in classes}
    try:
        for cls in classes:
            cls.reset_parameters = lambda self: None  # type: ignore[method-assign]
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn  # type: ignore[method-assign]


def build_model(config, path: Path, dtype: torch.dtype, device: torch.device, max_positions: int) -> nn.Module:
    cls = model_class(config)
    default_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with _skip_init(), torch.device(device):
            model = cls(config, max_positions)
    finally:
        torch.set_default_dtype(default_dtype)
    load_weights(model, path)
    model.eval().requires_grad_(False)
    return model


def _iter_checkpoint(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path} holds no *.safetensors files (.bin checkpoints are not supported)")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def load_weights(model: nn.Module, path: Path) -> None:
    """Copy every checkpoint tensor into the parameter of the same name.

    Raises WeightsError naming the tensor when one is missing, unexpected or mis-shaped.
    """
    params = dict(model.named_parameters())
    shards: dict[str, tuple[MergedLinear, str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, MergedLinear):
            parent = module_name.rsplit(".", 1)[0]
            for shard in module.shard_names:
                shards[f"{parent}.{shard}"] = (module, shard)
    merged_names = {name for name, module in model.named_modules() if isinstance(module, MergedLinear)}
    expected = {name for name in params if name.rsplit(".", 1)[0] not in merged_names}
    expected |= {f"{key}.{leaf}" for key, (m, _) in shards.items() for leaf, _ in m.named_parameters()}
    tied = {"lm_head.weight"} if "lm_head.weight" not in params and hasattr(model, "lm_head") else set()
    ignored = [re.compile(p) for p in (*_ALWAYS_IGNORED, *getattr(model, "ignored_keys", ()))]
    renames = [(re.compile(a), b) for a, b in getattr(model, "legacy_renames", ())]

    loaded: set[str] = set()
    for key, tensor in _iter_checkpoint(path):
        name = key
        for pattern, replacement in renames:
            name = pattern.sub(replacement, name)
        if name in tied or any(p.search(name) for p in ignored):
            continue
        module_name, leaf = name.rsplit(".", 1)
        if name in params:
            target = params[name].data
        elif module_name in shards:
            merged, shard = shards[module_name]
            start, size = merged.shard_slice(shard)
            target = getattr(merged, leaf).data.narrow(0, start, size)
        else:
            raise WeightsError(f"checkpoint tensor {key!r} has no place in {type(model).__name__}")
        if tuple(target.shape) != tuple(tensor.shape):
            raise WeightsError(
                f"checkpoint tensor {key!r} has shape {tuple(tensor.shape)} but the config implies "
                f"{tuple(target.shape)}"
            )
        target.copy_(tensor.to(dtype=target.dtype))
        loaded.add(name)
    missing = sorted(expected - loaded)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"checkpoint is missing tensor {missing[0]!r}{more}")
