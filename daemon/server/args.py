"""Command-line options of the daemon, with SGLang's names where SGLang has them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmctl.daemon.attention import BACKENDS
from vlmctl.daemon.engine.scheduler import POLICIES
from vlmctl.daemon.server.state import ServerConfig
from vlmctl.daemon.worker.config import DTYPES, EngineConfig


def default_socket() -> Path:
    from vlmctl.paths import paths

    return paths().socket


class OneLineParser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {number}")
    return number


def build_parser(prog: str = "python -m vlmctl.daemon") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="The vlmctl daemon: one VLM behind an OpenAI-compatible API.")
    add = p.add_argument
    add("--model-path", "--model", dest="model_path", required=True, help="local model folder or cached hub id")
    add("--tokenizer-path", help="tokenizer folder, if not the model's")
    add("--chat-template", help="built-in name (vicuna_v1.1, chatml-llava, llama_3_vision, llava_llama_3, "
        "qwen2-vl), a .jinja file or a JSON file in SGLang's format; default: the model's own")
    add("--served-model-name", help="the model name the API reports and accepts")
    add("--dtype", choices=DTYPES, default="auto", help="weights and KV cache dtype")
    add("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    add("--context-length", type=_positive, help="override the model's context length")
    add("--mem-fraction-static", type=_fraction, default=0.85, help="GPU memory for weights and KV cache")
    add("--max-total-tokens", type=_positive, help="KV cache size in tokens (overrides the memory fraction)")
    add("--max-running-requests", type=_positive, default=64, help="running batch size limit")
    add("--max-prefill-tokens", type=_positive, default=16384, help="token budget of one prefill batch")
    add("--chunked-prefill-size", type=int, default=None,
        help="accepted for SGLang compatibility; prefills are not chunked yet")
    add("--schedule-policy", choices=sorted(POLICIES), default="fcfs", help="order of the waiting queue")
    add("--attention-backend", choices=list(BACKENDS), default="torch_native", help="attention kernels")
    add("--random-seed", type=int, help="seed of the sampler's default generator")
    add("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    add("--log-requests", action="store_true", help="log every request's method, path and status")
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    add("--decode-log-interval", type=_positive, default=40, help="log a decode batch line every N steps")
    add("--host", default="127.0.0.1", help="TCP host (with --port)")
    add("--port", type=int, help="also listen on this TCP port")
    add("--socket", type=Path, default=None, help="Unix socket path (default: in the user runtime directory)")
    add("--max-queued-requests", type=_positive, default=256, help="requests in flight beyond the running batch")
    add("--max-images-per-request", type=_positive, default=16)
    add("--max-image-bytes", type=_positive, default=20 * 1024 * 1024, help="largest image download or upload")
    add("--max-image-pixels", type=_positive, help="downscale larger images before preprocessing")
    add("--allow-private-image-urls", action="store_true",
        help="allow image URLs on loopback and private networks (off: such URLs are a 400)")
    add("--allowed-local-media-path", type=Path, help="image_data paths are allowed under this directory")
    add("--default-max-tokens", type=_positive, help="max_tokens when a request gives none (default: up to the context)")
    add("--shutdown-grace", type=float, default=10.0, help="seconds in-flight requests get on SIGTERM")
    add("--idle-timeout", type=float, help="exit after this many seconds without requests (default: never)")
    return p


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        engine = EngineConfig(
            model=args.model_path, tokenizer=args.tokenizer_path, device=device, dtype=args.dtype,
            context_length=args.context_length, max_total_tokens=args.max_total_tokens,
            mem_fraction_static=args.mem_fraction_static, max_running_requests=args.max_running_requests,
            max_prefill_tokens=args.max_prefill_tokens, schedule_policy=args.schedule_policy,
            attention_backend=args.attention_backend, random_seed=args.random_seed,
            decode_log_interval=args.decode_log_interval, log_level=args.log_level,
        )
    except ValueError as exc:
        build_parser().error(str(exc))
    return ServerConfig(
        engine=engine,
        socket=(args.socket or default_socket()).expanduser(),
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        chat_template=args.chat_template,
        max_queued_requests=args.max_queued_requests,
        max_images_per_request=args.max_images_per_request,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        allow_private_image_urls=args.allow_private_image_urls,
        allowed_local_media_path=args.allowed_local_media_path,
        log_requests=args.log_requests,
        shutdown_grace=args.shutdown_grace,
        default_max_tokens=args.default_max_tokens,
        idle_timeout=args.idle_timeout,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"},
    )
