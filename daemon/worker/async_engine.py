"""AsyncEngine: prompts and images in, streamed text out. What the daemon builds on.

Tokenization and image preprocessing run in a thread pool so the event loop never blocks;
the engine process does the rest; detokenization and stop strings happen here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vlmctl.daemon.engine.request import ContextTooLong
from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.frontend.detokenizer import IncrementalDetokenizer
from vlmctl.daemon.frontend.processor import InputProcessor
from vlmctl.daemon.worker.client import EngineClient
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.messages import EngineInfo, TokenizedRequest


class EngineError(RuntimeError):
    """A request failed inside the engine (not the user's fault)."""


@dataclass(slots=True)
class RequestOutput:
    """The state of one request after a step. `text` and `token_ids` are cumulative;
    `delta` is the text added by this step. A stream yields the same object each step,
    updated in place."""

    request_id: str
    text: str = ""
    delta: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    matched_stop: str | int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class AsyncEngine:
    def __init__(
        self, config: EngineConfig, preprocess_workers: int = 4, max_image_pixels: int | None = None
    ) -> None:
        self.config = config
        self.max_image_pixels = max_image_pixels
        self.client = EngineClient(config)
        self.processor: InputProcessor | None = None
        self._pool = ThreadPoolExecutor(preprocess_workers, thread_name_prefix="vlmctl-preprocess")

    @property
    def info(self) -> EngineInfo | None:
        return self.client.info

    async def start(self) -> EngineInfo:
        """Start the engine process and, meanwhile, load the tokenizer and image processor."""
        from vlmctl.daemon.models.loader import resolve_model_path

        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(self._pool, resolve_model_path, self.config.model)
        processor = loop.run_in_executor(
            self._pool, InputProcessor, path, self.config.tokenizer, self.max_image_pixels
        )
        try:
            info = await self.client.start()
        finally:
            # Wait for the processor even when the engine failed, so no thread is left behind.
            (result,) = await asyncio.gather(processor, return_exceptions=True)
        if isinstance(result, BaseException):
            await self.client.shutdown()
            raise result
        self.processor = result
        return info

    async def tokenize(
        self, prompt: str | Sequence[int], images: Sequence[object] = (), params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> TokenizedRequest:
        """Validate and preprocess a request (raises InvalidRequest / ImageError)."""
        assert self.processor is not None and self.info is not None, "start() the engine first"
        loop = asyncio.get_running_loop()
        tokenized = await loop.run_in_executor(
            self._pool, self.processor.process, request_id or uuid.uuid4().hex, prompt, list(images),
            params or SamplingParams(),
        )
        num_tokens, context_len = len(tokenized.input_ids), self.info.context_len
        if num_tokens >= context_len:
            raise ContextTooLong(
                f"the prompt has {num_tokens} tokens but the model's context is {context_len} tokens "
                "(prompt plus output); shorten the prompt or use fewer images"
            )
        return tokenized

    async def stream(
        self, prompt: str | Sequence[int] | TokenizedRequest, images: Sequence[object] = (),
        params: SamplingParams | None = None, request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput per step until the request finishes.

        Raises InvalidRequest for inputs a user got wrong (before anything is generated),
        EngineError if the request fails inside the engine, EngineDeadError if the engine
        process dies. Closing the iterator early aborts the request.
        """
        if isinstance(prompt, TokenizedRequest):
            tokenized = prompt
        else:
            tokenized = await self.tokenize(prompt, images, params, request_id)
        params = tokenized.params
        assert self.processor is not None
        detok = IncrementalDetokenizer(self.processor.tokenizer, params.stop, params.skip_special_tokens)
        state = RequestOutput(tokenized.request_id)
        if params.logprobs or params.top_logprobs:
            state.logprobs = []
            state.top_logprobs = [] if params.top_logprobs else None
        outputs = self.client.generate(tokenized)
        try:
            async for out in outputs:
                if out.error is not None:
                    if out.error_kind == "context":
                        raise ContextTooLong(out.error)
                    if out.error_kind == "invalid":
                        raise InvalidRequest(out.error)
                    raise EngineError(out.error)
                self._update(state, out, detok)
                yield state
                if state.finished:
                    return
        finally:
            # Closing the client's stream before it finished (a stop string matched, or our
            # caller left) aborts the request in the engine now, not at garbage collection.
            await outputs.aclose()

    @staticmethod
    def _update(state: RequestOutput, out, detok: IncrementalDetokenizer) -> None:
        state.prompt_tokens, state.cached_tokens = out.prompt_tokens, out.cached_tokens
        state.token_ids.extend(out.token_ids)
        if state.logprobs is not None and out.logprobs:
            state.logprobs.extend(out.logprobs)
        if state.top_logprobs is not None and out.top_logprobs:
            state.top_logprobs.extend(out.top_logprobs)
        finish = out.finish_reason
        state.delta = detok.add(out.token_ids, final=finish is not None)
        state.text = detok.text
        if detok.stopped:
            state.finish_reason, state.matched_stop = "stop", detok.matched_stop
        elif finish is not None:
            state.finish_reason = finish
            if finish == "stop" and state.token_ids:
                state.matched_stop = state.token_ids[-1]

    async def generate(
        self, prompt: str | Sequence[int] | TokenizedRequest, images: Sequence[object] = (),
        params: SamplingParams | None = None, request_id: str | None = None,
    ) -> RequestOutput:
        """The final RequestOutput of a request."""
        final = None
        async for output in self.stream(prompt, images, params, request_id):
            final = output
        assert final is not None
        return final

    async def shutdown(self) -> None:
        await self.client.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
