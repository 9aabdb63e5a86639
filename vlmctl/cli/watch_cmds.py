"""metrics and top: watching the scheduler."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import Annotated

import typer

from vlmctl.cli.common import Globals, run
from vlmctl.client import DaemonUnreachable


def register(app: typer.Typer) -> None:
    app.command()(metrics)
    app.command()(top)


def metrics(ctx: typer.Context,
            follow: Annotated[bool, typer.Option("--follow", "-f", help="print each scheduler step as it is logged")]
            = False,
            as_json: Annotated[bool, typer.Option("--json", help="with --follow: one JSON record per line")] = False):
    """Prometheus metrics, or with --follow the SGLang-style step lines until the daemon stops.

    Example: vlmctl metrics --follow | grep Decode
    """
    g: Globals = ctx.obj

    async def once() -> None:
        async with g.client(timeout=10) as client:
            sys.stdout.write(await client.get_text("/metrics"))

    async def stream() -> None:
        async with g.client() as client:
            try:
                async for record in client.events("GET", "/v1/metrics/stream"):
                    line = record.pop("line", "")
                    print(json.dumps(record) if as_json else line, flush=True)
            except DaemonUnreachable:
                return  # the daemon stopped: the stream is over

    run(stream() if follow else once())


def top(ctx: typer.Context,
        interval: Annotated[float, typer.Option("--interval", min=0.1, help="seconds between refreshes")] = 1.0):
    """A live dashboard of the scheduler: requests, token usage, throughput, recent steps.

    Without a terminal it prints one snapshot and exits.

    Example: vlmctl top --interval 0.5
    """
    g: Globals = ctx.obj
    if not g.is_tty:
        run(_snapshot(g))
        return
    run(_live(g, interval))


async def _server_state(g: Globals) -> tuple[dict, str]:
    async with g.client(timeout=10) as client:
        return await client.get("/get_server_info"), await client.get_text("/metrics")


def _hit_rate(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("vlmctl_cache_hit_rate"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _table(info: dict, metrics_text: str, steps: deque, rates: dict):
    from rich.table import Table

    pool = info.get("kv_pool", {})
    table = Table(title=f"vlmctl — {info.get('served_model_name') or info.get('model_path')}", expand=True)
    table.add_column("")
    table.add_column("", justify="right")
    rows = [
        ("running requests", info.get("num_running_reqs")),
        ("queued requests", info.get("num_queue_reqs")),
        ("token usage", f"{pool.get('token_usage', 0.0):.1%} of {pool.get('num_total_tokens')}"),
        ("cache hit rate", f"{_hit_rate(metrics_text):.1%}"),
        ("prefill throughput (tok/s)", f"{rates.get('prefill', 0.0):.1f}"),
        ("decode throughput (tok/s)", f"{rates.get('decode', 0.0):.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    for line in steps:
        table.add_row(line, "")
    return table


async def _snapshot(g: Globals) -> None:
    from rich.console import Console

    info, text = await _server_state(g)
    Console(no_color=True, width=100).print(_table(info, text, deque(), {}))


async def _live(g: Globals, interval: float) -> None:
    import asyncio

    from rich.live import Live

    steps: deque = deque(maxlen=8)
    rates: dict[str, float] = {}
    prefill_tokens: deque = deque()

    async def follow() -> None:
        async with g.client() as client:
            async for record in client.events("GET", "/v1/metrics/stream"):
                steps.append(record.get("line", ""))
                now = time.monotonic()
                if record["kind"] == "decode":
                    rates["decode"] = record["gen_throughput"]
                else:
                    prefill_tokens.append((now, record["num_new_tokens"]))
                while prefill_tokens and now - prefill_tokens[0][0] > 10:
                    prefill_tokens.popleft()
                rates["prefill"] = sum(n for _, n in prefill_tokens) / 10

    follower = asyncio.ensure_future(follow())
    try:
        with Live(refresh_per_second=4) as live:
            while not follower.done():
                info, text = await _server_state(g)
                live.update(_table(info, text, steps, rates))
                await asyncio.sleep(interval)
    finally:
        follower.cancel()
