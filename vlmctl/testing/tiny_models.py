"""Tiny random-weight checkpoints of the families we serve, built offline in a second.

Used by the tests and the benchmarks: a byte-level BPE tokenizer trained here on synthetic
sentences, a transformers model with random weights saved with `save_pretrained`, and the
model's image processor, so that both transformers and vlmctl load the same folder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_TOKEN = "<image>"
# LLaVA-1.5's conversation format (what the vicuna_v1.1 built-in renders), as a Jinja
# template so the tiny checkpoints chat out of the box.
CHAT_TEMPLATE = (
    "{% set system = 'A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user\\'s questions.' %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set system = m.content if m.content is string "
    "else m.content[0].text %}{% endif %}{% endfor %}{{ system }}"
    "{% for m in messages %}{% if m.role == 'user' %}{{ ' USER: ' }}"
    "{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for c in m.content %}{% if c.type == 'image' %}{{ '<image>\\n' }}{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}{% elif m.role == 'assistant' %}{{ ' ASSISTANT: ' }}"
    "{{ m.content if m.content is string else m.content[0].text }}{{ '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", IMAGE_TOKEN]

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
_SHAPES = ["circle", "square", "triangle", "star"]
_WORDS = ["USER:", "ASSISTANT:", "What", "is", "in", "this", "image", "picture", "Describe", "the", "a",
          "an", "and", "there", "Is", "How", "many", "shapes", "are", "left", "right", "of", "yes", "no",
          "colour", "Are", "any", "differences", "between", "these", "two", "images", "?", ".", ","]


def _sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(_WORDS + _COLOURS + _SHAPES) for _ in range(rng.randint(4, 14))]
        out.append(" ".join(words))
        out.append(f"A {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} and a {rng.choice(_COLOURS)} "
                   f"{rng.choice(_SHAPES)}.")
    # A little unicode so multi-byte characters exist as tokens (detokenizer tests).
    out += ["café naïve résumé", "日本語のテキスト", "emoji 🙂 🎨 ✓"] * 20
    return out


def train_bpe_tokenizer(lines: list[str], vocab_size: int, chat_template: str, **options):
    """A byte-level BPE tokenizer trained on `lines`, with <s>/</s>/<unk>/<pad> and the image
    token as specials, BOS added to every encoding. `options` go to PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, **options,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tokenizer(vocab_size: int = 400):
    """The tiny checkpoints' tokenizer, trained on random sentences about shapes."""
    return train_bpe_tokenizer(_sentences(2000), vocab_size, CHAT_TEMPLATE)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny LLaVA: vision tower kind, language model kind and sizes."""

    vision: str = "clip"  # clip | siglip
    text: str = "llama"  # llama | qwen2
    image_size: int = 224
    patch_size: int = 14
    vision_hidden: int = 32
    vision_layers: int = 3
    text_hidden: int = 64
    text_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    feature_layer: int = -2
    strategy: str = "default"
    max_positions: int = 2048
    tie_word_embeddings: bool = False
    vision_heads: int = 4
    text_intermediate: int | None = None  # default: 2 x text_hidden
    vocab_size: int = 400
    seed: int = 0


# Larger shapes for benchmarks (random weights; the tokenizer stays tiny).
PRESETS: dict[str, TinySpec] = {
    "tiny": TinySpec(),
    # CLIP ViT-L/14-336 + a Llama of ~1.3 B parameters.
    "small": TinySpec(image_size=336, vision_hidden=1024, vision_layers=24, vision_heads=16, text_hidden=2048,
                      text_layers=16, num_heads=16, num_kv_heads=16, text_intermediate=5504, max_positions=4096),
    # The shape of llava-1.5-7b-hf: CLIP ViT-L/14-336 + Llama-2-7B (vocabulary 32 k).
    "7b": TinySpec(image_size=336, vision_hidden=1024, vision_layers=24, vision_heads=16, text_hidden=4096,
                   text_layers=32, num_heads=32, num_kv_heads=32, text_intermediate=11008, max_positions=4096,
                   vocab_size=32064),
}


def _vision_config(spec: TinySpec):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    common = dict(
        hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 4 if spec.vision_hidden > 64 else 64,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads, image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    if spec.vision == "clip":
        return CLIPVisionConfig(**common, projection_dim=spec.vision_hidden)
    return SiglipVisionConfig(**common, vision_use_head=False)


def _text_config(spec: TinySpec, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate or spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=spec.tie_word_embeddings,
    )
    if spec.text == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common)


def _image_processor(spec: TinySpec):
    # The PIL processors need no torchvision (which cannot be installed beside some CPU
    # torch builds); older transformers only have the classic classes.
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as CLIPProcessor
        from transformers.models.siglip.image_processing_pil_siglip import (
            SiglipImageProcessorPil as SiglipProcessor,
        )
    except ImportError:
        from transformers import CLIPImageProcessor as CLIPProcessor
        from transformers import SiglipImageProcessor as SiglipProcessor

    size = spec.image_size
    if spec.vision == "clip":
        return CLIPProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return SiglipProcessor(size={"height": size, "width": size})


def build_tiny_llava(path: str | Path, spec: TinySpec | None = None, device: str = "cpu", dtype=None) -> Path:
    """Write a random LLaVA checkpoint (model, tokenizer, processor) to `path`.

    The vocabulary is the tokenizer's, or `spec.vocab_size` when that is larger (the extra
    ids are never produced by the tokenizer but make the LM head realistically wide).
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    spec = spec or TinySpec()
    path = Path(path)
    tokenizer = build_tokenizer()
    vocab_size = max(len(tokenizer), spec.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        vision_config=_vision_config(spec),
        text_config=_text_config(spec, vocab_size, tokenizer),
        image_token_index=image_token_id,
        vision_feature_select_strategy=spec.strategy,
        vision_feature_layer=spec.feature_layer,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(spec.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    _scaled_init(model, spec.seed)
    model.save_pretrained(path)
    has_cls = spec.vision == "clip"
    processor = LlavaProcessor(
        image_processor=_image_processor(spec), tokenizer=tokenizer, patch_size=spec.patch_size,
        vision_feature_select_strategy=spec.strategy, num_additional_image_tokens=int(has_cls),
    )
    processor.save_pretrained(path)
    return path


def _scaled_init(model, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in): wider than transformers' default 0.02 on tiny models, so
    logits are far apart and greedy choices are not near-ties (parity tests stay stable),
    and still well-scaled on large ones (no overflow in bfloat16)."""
    import math

    import torch

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(1234 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                fan_in = param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05, generator=generator)
