"""Text-only checkpoints and RoPE scaling, token for token against transformers.

The engine core runs in this process (no engine process): the model path is what is tested.
"""

from __future__ import annotations

import pytest
import torch

from vlmctl import SamplingParams
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.loading import load_engine_core
from vlmctl.daemon.worker.messages import TokenizedRequest
from vlmctl.testing.tiny_models import build_tokenizer

ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
}


def build_text_model(path, family: str, rope) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    cls, config_cls = (LlamaForCausalLM, LlamaConfig) if family == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=family == "qwen2")
    if rope is not None:
        kwargs["rope_parameters"] = rope
    config = config_cls(**kwargs)
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def engine_greedy(path, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    core, _ = load_engine_core(EngineConfig(model=str(path), dtype="float32", max_total_tokens=2048,
                                            cpu_threads=1))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=True)
    core.add(TokenizedRequest("r", prompt_ids, params))
    tokens: list[int] = []
    logprobs: list[float] = []
    while core.has_work:
        out = core.step()
        for output in out.outputs if out else []:
            tokens += output.token_ids
            logprobs += output.logprobs or []
    return tokens, logprobs


# RoPE scaling is shared code, so Qwen2 (biases, tied head) needs only the default case.
CASES = [("llama", rope) for rope in ROPE_CASES] + [("qwen2", "default")]


@pytest.mark.parametrize("family, rope", CASES)
def test_text_model_matches_transformers(tmp_path, family, rope):
    from transformers import AutoModelForCausalLM

    build_text_model(tmp_path, family, ROPE_CASES[rope])
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference.generation_config.eos_token_id = None
    # A prompt past original_max_position_embeddings so the scaled frequencies matter.
    prompt = list(range(5, 105))
    with torch.inference_mode():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
    expected = out.sequences[0, len(prompt):].tolist()
    expected_logprobs = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(out.logits, expected)]
    tokens, logprobs = engine_greedy(tmp_path, prompt, 12)
    assert tokens == expected
    # Logprobs are what notices a wrong rotation: greedy tokens of a random model barely do.
    assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)) < 1e-4
