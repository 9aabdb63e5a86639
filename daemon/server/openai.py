"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from vlmctl.daemon.server.protocol import bad, field, openai_sampling, parse_chat, to_api_error
from vlmctl.daemon.server.sse import sse_response, write_event
from vlmctl.daemon.server.state import ServerState
from vlmctl.daemon.worker.async_engine import RequestOutput
from vlmctl.daemon.worker.messages import TokenizedRequest

routes = web.RouteTableDef()


async def read_json(request: web.Request) -> dict:
    """The request's JSON body, which must be an object (400 otherwise)."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def copies_for_choices(first: TokenizedRequest, n: int) -> list[TokenizedRequest]:
    """n copies of a prepared request (images fetched and preprocessed once) that sample
    independently; with a seed, choice i uses seed + i, so the set stays reproducible."""
    params = first.params
    out = [first]
    for i in range(1, n):
        seed = None if params.seed is None else params.seed + i
        out.append(replace(first, request_id=uuid.uuid4().hex, params=replace(params, seed=seed)))
    return out


def logprobs_content(output: RequestOutput, tokenizer, start: int = 0) -> list[dict] | None:
    if output.logprobs is None:
        return None
    entries = []
    for i in range(start, len(output.logprobs)):
        token = tokenizer.decode([output.token_ids[i]])
        entry: dict[str, Any] = {"token": token, "logprob": output.logprobs[i], "bytes": list(token.encode())}
        tops = output.top_logprobs[i] if output.top_logprobs else []
        entry["top_logprobs"] = [
            {"token": (t := tokenizer.decode([tid])), "logprob": lp, "bytes": list(t.encode())} for tid, lp in tops
        ]
        entries.append(entry)
    return entries


def usage(outputs: list[RequestOutput]) -> dict:
    prompt = outputs[0].prompt_tokens if outputs else 0
    completion = sum(o.completion_tokens for o in outputs)
    cached = outputs[0].cached_tokens if outputs else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: ServerState = request.app["state"]
    chat = parse_chat(await read_json(request), state.config.default_max_tokens)
    state.check_model(chat.model)
    state.admit()
    try:
        assert state.template is not None
        rendered = state.template.render(chat.messages)
        params = replace(chat.params, stop=chat.params.stop + [s for s in rendered.stop if s not in chat.params.stop])
        prepared = copies_for_choices(await state.prepare(rendered.prompt, rendered.images, params), chat.n)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name}
        if chat.stream:
            return await _stream_chat(request, state, prepared, meta, chat.include_usage)
        outputs = await asyncio.gather(*(_final(state, t) for t in prepared))
    finally:
        state.release()
    tokenizer = state.engine.processor.tokenizer
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": {"content": logprobs_content(out, tokenizer)} if out.logprobs is not None else None,
            "finish_reason": out.finish_reason,
            "matched_stop": out.matched_stop,
        }
        for i, out in enumerate(outputs)
    ]
    return web.json_response({**meta, "object": "chat.completion", "choices": choices, "usage": usage(outputs)})


async def _final(state: ServerState, tokenized) -> RequestOutput:
    final = None
    async for output in state.stream(tokenized):
        final = output
    assert final is not None
    return final


async def _stream_chat(request, state: ServerState, prepared, meta: dict, include_usage: bool) -> web.StreamResponse:
    response = await sse_response(request)
    tokenizer = state.engine.processor.tokenizer
    head = {**meta, "object": "chat.completion.chunk"}
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, tokenized) -> None:
        try:
            async for output in state.stream(tokenized):
                await queue.put((index, output, None))
        except Exception as exc:  # reported in the stream: the status line is already sent
            await queue.put((index, None, exc))
        finally:
            await queue.put((index, None, StopAsyncIteration()))

    tasks = [asyncio.ensure_future(pump(i, t)) for i, t in enumerate(prepared)]
    finals: dict[int, RequestOutput] = {}
    sent_logprobs = dict.fromkeys(range(len(prepared)), 0)
    try:
        for i in range(len(prepared)):
            delta = {"role": "assistant", "content": ""}
            await write_event(response, {**head, "choices": [{"index": i, "delta": delta, "finish_reason": None}]})
        remaining = len(prepared)
        while remaining:
            index, output, error = await queue.get()
            if isinstance(error, StopAsyncIteration):
                remaining -= 1
                continue
            if error is not None:
                await write_event(response, to_api_error(error).body())
                continue
            choice: dict[str, Any] = {"index": index, "delta": {"content": output.delta} if output.delta else {},
                                      "finish_reason": output.finish_reason}
            if output.logprobs is not None:
                choice["logprobs"] = {"content": logprobs_content(output, tokenizer, sent_logprobs[index])}
                sent_logprobs[index] = len(output.logprobs)
            if output.finished:
                choice["matched_stop"] = output.matched_stop
                finals[index] = output
            if choice["delta"] or output.finished or output.logprobs is not None:
                await write_event(response, {**head, "choices": [choice]})
        if include_usage:
            ordered = [finals[i] for i in sorted(finals)]
            await write_event(response, {**head, "choices": [], "usage": usage(ordered)})
        await response.write(b"data: [DONE]\n\n")
    finally:
        for task in tasks:
            task.cancel()  # a client that left aborts its requests
        await asyncio.gather(*tasks, return_exceptions=True)
    return response


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    state: ServerState = request.app["state"]
    body = await read_json(request)
    state.check_model(field(body, "model", str))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))):
        raise bad("'prompt' must be a string or an array of token ids", "prompt")
    params = openai_sampling(body, state.config.default_max_tokens)
    n = field(body, "n", int, 1)
    if not 1 <= n <= 16:
        raise bad("'n' must be between 1 and 16", "n")
    stream = field(body, "stream", bool, False)
    include_usage = bool(field(field(body, "stream_options", dict, {}), "include_usage", bool, False))
    state.admit()
    try:
        prepared = copies_for_choices(await state.prepare(prompt, [], params), n)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": state.model_name}
        if stream:
            return await _stream_completion(request, state, prepared, meta, include_usage)
        outputs = await asyncio.gather(*(_final(state, t) for t in prepared))
    finally:
        state.release()
    choices = [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason,
                "matched_stop": o.matched_stop} for i, o in enumerate(outputs)]
    return web.json_response({**meta, "choices": choices, "usage": usage(outputs)})


async def _stream_completion(request, state: ServerState, prepared, meta: dict, include_usage: bool):
    response = await sse_response(request)
    finals = []
    for index, tokenized in enumerate(prepared):
        final = None
        async for output in state.stream(tokenized):
            final = output
            if output.delta or output.finished:
                choice = {"index": index, "text": output.delta, "logprobs": None,
                          "finish_reason": output.finish_reason}
                await write_event(response, {**meta, "choices": [choice]})
        finals.append(final)
    if include_usage:
        await write_event(response, {**meta, "choices": [], "usage": usage(finals)})
    await response.write(b"data: [DONE]\n\n")
    return response


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    state: ServerState = request.app["state"]
    info = state.engine.info
    entry = {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "vlmctl",
             "root": state.config.engine.model, "max_model_len": info.context_len if info else None}
    return web.json_response({"object": "list", "data": [entry]})
