"""Reference outputs from transformers' own LLaVA on the same checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def noise_image(seed: int, size=(336, 336)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def prompt_for(question: str, num_images: int) -> str:
    return "USER: " + "<image>\n" * num_images + question + " ASSISTANT:"


@dataclass
class Reference:
    token_ids: list[int]
    logprobs: list[float]


class HFReference:
    def __init__(self, path, device="cpu", dtype=torch.float32) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        # Parity runs ignore EOS on both sides: random weights emit it at random.
        self.model.generation_config.eos_token_id = None
        self.device = device

    @torch.inference_mode()
    def greedy(self, prompt: str, images: list, max_new_tokens: int) -> Reference:
        if images:
            inputs = self.processor(images=images, text=prompt, return_tensors="pt")
        else:
            inputs = self.processor.tokenizer(prompt, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens)]
        return Reference(tokens, logprobs)
