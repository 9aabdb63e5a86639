"""Building blocks shared by the model files: fused linears, norms, rotary embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class MergedLinear(nn.Linear):
    """Several linears with one input, stored as one matrix so they run as one GEMM.

    `shard_names` are the checkpoint names of the parts (for example q_proj, k_proj, v_proj)
    and `shard_sizes` their output sizes, in order. The loader calls `load_shard`.
    """

    def __init__(self, in_features: int, shard_names: list[str], shard_sizes: list[int], bias: bool) -> None:
        super().__init__(in_features, sum(shard_sizes), bias=bias)
        self.shard_names = list(shard_names)
        self.shard_sizes = list(shard_sizes)
        offsets = [0]
        for size in shard_sizes:
            offsets.append(offsets[-1] + size)
        self._offsets = offsets

    def shard_slice(self, shard_name: str) -> tuple[int, int]:
        index = self.shard_names.index(shard_name)
        return self._offsets[index], self.shard_sizes[index]

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return output.split(self.shard_sizes, dim=-1)


class RMSNorm(nn.Module):
    """Llama's RMSNorm, computed in float32 like transformers."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class GatedMLP(nn.Module):
    """SwiGLU-style MLP: down(act(gate(x)) * up(x)), with gate and up fused."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool) -> None:
        super().__init__()
        self.gate_up_proj = MergedLinear(
            hidden_size, ["gate_proj", "up_proj"], [intermediate_size, intermediate_size], bias
        )
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj.split(self.gate_up_proj(x))
        return self.down_proj(self.act(gate) * up)


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "proportional")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with a cos/sin table for every position up to the context.

    The table is computed exactly as transformers computes it per step (float32 product of
    position and inverse frequency), so positions rotate bit-for-bit the same way.
    """

    def __init__(self, config, head_dim: int, max_positions: int) -> None:
        super().__init__()
        params = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if rope_type == "default":
            base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
            scaling = 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin_cache", emb.sin() * scaling, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] by their positions [T]."""
        cos = self.cos_cache[positions].to(q.dtype).unsqueeze(1)
        sin = self.sin_cache[positions].to(q.dtype).unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention of CLIP and SigLIP encoders."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = MergedLinear(
            hidden_size, ["q_proj", "k_proj", "v_proj"], [hidden_size] * 3, bias=True
        )
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (
            t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for t in self.qkv_proj.split(self.qkv_proj(x))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class VisionEncoderLayer(nn.Module):
    """Pre-norm transformer block with CLIP/SigLIP checkpoint names."""

    def __init__(self, config) -> None:
        super().__init__()
        self.self_attn = VisionAttention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionMLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionEncoder(nn.Module):
    """The `encoder.layers.N` stack; returns the hidden states a caller asked for."""

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor]:
        """Hidden states by index as transformers numbers them: 0 is the embeddings' output,
        i is the output of layer i-1. Layers past the highest wanted index are not run."""
        states = {0: x} if 0 in wanted else {}
        for index, layer in enumerate(self.layers[: max(wanted)], start=1):
            x = layer(x)
            if index in wanted:
                states[index] = x
        return states
