"""Request bodies -> typed requests, with OpenAI-style errors for anything malformed.

Unknown fields are ignored; a known field of the wrong type or out of range is a 400 that
names it (`param`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmctl.daemon.engine.request import ContextTooLong
from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.frontend.chat_templates import ChatMessage
from vlmctl.daemon.frontend.images import ImageError
from vlmctl.daemon.worker.async_engine import EngineError
from vlmctl.daemon.worker.client import EngineDeadError


class APIError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def to_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextTooLong):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), param="messages", code="invalid_image")
    if isinstance(exc, InvalidRequest):
        return APIError(400, str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine is not running: {exc}", type_="service_unavailable")
    if isinstance(exc, EngineError):
        return APIError(500, f"the request failed in the engine: {exc}", type_="server_error")
    return APIError(500, f"internal error: {type(exc).__name__}", type_="server_error")


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


def field(body: dict, name: str, kind: type | tuple[type, ...], default: Any = None, nullable: bool = True) -> Any:
    """body[name] checked against `kind` (bool is not an int; an int is a float)."""
    value = body.get(name, default)
    if value is None:
        if not nullable and name in body:
            raise bad(f"'{name}' must not be null", name)
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = any(
        isinstance(value, k) and not (k in (int, float) and isinstance(value, bool)) for k in kinds
    ) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise bad(f"'{name}' must be {names}, not {type(value).__name__}", name)
    return float(value) if kinds == (float,) else value


def parse_stop(value: Any, param: str = "stop") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise bad(f"'{param}' must be a string or an array of strings", param)


def openai_sampling(body: dict, default_max_tokens: int | None) -> SamplingParams:
    """SamplingParams from an OpenAI (chat) completion body, with SGLang's extensions."""
    max_tokens = field(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = field(body, "max_tokens", int)
    logprobs = field(body, "logprobs", (bool, int))
    top_logprobs = field(body, "top_logprobs", int, 0)
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):  # /v1/completions: an int
        top_logprobs, logprobs = logprobs, True
    stop_token_ids = field(body, "stop_token_ids", list, [])
    return make_params(
        "max_tokens",
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        min_tokens=field(body, "min_tokens", int, 0),
        temperature=field(body, "temperature", float, 1.0),
        top_p=field(body, "top_p", float, 1.0),
        top_k=field(body, "top_k", int),
        min_p=field(body, "min_p", float, 0.0),
        repetition_penalty=field(body, "repetition_penalty", float, 1.0),
        frequency_penalty=field(body, "frequency_penalty", float, 0.0),
        presence_penalty=field(body, "presence_penalty", float, 0.0),
        seed=field(body, "seed", int),
        stop=parse_stop(body.get("stop")),
        stop_token_ids=stop_token_ids,
        ignore_eos=field(body, "ignore_eos", bool, False),
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs,
        skip_special_tokens=field(body, "skip_special_tokens", bool, True),
    )


def native_sampling(params: dict, default_max_tokens: int | None) -> SamplingParams:
    """SamplingParams from SGLang's native `sampling_params` object."""
    max_tokens = field(params, "max_new_tokens", int)
    return make_params(
        "sampling_params",
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        min_tokens=field(params, "min_new_tokens", int, 0),
        temperature=field(params, "temperature", float, 1.0),
        top_p=field(params, "top_p", float, 1.0),
        top_k=field(params, "top_k", int),
        min_p=field(params, "min_p", float, 0.0),
        repetition_penalty=field(params, "repetition_penalty", float, 1.0),
        frequency_penalty=field(params, "frequency_penalty", float, 0.0),
        presence_penalty=field(params, "presence_penalty", float, 0.0),
        seed=field(params, "sampling_seed", int),
        stop=parse_stop(params.get("stop"), "sampling_params.stop"),
        stop_token_ids=field(params, "stop_token_ids", list, []),
        ignore_eos=field(params, "ignore_eos", bool, False),
        skip_special_tokens=field(params, "skip_special_tokens", bool, True),
    )


def make_params(param: str, **kwargs: Any) -> SamplingParams:
    try:
        return SamplingParams(**kwargs)
    except InvalidRequest as exc:
        name = str(exc).split(" ", 1)[0]
        raise bad(str(exc), name if name in kwargs else param) from exc


@dataclass(slots=True)
class ChatRequest:
    model: str | None
    messages: list[ChatMessage]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool


def parse_chat(body: dict, default_max_tokens: int | None) -> ChatRequest:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array", "messages")
    messages = [_parse_message(m, i) for i, m in enumerate(raw)]
    stream_options = field(body, "stream_options", dict, {})
    n = field(body, "n", int, 1)
    if not 1 <= n <= 16:
        raise bad("'n' must be between 1 and 16", "n")
    return ChatRequest(
        model=field(body, "model", str),
        messages=messages,
        params=openai_sampling(body, default_max_tokens),
        n=n,
        stream=field(body, "stream", bool, False),
        include_usage=bool(field(stream_options, "include_usage", bool, False)),
    )


def _parse_message(message: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(f"'{where}' must be an object", where)
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise bad(f"'{where}.role' must be system, user or assistant", f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant":
        return ChatMessage(role, [])
    if isinstance(content, str):
        return ChatMessage(role, [("text", content)])
    if not isinstance(content, list):
        raise bad(f"'{where}.content' must be a string or an array of parts", f"{where}.content")
    parts: list[tuple[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(("text", part["text"]))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad(f"'{param}.image_url.url' must be a non-empty string", f"{param}.image_url.url")
            parts.append(("image", url))
        else:
            raise bad(f"'{param}' must be a text part or an image_url part", param)
    return ChatMessage(role, parts)
