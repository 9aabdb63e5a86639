"""bench: a serving benchmark against the daemon or any OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated

import typer

from vlmctl.cli.common import CommandError, Globals, UsageError, run
from vlmctl.client import APIFailure, DaemonClient

_WORDS = ("red blue green circle square triangle star left right large small bright dark shape colour "
          "picture image corner middle top bottom").split()


def register(app: typer.Typer) -> None:
    app.command()(bench)


@dataclass(slots=True)
class Result:
    ok: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl: list[float] = field(default_factory=list)


def make_image(rng: random.Random, size: int) -> str:
    from PIL import Image

    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def make_body(rng: random.Random, images: int, size: int, input_len: int, output_len: int, model: str | None) -> dict:
    content = [{"type": "image_url", "image_url": {"url": make_image(rng, size)}} for _ in range(images)]
    content.append({"type": "text", "text": " ".join(rng.choice(_WORDS) for _ in range(input_len))})
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    return body


async def one(client: DaemonClient, body: dict) -> Result:
    result = Result(start=time.perf_counter())
    last = result.start
    try:
        async for event in client.events("POST", "/v1/chat/completions", body):
            now = time.perf_counter()
            if event.get("usage"):
                result.output_tokens = event["usage"]["completion_tokens"]
                result.prompt_tokens = event["usage"]["prompt_tokens"]
            if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                if result.ttft == 0.0:
                    result.ttft = now - result.start
                else:
                    result.itl.append(now - last)
                last = now
        result.latency = time.perf_counter() - result.start
        result.ok = True
    except (APIFailure, OSError, ValueError) as exc:
        result.error = str(exc)
    return result


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def summarize(results: list[Result], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens for r in done)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    ms = lambda values: {k: v * 1000 for k, v in _stats(values).items()}  # noqa: E731
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": duration,
        "request_throughput": len(done) / duration, "output_token_throughput": output / duration,
        "total_token_throughput": (output + prompt) / duration, "total_output_tokens": output,
        "total_prompt_tokens": prompt, "ttft_ms": ms([r.ttft for r in done]), "tpot_ms": ms(tpot),
        "itl_ms": ms([x for r in done for x in r.itl]), "errors": sorted({r.error for r in results if r.error})[:3],
    }


def bench(ctx: typer.Context,
          num_requests: Annotated[int, typer.Option("--num-requests", "-n", min=1)] = 32,
          concurrency: Annotated[int | None, typer.Option("--concurrency", min=1,
                                                          help="requests in flight (default 8)")] = None,
          request_rate: Annotated[float | None, typer.Option("--request-rate", min=0.001,
                                                             help="Poisson arrivals per second (instead of a fixed concurrency)")] = None,
          images_per_request: Annotated[int, typer.Option("--images-per-request", min=0)] = 1,
          image_size: Annotated[int, typer.Option("--image-size", min=8, help="square image side in pixels")] = 336,
          input_len: Annotated[int, typer.Option("--input-len", min=1, help="words of text per request")] = 32,
          output_len: Annotated[int, typer.Option("--output-len", min=1, help="tokens to generate (EOS ignored)")] = 64,
          seed: Annotated[int, typer.Option("--seed")] = 0,
          model: Annotated[str | None, typer.Option("--model", help="model name to send")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False):
    """Benchmark serving: throughput, TTFT, TPOT and inter-token latency (mean, median, p99).

    Against the daemon, or any OpenAI-compatible server with --url.
    Example: vlmctl bench --num-requests 64 --concurrency 16 --images-per-request 2
    """
    g: Globals = ctx.obj
    if request_rate is not None and concurrency is not None:
        raise UsageError("give --concurrency or --request-rate, not both")
    rng = random.Random(seed)
    bodies = [make_body(rng, images_per_request, image_size, input_len, output_len, model) for _ in range(num_requests)]
    summary = run(_run(g, bodies, concurrency or 8, request_rate, rng))
    if summary["completed"] == 0:
        raise CommandError(f"every request failed: {'; '.join(summary['errors']) or 'no answer'}")
    if as_json:
        print(json.dumps(summary))
        return
    _print_table(summary)


async def _run(g: Globals, bodies: list[dict], concurrency: int, rate: float | None, rng: random.Random) -> dict:
    progress = None
    if g.is_tty:
        from rich.console import Console
        from rich.progress import Progress

        progress = Progress(transient=True, console=Console(stderr=True))
        task = progress.add_task("requests", total=len(bodies))
        progress.start()
    async with g.client() as client:
        status = await client.health()
        if status is None:
            from vlmctl.client import DaemonUnreachable

            raise DaemonUnreachable(f"no server at {client.where}")
        while status == 503:  # still loading its model
            await asyncio.sleep(0.5)
            status = await client.health()
        slots = asyncio.Semaphore(len(bodies) if rate else concurrency)

        async def guarded(body: dict) -> Result:
            async with slots:
                result = await one(client, body)
            if progress is not None:
                progress.advance(task)
            return result

        start = time.perf_counter()
        tasks = []
        for body in bodies:
            tasks.append(asyncio.ensure_future(guarded(body)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    if progress is not None:
        progress.stop()
    return summarize(results, duration)


def _print_table(s: dict) -> None:
    rows = [
        ("Successful requests", f"{s['completed']}"), ("Failed requests", f"{s['failed']}"),
        ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
        ("Total prompt tokens", f"{s['total_prompt_tokens']}"), ("Total output tokens", f"{s['total_output_tokens']}"),
        ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{s['output_token_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{s['total_token_throughput']:.2f}"),
    ]
    for key, title in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL")):
        for stat in ("mean", "median", "p99"):
            rows.append((f"{stat.capitalize()} {title} (ms)", f"{s[key][stat]:.2f}"))
    width = max(len(name) for name, _ in rows)
    out = sys.stdout
    out.write(f"{' Serving Benchmark Result ':=^{width + 14}}\n")
    for name, value in rows:
        out.write(f"{name:<{width}}  {value:>12}\n")
    out.write("=" * (width + 14) + "\n")
