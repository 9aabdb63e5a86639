"""Which model class serves which `architectures` entry of config.json."""

from __future__ import annotations

from torch import nn

from vlmctl.daemon.models.llama import LlamaForCausalLM
from vlmctl.daemon.models.llava import LlavaForConditionalGeneration
from vlmctl.daemon.models.qwen2 import Qwen2ForCausalLM

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
}


class UnsupportedModel(ValueError):
    """The checkpoint's architecture has no model class here."""


def model_class(config) -> type[nn.Module]:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    found = ", ".join(names) or "none listed in config.json"
    raise UnsupportedModel(
        f"unsupported architecture ({found}); supported: {', '.join(sorted(ARCHITECTURES))}"
    )


def is_multimodal(model: nn.Module) -> bool:
    return hasattr(model, "encode_images")
