"""Inputs a user can get wrong, faults inside a step, and a dying engine process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from parity import noise_image, prompt_for

from vlmctl import ContextTooLong, Engine, ImageError, InvalidRequest, SamplingParams
from vlmctl.daemon.worker.async_engine import AsyncEngine, EngineError
from vlmctl.daemon.worker.client import EngineDeadError, EngineStartError
from vlmctl.daemon.worker.config import EngineConfig

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama_llava):
    with Engine(str(tiny_llama_llava), device="cpu", dtype="float32", max_total_tokens=4096) as engine:
        yield engine


def test_more_images_than_image_tokens_is_a_value_error(engine):
    with pytest.raises(ValueError, match=r"1 image token\(s\) '<image>' but 2 image\(s\)"):
        engine.generate({"prompt": prompt_for("Compare.", 1), "images": [noise_image(1), noise_image(2)]})


def test_image_token_without_image_is_invalid(engine):
    with pytest.raises(InvalidRequest, match="no image was given"):
        engine.generate(prompt_for("What is this?", 1))


def test_undecodable_image_bytes_are_an_image_error(engine):
    with pytest.raises(ImageError, match="not a decodable image"):
        engine.generate({"prompt": prompt_for("What?", 1), "images": [b"definitely not a png"]})


def test_missing_image_path_is_an_image_error(engine, tmp_path):
    with pytest.raises(ImageError, match="cannot read image"):
        engine.generate({"prompt": prompt_for("What?", 1), "images": [tmp_path / "nope.png"]})


def test_image_from_path_and_bytes_equals_pil(engine, tmp_path):
    image = noise_image(3)
    path = tmp_path / "a.png"
    image.save(path)
    prompts = [{"prompt": prompt_for("What?", 1), "images": [source]} for source in (image, path, path.read_bytes())]
    outputs = engine.generate(prompts, GREEDY)
    assert outputs[0].token_ids == outputs[1].token_ids == outputs[2].token_ids


def test_prompt_over_the_context_is_context_too_long(engine):
    long_prompt = "red circle " * 3000
    with pytest.raises(ContextTooLong, match="context is 2048"):
        engine.generate(long_prompt)
    assert issubclass(ContextTooLong, ValueError)


def test_bad_request_loses_nothing_else(engine):
    good = {"prompt": prompt_for("Describe.", 1), "images": [noise_image(4)]}
    before = engine.generate(good, GREEDY)[0].token_ids
    with pytest.raises(ImageError):
        engine.generate([good, {"prompt": prompt_for("x", 1), "images": [b"garbage"]}], GREEDY)
    assert engine.generate(good, GREEDY)[0].token_ids == before


def test_unsupported_architecture_fails_start_with_the_supported_list(tiny_llama_llava, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_llava, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["FancyNewVLM"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineStartError, match="unsupported architecture.*LlavaForConditionalGeneration"):
        Engine(str(broken), device="cpu", dtype="float32")


def test_fault_in_a_step_fails_only_its_request_and_engine_keeps_serving(tiny_llama_llava):
    async def main():
        engine = AsyncEngine(EngineConfig(model=str(tiny_llama_llava), dtype="float32", max_total_tokens=4096))
        await engine.start()
        try:
            requests = [
                await engine.tokenize(prompt_for(f"Describe {i}.", 1), [noise_image(i)], GREEDY, request_id=f"r{i}")
                for i in range(3)
            ]
            expected = [(await engine.generate(_renamed(r, "ref"))).token_ids for r in requests]
            engine.client.inject_fault("r1")
            results = await asyncio.gather(*(engine.generate(r) for r in requests), return_exceptions=True)
            assert isinstance(results[1], EngineError) and "injected fault" in str(results[1])
            assert results[0].token_ids == expected[0]
            assert results[2].token_ids == expected[2]
            again = await engine.generate(_renamed(requests[1], "again"))
            assert again.token_ids == expected[1]
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_engine_crash_is_reported_to_every_waiting_caller(tiny_llama_llava):
    async def main():
        engine = AsyncEngine(EngineConfig(model=str(tiny_llama_llava), dtype="float32", max_total_tokens=4096))
        await engine.start()
        long = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)

        async def consume(i):
            seen = 0
            async for _ in engine.stream(prompt_for(f"Tell {i}.", 0), params=long):
                seen += 1
                if seen == 3 and i == 0:
                    os.kill(engine.client.pid, signal.SIGKILL)
            return seen

        try:
            results = await asyncio.gather(*(consume(i) for i in range(3)), return_exceptions=True)
            assert all(isinstance(r, EngineDeadError) for r in results), results
            with pytest.raises(EngineDeadError):
                await engine.generate("USER: hello ASSISTANT:", params=GREEDY)
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_step_statistics_reach_subscribers(tiny_llama_llava):
    async def main():
        config = EngineConfig(model=str(tiny_llama_llava), dtype="float32", max_total_tokens=4096,
                              decode_log_interval=2)
        engine = AsyncEngine(config)
        await engine.start()
        queue = engine.client.subscribe_stats()
        try:
            await engine.generate(prompt_for("Describe.", 1), [noise_image(1)],
                                  SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        finally:
            await engine.shutdown()
        records = []
        while not queue.empty():
            item = queue.get_nowait()
            if not isinstance(item, Exception):
                records.append(item)
        kinds = [r.kind for r in records]
        assert kinds[0] == "prefill" and kinds.count("decode") == 3  # 7 decode steps, every 2nd
        assert records[0].num_new_tokens > 256  # the image's tokens and the text
        assert 0 < records[-1].token_usage < 1

    asyncio.run(main())


def _renamed(request, suffix):
    from dataclasses import replace

    return replace(request, request_id=f"{request.request_id}-{suffix}")
