"""The engine's greedy tokens equal transformers' generate, token for token (float32, CPU)."""

from __future__ import annotations

import re

import pytest
from parity import HFReference, noise_image, prompt_for

from vlmctl import Engine, SamplingParams

LOGPROB_TOL = 1e-4
MODELS = ["tiny_llama_llava", "tiny_qwen_llava"]


@pytest.fixture(scope="module", params=MODELS)
def model_path(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def reference(model_path):
    return HFReference(model_path)


@pytest.fixture(scope="module")
def engine(model_path):
    with Engine(str(model_path), device="cpu", dtype="float32", max_total_tokens=8192) as engine:
        yield engine


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=True)


def assert_matches(output, ref, max_tokens):
    assert output.token_ids == ref.token_ids
    assert output.finish_reason == "length" and len(output.token_ids) == max_tokens
    worst = max(abs(a - b) for a, b in zip(output.logprobs, ref.logprobs))
    assert worst < LOGPROB_TOL, f"chosen-token logprob differs by {worst}"


def test_one_request_with_one_image_matches_transformers(engine, reference):
    prompt, images = prompt_for("What is in this image?", 1), [noise_image(0)]
    out = engine.generate({"prompt": prompt, "images": images}, greedy(24))[0]
    assert_matches(out, reference.greedy(prompt, images, 24), 24)
    assert out.prompt_tokens == len(reference.processor(images=images, text=prompt)["input_ids"][0])


def test_text_only_request_matches_transformers(engine, reference):
    prompt = "USER: Describe a red circle and a blue square. ASSISTANT:"
    out = engine.generate(prompt, greedy(16))[0]
    assert_matches(out, reference.greedy(prompt, [], 16), 16)


def test_eight_concurrent_requests_with_zero_one_two_images_match(engine, reference):
    questions = ["What is in this image?", "Describe the image.", "How many shapes are there?",
                 "Is there a green triangle left of the star?", "What colour is the circle?",
                 "Are there any differences between these two images?", "a", "Describe the picture and the shapes."]
    num_images = [0, 1, 2, 1, 0, 2, 1, 1]
    max_tokens = [5, 9, 13, 17, 21, 7, 3, 25]
    prompts, refs = [], []
    for i, (question, n, m) in enumerate(zip(questions, num_images, max_tokens)):
        images = [noise_image(10 * i + j, size=(200 + 40 * j + 16 * i, 300 - 20 * i)) for j in range(n)]
        prompt = prompt_for(question, n)
        prompts.append({"prompt": prompt, "images": images})
        refs.append(reference.greedy(prompt, images, m))
    outputs = engine.generate(prompts, [greedy(m) for m in max_tokens])
    for out, ref, m in zip(outputs, refs, max_tokens):
        assert_matches(out, ref, m)


def test_same_image_in_two_requests_gives_same_tokens(engine):
    image = noise_image(99)
    prompts = [{"prompt": prompt_for("Describe the image.", 1), "images": [image]}] * 2
    a, b = engine.generate(prompts, greedy(8))
    assert a.token_ids == b.token_ids


def test_seed_reproduces_tokens_across_batch_mixes(engine):
    target = {"prompt": prompt_for("What is in this image?", 1), "images": [noise_image(5)]}
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    alone = engine.generate(target, seeded)[0].token_ids
    others = [prompt_for("Describe a star.", 0), {"prompt": prompt_for("How many?", 1), "images": [noise_image(6)]}]
    mixed = engine.generate([*others, target], [SamplingParams(max_tokens=20, temperature=0.9)] * 2 + [seeded])
    assert mixed[-1].token_ids == alone
    other_seed = SamplingParams(max_tokens=12, temperature=1.0, seed=4321, ignore_eos=True)
    assert engine.generate(target, other_seed)[0].token_ids != alone


def test_retracted_and_resumed_request_matches_transformers(model_path, reference, capfd):
    images = [noise_image(40 + i) for i in range(4)]
    prompts = [{"prompt": prompt_for(f"Describe image {i}.", 1), "images": [images[i]]} for i in range(4)]
    max_tokens = 60
    refs = [reference.greedy(p["prompt"], p["images"], max_tokens) for p in prompts]
    # Room for three prompts and a few decode steps: the newest request must be retracted.
    with Engine(str(model_path), device="cpu", dtype="float32", max_total_tokens=900,
                decode_log_interval=1) as engine:
        outputs = engine.generate(prompts, greedy(max_tokens))
    for out, ref in zip(outputs, refs):
        assert_matches(out, ref, max_tokens)
    log = capfd.readouterr().err
    admitted = sum(int(n) for n in re.findall(r"Prefill batch\. #new-seq: (\d+)", log))
    assert admitted > len(prompts), "no request was retracted and recomputed"
