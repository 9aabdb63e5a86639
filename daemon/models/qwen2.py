"""Qwen2 language models: Llama's structure with biases on q/k/v (not on o_proj)."""

from __future__ import annotations

from vlmctl.daemon.models.llama import LlamaForCausalLM, LlamaModel


class Qwen2Model(LlamaModel):
    def __init__(self, config, max_positions: int) -> None:
        if getattr(config, "use_sliding_window", False):
            raise ValueError(
                "Qwen2 checkpoints with use_sliding_window=true are not supported yet "
                "(the engine attends over the whole context)"
            )
        super().__init__(config, max_positions)

    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        return True, False


class Qwen2ForCausalLM(LlamaForCausalLM):
    inner_cls = Qwen2Model
