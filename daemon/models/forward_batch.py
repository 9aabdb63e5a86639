"""The tensors one forward pass reads, built by the model runner each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class AttentionForward(Protocol):
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scale: float
    ) -> torch.Tensor:
        """Store k/v [T, Hkv, D] in the KV pool and return attention output [T, Hq, D]."""
        ...


@dataclass(slots=True)
class ImageBatch:
    """Images whose tokens this step feeds.

    `pixel_values[i]` is one image as the processor made it; its embeddings go to the flat
    token positions `positions[i]` (a 1-D long tensor, one entry per image token fed now).
    `token_ranges[i]` says which of the image's tokens those are (all of them, unless a
    chunk cuts through the image).
    """

    pixel_values: list[torch.Tensor]
    positions: list[torch.Tensor]
    token_ranges: list[tuple[int, int]]


@dataclass(slots=True)
class ForwardBatch:
    """Flat (ragged) batch: T tokens from B requests, laid out request after request."""

    input_ids: torch.Tensor  # [T] long; image tokens carry pad ids >= vocab size
    positions: torch.Tensor  # [T] long
    attention: AttentionForward
    images: ImageBatch | None = None
