"""The offline API: a synchronous Engine for scripts and tests.

    from vlmctl import Engine, SamplingParams
    with Engine(model="path-or-hub-id", device="cpu", dtype="float32") as engine:
        outputs = engine.generate([{"prompt": "USER: <image>\\nWhat is this? ASSISTANT:",
                                    "images": [image]}], SamplingParams(max_tokens=32))

It runs an AsyncEngine on a private event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.worker.async_engine import AsyncEngine, RequestOutput
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.messages import EngineInfo

Prompt = str | Mapping[str, Any]


class Engine:
    def __init__(self, model: str, **options: Any) -> None:
        self.config = EngineConfig(model=str(model), **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmctl-engine-loop", daemon=True)
        self._thread.start()
        self._engine = AsyncEngine(self.config)
        self._closed = False
        try:
            self.info: EngineInfo = self._call(self._engine.start())
        except BaseException:
            self.close()
            raise

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def async_engine(self) -> AsyncEngine:
        return self._engine

    @property
    def tokenizer(self):
        assert self._engine.processor is not None
        return self._engine.processor.tokenizer

    def generate(
        self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run every prompt concurrently through the engine; outputs in prompt order.

        A prompt is a string, or a mapping with "prompt" (string or token ids) and optional
        "images" (PIL images, paths or bytes). If any prompt is malformed, its InvalidRequest
        (a ValueError) is raised and the other prompts are aborted.
        """
        if isinstance(prompts, (str, Mapping)):
            prompts = [prompts]
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(prompts)
        else:
            params_list = list(params)
            if len(params_list) != len(prompts):
                raise InvalidRequest(f"{len(params_list)} SamplingParams for {len(prompts)} prompts")
        return self._call(self._generate_all(prompts, params_list))

    async def _generate_all(self, prompts: list[Prompt], params: list[SamplingParams]) -> list[RequestOutput]:
        engine = self._engine

        async def one(prompt: Prompt, sampling: SamplingParams) -> RequestOutput:
            # Each request goes to the engine as soon as it is preprocessed, so the engine
            # works while later images are still being decoded.
            text, images = _split_prompt(prompt)
            return await engine.generate(await engine.tokenize(text, images, sampling))

        tasks = [asyncio.ensure_future(one(p, sp)) for p, sp in zip(prompts, params)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()  # cancelling a request's stream aborts it in the engine
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._engine.shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _split_prompt(prompt: Prompt) -> tuple[Any, list[Any]]:
    if isinstance(prompt, str):
        return prompt, []
    if not isinstance(prompt, Mapping) or "prompt" not in prompt:
        raise InvalidRequest('a prompt is a string or a mapping with a "prompt" key')
    images = prompt.get("images") or []
    if not isinstance(images, (list, tuple)):
        images = [images]
    return prompt["prompt"], list(images)
