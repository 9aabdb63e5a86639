"""LLaVA (1.5 and later checkpoints in `LlavaForConditionalGeneration` layout).

A CLIP or SigLIP tower, a two-layer projector and a Llama or Qwen2 language model. Image
tokens in the prompt carry pad ids (>= vocab size); their embeddings are replaced by the
projected image features, row for row.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from vlmctl.daemon.models.forward_batch import ForwardBatch, ImageBatch
from vlmctl.daemon.models.llama import LlamaModel
from vlmctl.daemon.models.qwen2 import Qwen2Model
from vlmctl.daemon.models.vision import VisionTower

TEXT_MODELS: dict[str, type[LlamaModel]] = {"llama": LlamaModel, "qwen2": Qwen2Model, "mistral": LlamaModel}


def text_model_cls(text_config) -> type[LlamaModel]:
    model_type = text_config.model_type
    if model_type not in TEXT_MODELS:
        raise ValueError(
            f"LLaVA language model {model_type!r} is not supported; supported: {', '.join(TEXT_MODELS)}"
        )
    if model_type == "mistral" and getattr(text_config, "sliding_window", None):
        raise ValueError("Mistral with a sliding window is not supported yet")
    return TEXT_MODELS[model_type]


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        layers = config.vision_feature_layer
        num_layers = 1 if isinstance(layers, int) else len(layers)
        bias = getattr(config, "multimodal_projector_bias", True)
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size * num_layers, hidden, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class LlavaModel(nn.Module):
    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        self.vision_tower = VisionTower(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = text_model_cls(config.text_config)(config.text_config, max_positions)


class LlavaForConditionalGeneration(nn.Module):
    ignored_keys = VisionTower.ignored_keys
    # Checkpoints name the same tensors three ways: llava-hf/* on the hub
    # (`language_model.model.*`, `vision_tower.vision_model.*`), transformers 5's saves (the
    # same without `vision_model.`) and transformers 4.52+'s (`model.language_model.*`).
    # Applied in order, these rules bring all three to our module names.
    legacy_renames = (
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^language_model\.model\.", "model.language_model."),
        (r"^vision_tower\.", "model.vision_tower."),
        (r"^multi_modal_projector\.", "model.multi_modal_projector."),
        (r"^model\.vision_tower\.(?!vision_model\.)", "model.vision_tower.vision_model."),
    )

    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        strategy = config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported")
        self.config = config
        self.text_config = config.text_config
        self.model = LlavaModel(config, max_positions)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # transformers ties LLaVA's head by the top-level flag, not the text config's.
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.language_model.embed_tokens.weight
        layers = config.vision_feature_layer
        self.feature_layers = [layers] if isinstance(layers, int) else list(layers)
        self.drop_cls = strategy == "default"

    @property
    def language_model(self) -> LlamaModel:
        return self.model.language_model

    def num_image_tokens(self) -> int:
        return self.model.vision_tower.vision_model.num_positions - int(self.drop_cls)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] pixels -> [N, num_image_tokens, hidden] language-model embeddings."""
        states = self.model.vision_tower(pixel_values, self.feature_layers)
        if self.drop_cls:
            states = [s[:, 1:] for s in states]
        return self.model.multi_modal_projector(torch.cat(states, dim=-1))

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        embeds = self.language_model.embed(batch.input_ids)
        if batch.images is not None and batch.images.pixel_values:
            self._scatter_images(embeds, batch.images)
        return self.language_model(embeds, batch)

    def _scatter_images(self, embeds: torch.Tensor, images: ImageBatch) -> None:
        pixels = images.pixel_values
        if all(p.shape == pixels[0].shape for p in pixels):
            features = list(self.encode_images(torch.stack(pixels).to(embeds.device)))
        else:
            features = [self.encode_images(p.unsqueeze(0).to(embeds.device))[0] for p in pixels]
        for feature, positions, (start, end) in zip(features, images.positions, images.token_ranges):
            embeds[positions] = feature[start:end].to(embeds.dtype)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
