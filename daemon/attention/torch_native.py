"""Reference attention backend: gathers each request's K/V from the pool and calls SDPA.

Runs on any device. Ragged requests are padded to the longest one with a mask, so a step
costs one SDPA call per layer whatever the batch size.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlmctl.daemon.attention.base import AttentionBackend, AttentionInputs


class TorchNativeBackend(AttentionBackend):
    """On CUDA, padded key lengths are rounded up to `kv_bucket` and SDPA may not use
    cuDNN: cuDNN attention builds an execution plan per new shape, and a decode step's
    key length grows by one every step (seen on an H200: ~95 ms per step)."""

    name = "torch_native"
    kv_bucket_cuda = 256

    def __init__(self, pool) -> None:
        super().__init__(pool)
        device = pool.k_buffers[0].device
        self.kv_bucket = self.kv_bucket_cuda if device.type == "cuda" else 1
        self.sdpa_backends: list[SDPBackend] | None = None
        if device.type == "cuda":
            self.sdpa_backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def plan(self, inputs: AttentionInputs) -> None:
        self.inputs = inputs
        device = inputs.rows.device
        num_requests = len(inputs.q_lens)
        # Keys past a request's length are masked, so rounding up changes no result.
        bucket = self.kv_bucket
        max_kv = min(-(-max(inputs.kv_lens) // bucket) * bucket, inputs.req_to_token.shape[1])
        # A prefill without cached prefixes needs no pool read: every key is fresh, and each
        # request runs causal SDPA on its own slice (the fast kernel; a mask forces the slow
        # math path on CPU).
        self.fresh_causal = not inputs.is_decode and not any(inputs.prefix_lens)
        if self.fresh_causal:
            bounds = [0, *itertools.accumulate(inputs.q_lens)]
            self.fresh_slices = list(zip(bounds, bounds[1:]))
            return
        self.kv_shape = (num_requests, max_kv)
        # Flat for index_select, which is several times faster than advanced indexing on CPU.
        self.kv_index = inputs.req_to_token[inputs.rows, :max_kv].reshape(-1)
        key_pos = torch.arange(max_kv, device=device)
        if inputs.is_decode:
            self.q_index = None
            self.mask = (key_pos[None, :] < inputs.kv_lens_t[:, None])[:, None, None, :]
            return
        max_q = max(inputs.q_lens)
        q_lens = torch.tensor(inputs.q_lens, device=device)
        prefix = torch.tensor(inputs.prefix_lens, device=device)
        starts = torch.cumsum(q_lens, 0) - q_lens
        q_pos = torch.arange(max_q, device=device)
        valid = q_pos[None, :] < q_lens[:, None]  # [B, max_q]
        self.q_valid = valid
        self.q_index = (starts[:, None] + q_pos[None, :]).clamp(max=int(q_lens.sum()) - 1)
        causal = key_pos[None, None, :] <= (prefix[:, None, None] + q_pos[None, :, None])
        mask = causal & (key_pos[None, None, :] < inputs.kv_lens_t[:, None, None])
        # Padded query rows attend to key 0 so that no row is fully masked (NaN); they are
        # dropped afterwards.
        mask[:, :, 0] |= ~valid
        self.mask = mask[:, None]  # [B, 1, max_q, max_kv]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scale: float
    ) -> torch.Tensor:
        if self.sdpa_backends is None:
            return self._forward(q, k, v, layer_id, scale)
        with sdpa_kernel(self.sdpa_backends):
            return self._forward(q, k, v, layer_id, scale)

    def _forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scale: float
    ) -> torch.Tensor:
        k_buf, v_buf = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id]
        k_buf.index_copy_(0, self.inputs.out_slots, k)
        v_buf.index_copy_(0, self.inputs.out_slots, v)
        gqa = q.shape[1] != k.shape[1]
        if self.fresh_causal:
            return torch.cat([
                F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], v[a:b].transpose(0, 1)[None],
                    is_causal=True, scale=scale, enable_gqa=gqa,
                )[0].transpose(0, 1)
                for a, b in self.fresh_slices
            ])
        shape = (*self.kv_shape, *k_buf.shape[1:])
        keys = k_buf.index_select(0, self.kv_index).view(shape).transpose(1, 2)  # [B, Hkv, max_kv, D]
        values = v_buf.index_select(0, self.kv_index).view(shape).transpose(1, 2)
        if self.q_index is None:  # decode: one query per request
            queries = q[:, :, None, :]  # [B, Hq, 1, D]
        else:
            queries = q[self.q_index].transpose(1, 2)  # [B, Hq, max_q, D]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=self.mask, scale=scale, enable_gqa=gqa
        )
        if self.q_index is None:
            return out[:, :, 0, :]
        return out.transpose(1, 2)[self.q_valid]
