"""The OpenAPI 3 description of the routes, kept next to what they accept."""

from __future__ import annotations

from functools import cache

_SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
    "min_tokens": {"type": "integer", "minimum": 0}, "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "top_k": {"type": "integer"},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0}, "seed": {"type": "integer"},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]},
    "stop_token_ids": {"type": "array", "items": {"type": "integer"}}, "ignore_eos": {"type": "boolean"},
    "n": {"type": "integer", "minimum": 1, "maximum": 16}, "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "model": {"type": "string"},
}
_PART = {"oneOf": [
    {"type": "object", "required": ["type", "text"],
     "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
    {"type": "object", "required": ["type", "image_url"],
     "properties": {"type": {"const": "image_url"}, "image_url": {
         "type": "object", "required": ["url"],
         "properties": {"url": {"type": "string", "description": "http(s) URL or data:image/...;base64,..."},
                        "detail": {"type": "string"}}}}},
]}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant"]},
    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _PART}]}}}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
    "code": {"type": ["string", "null"]}}}}}


def _post(summary: str, schema: dict) -> dict:
    errors = {str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
              for code, text in ((400, "invalid request"), (401, "missing or wrong API key"),
                                 (404, "unknown model"), (503, "loading or at capacity"))}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}, "responses": {
        "200": {"description": "JSON, or text/event-stream when stream is true"}, **errors}}}


def _get(summary: str) -> dict:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}


@cache
def openapi_spec() -> dict:
    chat = {"type": "object", "required": ["messages"], "properties": {
        **_SAMPLING, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}}
    completion = {"type": "object", "required": ["prompt"], "properties": {
        **_SAMPLING, "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}}
    generate = {"type": "object", "properties": {
        "text": {"type": "string"}, "input_ids": {"type": "array", "items": {"type": "integer"}},
        "image_data": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "sampling_params": {"type": "object", "properties": {
            "max_new_tokens": {"type": "integer"}, "min_new_tokens": {"type": "integer"},
            "temperature": {"type": "number"}, "top_p": {"type": "number"}, "top_k": {"type": "integer"},
            "min_p": {"type": "number"}, "frequency_penalty": {"type": "number"},
            "presence_penalty": {"type": "number"}, "repetition_penalty": {"type": "number"},
            "stop": _SAMPLING["stop"], "stop_token_ids": _SAMPLING["stop_token_ids"],
            "ignore_eos": {"type": "boolean"}, "skip_special_tokens": {"type": "boolean"},
            "sampling_seed": {"type": "integer"}}},
        "stream": {"type": "boolean"}, "rid": {"type": "string"}}}
    abort = {"type": "object", "required": ["rid"], "properties": {"rid": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "vlmctl", "version": __import__("vlmctl").__version__},
        "paths": {
            "/v1/chat/completions": _post("OpenAI chat completion, with image_url parts", chat),
            "/v1/completions": _post("OpenAI text completion", completion),
            "/v1/models": _get("The served model"),
            "/generate": _post("SGLang native generation", generate),
            "/abort_request": _post("Abort a /generate request by rid", abort),
            "/flush_cache": {"post": {"summary": "Flush the prefix cache", "responses": {"200": {"description": "OK"}}}},
            "/get_model_info": _get("Model path and kind"),
            "/get_server_info": _get("Arguments, KV pool usage, running and queued requests"),
            "/health": _get("200 when the model can generate, 503 while loading"),
            "/health_generate": _get("200 when a one-token generation succeeds"),
            "/metrics": _get("Prometheus metrics"),
            "/v1/metrics/stream": _get("Server-sent events: one record per logged scheduler step"),
            "/openapi.json": _get("This document"),
        },
    }
