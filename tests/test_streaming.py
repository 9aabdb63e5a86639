"""AsyncEngine streaming: deltas, stop strings, and aborts that free the KV pool."""

from __future__ import annotations

import asyncio

import pytest
from parity import noise_image, prompt_for

from vlmctl import SamplingParams
from vlmctl.daemon.worker.async_engine import AsyncEngine
from vlmctl.daemon.worker.config import EngineConfig


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def run(tiny_llama_llava):
    """Run a coroutine against one AsyncEngine shared by the module's tests."""
    loop = asyncio.new_event_loop()
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama_llava), dtype="float32", max_total_tokens=4096,
                                      decode_log_interval=1))
    loop.run_until_complete(engine.start())
    yield lambda fn: loop.run_until_complete(fn(engine))
    loop.run_until_complete(engine.shutdown())
    loop.close()


async def tokens_in_use_after(engine: AsyncEngine, prompt: str) -> int:
    """KV slots in use right after prefilling `prompt` alone, minus its own tokens."""
    queue = engine.client.subscribe_stats()
    try:
        out = await engine.generate(prompt, params=greedy(2))  # still running when its prefill is recorded
        while True:
            record = await queue.get()
            if record.kind == "prefill":
                return record.num_tokens - out.prompt_tokens
    finally:
        engine.client.unsubscribe_stats(queue)


def test_stream_deltas_add_up_to_the_final_text(run):
    async def body(engine):
        deltas, final = [], None
        async for output in engine.stream(prompt_for("Describe.", 1), [noise_image(1)], greedy(20)):
            deltas.append(output.delta)
            final = output
        assert final.finish_reason == "length" and len(final.token_ids) == 20
        assert "".join(deltas) == final.text
        assert final.text == engine.processor.tokenizer.decode(final.token_ids, skip_special_tokens=True)

    run(body)


def test_stop_string_cuts_the_text_and_frees_the_request(run):
    async def body(engine):
        prompt = prompt_for("Describe.", 0)
        full = (await engine.generate(prompt, params=greedy(30))).text
        stop = next(full[i : i + 3] for i in range(4, len(full) - 3) if full[i : i + 3].strip() == full[i : i + 3])
        out = await engine.generate(prompt, params=greedy(30, stop=[stop]))
        assert out.finish_reason == "stop" and out.matched_stop == stop
        assert out.text == full[: full.index(stop)]
        assert len(out.token_ids) < 30
        assert await tokens_in_use_after(engine, "USER: hi ASSISTANT:") == 0

    run(body)


def test_leaving_a_stream_early_aborts_the_request(run):
    async def body(engine):
        stream = engine.stream(prompt_for("Tell a long story.", 0), params=greedy(1000))
        async for output in stream:
            if len(output.token_ids) >= 3:
                break
        await stream.aclose()
        assert await tokens_in_use_after(engine, "USER: hi ASSISTANT:") == 0

    run(body)
