"""The attention backend interface: plan once per step, then run once per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from vlmctl.daemon.runner.kv_pool import KVPool


@dataclass(slots=True)
class AttentionInputs:
    """Per-step layout, built by the model runner.

    Request b feeds `q_lens[b]` tokens at positions `prefix_lens[b] ..`, so it attends over
    `kv_lens[b] = prefix_lens[b] + q_lens[b]` keys whose slots are
    `req_to_token[rows[b], :kv_lens[b]]`. Tokens are flat, request after request.
    """

    is_decode: bool
    q_lens: list[int]
    prefix_lens: list[int]
    kv_lens: list[int]
    rows: torch.Tensor  # [B] long, on device
    kv_lens_t: torch.Tensor  # [B] long, on device
    out_slots: torch.Tensor  # [T] long: where each fed token's K/V is stored
    req_to_token: torch.Tensor  # [num_rows, max_context] long


class AttentionBackend(ABC):
    """Computes paged attention over the KV pool for a ragged batch."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    @abstractmethod
    def plan(self, inputs: AttentionInputs) -> None:
        """Prepare index tensors for this step; called once before the forward pass."""

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scale: float
    ) -> torch.Tensor:
        """Store k, v [T, Hkv, D] at the planned slots of layer `layer_id` and return the
        attention output [T, Hq, D] of q [T, Hq, D] over each request's keys (causal)."""
