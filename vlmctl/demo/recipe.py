"""The demo model's shape: tokenizer, chat template, LLaVA configuration and prompts.

Shared by scripts/train_demo_model.py (which builds and trains it), scripts/eval_demo_model.py
and the tests, so that training and serving format conversations the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from vlmctl.demo import shapes
from vlmctl.testing.tiny_models import IMAGE_TOKEN

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# Exactly what the built-in vicuna_v1.1 template renders (SGLang's conversation format for
# LLaVA-1.5): one image in a message is "<image>\n", several are bare "<image>" tokens.
CHAT_TEMPLATE = (
    "{% set ns = namespace(system='" + SYSTEM.replace("'", "\\'") + "') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content if m.content is string "
    "else m.content | map(attribute='text') | join('') %}{% endif %}{% endfor %}"
    "{{ ns.system }} "
    "{% for m in messages %}"
    "{% if m.role == 'user' %}{{ 'USER: ' }}"
    "{% if m.content is string %}{{ m.content }}{% else %}"
    "{% set images = m.content | selectattr('type', 'in', ['image', 'image_url']) | list %}"
    "{% for c in m.content %}{% if c.type in ['image', 'image_url'] %}"
    "{{ '<image>\\n' if images | length == 1 else '<image>' }}"
    "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}{{ ' ' }}"
    "{% elif m.role == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{{ m.content if m.content is string else m.content | map(attribute='text') | join('') }}{{ '</s>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """Sizes of the demo model. The defaults are what ships."""

    image_size: int = 96
    patch_size: int = 16
    vision_hidden: int = 192
    vision_layers: int = 6
    vision_heads: int = 6
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 6
    text_kv_heads: int = 3
    text_intermediate: int = 512
    vocab_size: int = 1024

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def prompt(questions_and_answers: Sequence[tuple[str, str | None]], num_images: int) -> str:
    """The vicuna_v1.1 prompt of a conversation whose first user turn carries the images;
    the last answer may be None (the generation prompt)."""
    tokens = IMAGE_TOKEN + "\n" if num_images == 1 else IMAGE_TOKEN * num_images
    out = SYSTEM + " "
    for i, (question, answer) in enumerate(questions_and_answers):
        out += "USER: " + (tokens if i == 0 else "") + question + " ASSISTANT:"
        if answer is not None:
            out += " " + answer + "</s>"
    return out


def corpus(count: int, seed: int) -> list[str]:
    """Text the tokenizer is trained on: every question and answer form, and the prompt."""
    rng = random.Random(seed)
    lines = [SYSTEM, "USER: ASSISTANT:"]
    for _ in range(count):
        scene = shapes.random_scene(rng)
        lines += [q + " " + a for q, a in shapes.questions(scene, rng)]
        lines.append(shapes.difference_pair(scene, rng)[1])
    lines += list(shapes.COMPARE_QUESTIONS) + [shapes.SAME_ANSWER]
    lines += ["I don't know.", "Sorry, I can only answer questions about shapes and colours."]
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer trained on the demo corpus, with BOS, EOS and <image>."""
    from vlmctl.testing.tiny_models import train_bpe_tokenizer

    return train_bpe_tokenizer(corpus(4000, seed), vocab_size, CHAT_TEMPLATE, model_max_length=2048)


def llava_config(shape: Shape, tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads, max_position_embeddings=2048, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def image_processor(shape: Shape):
    """Squash any image to image_size x image_size (no crop: shapes at the edges stay in view)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    size = shape.image_size
    return Processor(size={"height": size, "width": size}, do_center_crop=False,
                     crop_size={"height": size, "width": size})
