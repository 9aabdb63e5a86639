"""SGLang's native routes: /generate, model and server info, health, abort, flush, metrics."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import asdict

from aiohttp import web

from vlmctl.daemon.engine.sampling_params import SamplingParams
from vlmctl.daemon.server.openai import read_json
from vlmctl.daemon.server.protocol import APIError, bad, field, native_sampling
from vlmctl.daemon.server.sse import sse_response, write_event
from vlmctl.daemon.server.state import ServerState
from vlmctl.daemon.worker.async_engine import RequestOutput

routes = web.RouteTableDef()


def meta_info(rid: str, output: RequestOutput) -> dict:
    finish = None
    if output.finish_reason:
        finish = {"type": output.finish_reason}
        if output.matched_stop is not None:
            finish["matched"] = output.matched_stop
        if output.finish_reason == "length":
            finish["length"] = output.completion_tokens
    return {"id": rid, "finish_reason": finish, "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens, "cached_tokens": output.cached_tokens}


@routes.post("/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    state: ServerState = request.app["state"]
    body = await read_json(request)
    text, input_ids = field(body, "text", str), field(body, "input_ids", list)
    if (text is None) == (input_ids is None):
        raise bad("give exactly one of 'text' and 'input_ids'", "text")
    if input_ids is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in input_ids):
        raise bad("'input_ids' must be an array of integers", "input_ids")
    images = body.get("image_data") or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise bad("'image_data' must be a string or an array of strings (URL, data URI or path)", "image_data")
    params = native_sampling(field(body, "sampling_params", dict, {}), state.config.default_max_tokens)
    rid = field(body, "rid", str) or uuid.uuid4().hex
    stream = field(body, "stream", bool, False)
    prompt = input_ids if input_ids is not None else _with_image_tokens(state, text, len(images))
    state.admit()
    try:
        tokenized = await state.prepare(prompt, images, params, request_id=f"{rid}-{uuid.uuid4().hex[:8]}")
        if stream:
            response = await sse_response(request)
            async for output in state.stream(tokenized, rid):
                await write_event(response, {"text": output.text, "output_ids": output.token_ids,
                                             "meta_info": meta_info(rid, output)})
            await response.write(b"data: [DONE]\n\n")
            return response
        final = None
        async for output in state.stream(tokenized, rid):
            final = output
    finally:
        state.release()
    assert final is not None
    return web.json_response({"text": final.text, "output_ids": final.token_ids, "meta_info": meta_info(rid, final)})


def _with_image_tokens(state: ServerState, text: str, num_images: int) -> str:
    """As SGLang: images without placeholders in the text get image tokens in front of it."""
    token = state.engine.processor.image_token
    if num_images and token and token not in text:
        return "".join(f"{token}\n" for _ in range(num_images)) + text
    return text


@routes.get("/get_model_info")
async def model_info(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    info = state.engine.info
    return web.json_response({
        "model_path": state.config.engine.model,
        "tokenizer_path": state.config.engine.tokenizer or state.config.engine.model,
        "served_model_name": state.model_name,
        "is_generation": True,
        "architecture": info.architecture if info else None,
        "context_length": info.context_len if info else None,
        "has_image_understanding": bool(state.engine.processor and state.engine.processor.multimodal),
    })


@routes.get("/get_server_info")
async def server_info(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    info = state.engine.info
    load = state.engine.client.load
    return web.json_response({
        **state.config.args,
        "version": __import__("vlmctl").__version__,
        "pid": os.getpid(),
        "socket": str(state.config.socket),
        "url": f"http://{state.config.host}:{state.config.port}" if state.config.port else None,
        "ready": state.ready,
        "uptime_s": time.time() - state.started,
        "engine": asdict(info) if info else None,
        "num_running_reqs": load.num_running,
        "num_queue_reqs": load.num_waiting,
        "num_inflight_reqs": state.inflight,
        "kv_pool": {"num_total_tokens": load.num_total_tokens, "num_used_tokens": load.num_used_tokens,
                    "token_usage": load.token_usage},
    })


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    if not state.ready:
        return web.json_response({"status": "loading"}, status=503)
    if not state.engine.client.alive:
        return web.json_response({"status": "engine down"}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/health_generate")
async def health_generate(request: web.Request) -> web.Response:
    """Healthy when the engine generates a token within 20 s."""
    state: ServerState = request.app["state"]
    if not state.ready:
        return web.json_response({"status": "loading"}, status=503)
    try:
        tokenized = await state.prepare([0], [], SamplingParams(max_tokens=1, temperature=0.0))
        await asyncio.wait_for(_drain(state, tokenized), 20)
    except Exception as exc:  # any failure means unhealthy; the reason goes in the body
        return web.json_response({"status": "unhealthy", "reason": str(exc)}, status=503)
    return web.json_response({"status": "ok"})


async def _drain(state: ServerState, tokenized) -> None:
    async for _ in state.engine.stream(tokenized):
        pass


@routes.post("/abort_request")
async def abort_request(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    rid = field(await read_json(request), "rid", str)
    if not rid:
        raise bad("'rid' must be the id given to /generate", "rid")
    engine_id = state.rids.get(rid)
    if engine_id is None:
        raise APIError(404, f"no running request with rid {rid!r}", param="rid", code="not_found")
    state.engine.client.abort(engine_id)
    return web.json_response({"rid": rid, "aborted": True})


@routes.post("/flush_cache")
async def flush_cache(request: web.Request) -> web.Response:
    # There is no prefix cache yet, so nothing outlives a request: nothing to flush.
    return web.Response(text="Cache flushed.\n")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    text = state.metrics.render(state.engine.client.load, state.model_name)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


@routes.get("/v1/metrics/stream")
async def metrics_stream(request: web.Request) -> web.StreamResponse:
    """One JSON record per logged scheduler step, until the client or the engine goes."""
    state: ServerState = request.app["state"]
    if not state.ready:
        raise APIError(503, "the model is still loading", type_="service_unavailable")
    client = state.engine.client
    queue = client.subscribe_stats()
    response = await sse_response(request)
    try:
        while True:
            record = await queue.get()
            if isinstance(record, Exception):
                break
            await write_event(response, {**record.to_dict(), "line": record.log_line()})
    finally:
        client.unsubscribe_stats(queue)
    return response
