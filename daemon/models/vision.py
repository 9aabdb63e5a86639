"""CLIP and SigLIP vision towers (checkpoint prefix `vision_model.*`).

Both return the hidden states a caller selects, numbered as transformers numbers them:
index 0 is the embeddings' output and index i the output of encoder layer i-1; negative
indices count from the end. Layers past the deepest selected one never run.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmctl.daemon.models.layers import VisionEncoder


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_patches + 1, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, config.patch_size
        )
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight


class _VisionTransformer(nn.Module):
    has_cls_token: bool = False

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def num_positions(self) -> int:
        return self.embeddings.num_patches + int(self.has_cls_token)

    def resolve(self, index: int) -> int:
        count = self.config.num_hidden_layers + 1
        resolved = index + count if index < 0 else index
        if not 0 <= resolved < count:
            raise ValueError(f"vision_feature_layer {index} is out of range for {count - 1} layers")
        return resolved

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values)

    def forward(self, pixel_values: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        wanted = [self.resolve(i) for i in layers]
        states = self.encoder(self.embed(pixel_values), wanted)
        return [states[i] for i in wanted]


class CLIPVisionTransformer(_VisionTransformer):
    has_cls_token = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pre_layrnorm(self.embeddings(pixel_values))


class SiglipVisionTransformer(_VisionTransformer):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.embeddings = SiglipVisionEmbeddings(config)


class VisionTower(nn.Module):
    """`CLIPVisionModel` / `SiglipVisionModel`: the transformer under `vision_model`."""

    def __init__(self, config) -> None:
        super().__init__()
        model_type = config.model_type
        if model_type in ("clip_vision_model", "clip"):
            self.vision_model: _VisionTransformer = CLIPVisionTransformer(config)
        elif model_type in ("siglip_vision_model", "siglip"):
            self.vision_model = SiglipVisionTransformer(config)
        else:
            raise ValueError(
                f"vision tower {model_type!r} is not supported; supported: clip_vision_model, siglip_vision_model"
            )

    def forward(self, pixel_values: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        return self.vision_model(pixel_values, layers)

    # Checkpoint tensors we never use: SigLIP's attention-pooling head.
    ignored_keys = (r"vision_model\.head\.",)
