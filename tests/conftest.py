from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_llava(tmp_path_factory):
    """CLIP + Llama with grouped-query attention, LLaVA-1.5 feature selection."""
    from vlmctl.testing.tiny_models import TinySpec, build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("llava_llama"), TinySpec(vision="clip", text="llama"))


@pytest.fixture(scope="session")
def tiny_qwen_llava(tmp_path_factory):
    """SigLIP + Qwen2 (q/k/v biases), full feature selection from the last layer, tied head."""
    from vlmctl.testing.tiny_models import TinySpec, build_tiny_llava

    spec = TinySpec(vision="siglip", text="qwen2", strategy="full", feature_layer=-1, tie_word_embeddings=True,
                    num_kv_heads=1, seed=1)
    return build_tiny_llava(tmp_path_factory.mktemp("llava_qwen2"), spec)
