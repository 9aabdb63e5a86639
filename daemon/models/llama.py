"""Llama-family language models (Llama 2/3, Mistral-style GQA; Qwen2 via `qwen2.py`).

Module names equal the Hugging Face checkpoint keys (`model.layers.N.self_attn...`), except
the fused `qkv_proj` and `gate_up_proj`, which the loader fills shard by shard.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmctl.daemon.models.forward_batch import ForwardBatch
from vlmctl.daemon.models.layers import GatedMLP, MergedLinear, RMSNorm, RotaryEmbedding


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_id: int, qkv_bias: bool, o_bias: bool, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = head_dim_of(config)
        self.scale = self.head_dim**-0.5
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(
            config.hidden_size, ["q_proj", "k_proj", "v_proj"], [q_size, kv_size, kv_size], qkv_bias
        )
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=o_bias)
        # Shared with every layer; not a submodule so it is neither saved nor loaded.
        self._rotary = (rotary,)

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden))
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = self._rotary[0](batch.positions, q, k)
        out = batch.attention.forward(q, k, v, self.layer_id, self.scale)
        return self.o_proj(out.reshape(num_tokens, -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_id: int, qkv_bias: bool, o_bias: bool, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, qkv_bias, o_bias, rotary)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, getattr(config, "mlp_bias", False)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), batch)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm (the checkpoint's `model.*`)."""

    qkv_bias_default = False

    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        qkv_bias, o_bias = self.attention_biases(config)
        self.rotary = RotaryEmbedding(config, head_dim_of(config), max_positions)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, qkv_bias, o_bias, self.rotary) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Image pad ids sit at or above the vocabulary; their rows are overwritten later.
        return self.embed_tokens(input_ids.clamp(max=self.vocab_size - 1))

    def forward(self, embeds: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden = embeds
        for layer in self.layers:
            hidden = layer(hidden, batch)
        return self.norm(hidden)


class LlamaForCausalLM(nn.Module):
    """A text-only Llama checkpoint (`model.*` and `lm_head`)."""

    inner_cls = LlamaModel

    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.text_config = config
        self.model = self.inner_cls(config, max_positions)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def language_model(self) -> LlamaModel:
        return self.model

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        return self.model(self.model.embed(batch.input_ids), batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
