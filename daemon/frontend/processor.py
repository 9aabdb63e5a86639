"""Prompt + images -> token ids with image pad ids, pixel tensors and image spans.

Each image token in the prompt is expanded to the number of tokens the model gives an
image, and those ids are replaced by a pad id derived from a hash of the image's pixels
(at or above the vocabulary size). Two requests with the same image then share a token
prefix; two different images never do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.frontend.images import load_image
from vlmctl.daemon.worker.messages import ImageSpan, TokenizedRequest

_PAD_RANGE = 1 << 30


def image_token_count(hf_config) -> int:
    """How many language-model tokens one image becomes in a LLaVA-1.5-style model."""
    vision = hf_config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    has_cls = vision.model_type in ("clip_vision_model", "clip")
    drop_cls = hf_config.vision_feature_select_strategy == "default"
    return num_patches + int(has_cls) - int(drop_cls)


def image_pad_id(pixel_values: torch.Tensor, vocab_size: int) -> tuple[int, int]:
    """(hash, pad id) of an image's preprocessed pixels."""
    data = pixel_values.detach().to("cpu").contiguous().numpy().tobytes()
    digest = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return digest, vocab_size + digest % _PAD_RANGE


class InputProcessor:
    """Tokenizer, image processor and the model's image-token arithmetic."""

    def __init__(
        self, model_path: str | Path, tokenizer_path: str | Path | None = None, max_image_pixels: int | None = None
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.hf_config = AutoConfig.from_pretrained(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
        text_config = getattr(self.hf_config, "text_config", None) or self.hf_config
        self.vocab_size = text_config.vocab_size
        self.max_image_pixels = max_image_pixels
        self.multimodal = hasattr(self.hf_config, "vision_config")
        self.image_token_id: int | None = None
        self.image_token: str | None = None
        if self.multimodal:
            from transformers import AutoImageProcessor

            self.image_processor = AutoImageProcessor.from_pretrained(model_path)
            token_id = getattr(self.hf_config, "image_token_id", None)
            if token_id is None:
                token_id = getattr(self.hf_config, "image_token_index", None)
            self.image_token_id = token_id
            self.image_token = self.tokenizer.convert_ids_to_tokens(token_id)
            self.num_image_tokens = image_token_count(self.hf_config)

    def process(
        self, request_id: str, prompt: str | Sequence[int], images: Sequence[object], params: SamplingParams
    ) -> TokenizedRequest:
        """Raises InvalidRequest (ImageError for images) when the inputs do not fit together."""
        if isinstance(prompt, str):
            input_ids = list(self.tokenizer(prompt).input_ids)
        else:
            input_ids = [int(t) for t in prompt]
            if any(t < 0 or t >= self.vocab_size for t in input_ids):
                raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab_size})")
        if not images:
            if self.image_token_id is not None and self.image_token_id in input_ids:
                raise InvalidRequest(
                    f"the prompt holds the image token {self.image_token!r} but no image was given"
                )
            return TokenizedRequest(request_id, input_ids, params)
        if not self.multimodal:
            raise InvalidRequest("this model takes no images (it is a text-only model)")
        return self._expand(request_id, input_ids, list(images), params)

    def _downscale(self, image):
        """Shrink (keeping the aspect ratio) to at most max_image_pixels before preprocessing."""
        limit = self.max_image_pixels
        if limit is None or image.width * image.height <= limit:
            return image
        scale = (limit / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        return image.resize(size, resample=3)  # bicubic

    def _expand(
        self, request_id: str, input_ids: list[int], images: list[object], params: SamplingParams
    ) -> TokenizedRequest:
        positions = [i for i, t in enumerate(input_ids) if t == self.image_token_id]
        if len(positions) != len(images):
            raise InvalidRequest(
                f"the prompt has {len(positions)} image token(s) {self.image_token!r} but "
                f"{len(images)} image(s) were given; put the image token once per image"
            )
        pil_images = [self._downscale(load_image(image)) for image in images]
        pixels = self.image_processor(images=pil_images, return_tensors="pt")["pixel_values"]
        expanded: list[int] = []
        spans: list[ImageSpan] = []
        start = 0
        for index, position in enumerate(positions):
            expanded.extend(input_ids[start:position])
            image_hash, pad_id = image_pad_id(pixels[index], self.vocab_size)
            spans.append(ImageSpan(len(expanded), self.num_image_tokens, pixels[index].numpy().copy(), image_hash))
            expanded.extend([pad_id] * self.num_image_tokens)
            start = position + 1
        expanded.extend(input_ids[start:])
        return TokenizedRequest(request_id, expanded, params, spans)
