"""What the HTTP handlers share: settings, the engine, templates, media, metrics, load."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmctl.daemon.engine.sampling_params import SamplingParams
from vlmctl.daemon.frontend.chat_templates import ChatTemplate, load_chat_template
from vlmctl.daemon.frontend.media import MediaFetcher, MediaLimits
from vlmctl.daemon.server.metrics import Metrics, RequestTimer
from vlmctl.daemon.server.protocol import APIError
from vlmctl.daemon.worker.async_engine import AsyncEngine, RequestOutput
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.messages import TokenizedRequest


@dataclass(frozen=True, slots=True)
class ServerConfig:
    engine: EngineConfig
    socket: Path
    host: str = "127.0.0.1"
    port: int | None = None
    api_key: str | None = None
    served_model_name: str | None = None
    chat_template: str | None = None
    max_queued_requests: int = 256
    max_images_per_request: int = 16
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int | None = None
    allow_private_image_urls: bool = False
    allowed_local_media_path: Path | None = None
    log_requests: bool = False
    shutdown_grace: float = 10.0
    default_max_tokens: int | None = None
    idle_timeout: float | None = None
    args: dict = field(default_factory=dict)  # as given, for /get_server_info


class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine = AsyncEngine(config.engine, max_image_pixels=config.max_image_pixels)
        self.fetcher = MediaFetcher(MediaLimits(
            max_image_bytes=config.max_image_bytes,
            allow_private_urls=config.allow_private_image_urls,
            allowed_local_path=config.allowed_local_media_path,
        ))
        self.metrics = Metrics()
        self.template: ChatTemplate | None = None
        self.ready = False
        self.started = time.time()
        self.inflight = 0
        self.last_activity = time.monotonic()
        self.rids: dict[str, str] = {}  # user-visible rid -> engine request id
        self._fetch_slots = asyncio.Semaphore(16)

    @property
    def model_name(self) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        return self.config.engine.model

    async def start(self) -> None:
        """Start the engine and load the chat template; the server answers 503 until done."""
        await self.engine.start()
        processor = self.engine.processor
        assert processor is not None
        self.template = load_chat_template(self.config.chat_template, processor.tokenizer, processor.image_token)
        self.ready = True
        self.last_activity = time.monotonic()  # the idle clock starts when the model is ready

    async def close(self) -> None:
        self.ready = False
        await self.fetcher.close()
        await self.engine.shutdown()

    def check_model(self, name: str | None) -> None:
        if name and name not in (self.model_name, self.config.engine.model):
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def admit(self) -> None:
        """Count a request in, or 503 when the queue is full."""
        if not self.ready:
            raise APIError(503, "the model is still loading", type_="service_unavailable")
        limit = self.config.engine.max_running_requests + self.config.max_queued_requests
        if self.inflight >= limit:
            raise APIError(503, f"the server is at capacity ({limit} requests in flight); retry later",
                           type_="service_unavailable")
        self.inflight += 1
        self.last_activity = time.monotonic()

    def release(self) -> None:
        self.inflight -= 1
        self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.inflight else time.monotonic() - self.last_activity

    async def prepare(
        self, prompt: str | list[int], images: Sequence[Any], params: SamplingParams, request_id: str | None = None
    ) -> TokenizedRequest:
        """Fetch/decode the images and tokenize: every user error surfaces here, as a 400."""
        if len(images) > self.config.max_images_per_request:
            raise APIError(400, f"at most {self.config.max_images_per_request} images per request",
                           param="messages")
        data = await asyncio.gather(*(self._fetch(source) for source in images))
        return await self.engine.tokenize(prompt, data, params, request_id or uuid.uuid4().hex)

    async def _fetch(self, source: Any) -> Any:
        if not isinstance(source, str):
            return source
        async with self._fetch_slots:
            return await self.fetcher.fetch(source)

    async def stream(self, tokenized: TokenizedRequest, rid: str | None = None) -> AsyncIterator[RequestOutput]:
        """The engine's stream, with metrics; `rid` makes it abortable via /abort_request."""
        timer = RequestTimer(self.metrics)
        seen = 0
        status = "error"
        last: RequestOutput | None = None
        if rid:
            self.rids[rid] = tokenized.request_id
        try:
            async for output in self.engine.stream(tokenized):
                timer.on_tokens(len(output.token_ids) - seen)
                seen = len(output.token_ids)
                last = output
                yield output
            status = last.finish_reason if last and last.finish_reason else "error"
        except (asyncio.CancelledError, GeneratorExit):
            status = "abort"
            raise
        finally:
            if rid:
                self.rids.pop(rid, None)
            timer.done()
            self.metrics.finish(status, last.prompt_tokens if last else 0, last.cached_tokens if last else 0, seen)
