"""serve, start, stop, restart, status, logs."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated

import typer

from vlmctl.cli.common import CommandError, Globals, daemon_options, resolve_model, run
from vlmctl.client import DaemonUnreachable

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="model folder or hub id (default: config)")]


def register(app: typer.Typer) -> None:
    app.command(context_settings=PASSTHROUGH)(serve)
    app.command(context_settings=PASSTHROUGH)(start)
    app.command()(stop)
    app.command(context_settings=PASSTHROUGH)(restart)
    app.command()(status)
    app.command()(logs)


def serve(ctx: typer.Context, model: ModelOption = None,
          detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background (as `start`)")] = False):
    """Run the daemon in the foreground, logs on the terminal. Other options go to the daemon.

    Example: vlmctl serve --model llava-hf/llava-1.5-7b-hf --chat-template vicuna_v1.1 --port 30010
    """
    g: Globals = ctx.obj
    if detach:
        return start(ctx, model)
    from vlmctl.control import daemon_command

    command = daemon_command(resolve_model(g, model), g.socket_path, daemon_options(g, ctx.args))
    os.execv(sys.executable, command)


def start(ctx: typer.Context, model: ModelOption = None):
    """Start the daemon in the background and wait until it can answer.

    Logs go to the log file (`vlmctl logs`). Other options go to the daemon.

    Example: vlmctl start --model llava-hf/llava-1.5-7b-hf --port 30010
    """
    g: Globals = ctx.obj
    from vlmctl.control import daemon_command, spawn_detached, wait_ready

    async def go() -> None:
        async with g.client(timeout=5) as client:
            if await client.health() is not None:
                raise CommandError(f"a daemon is already running on {g.socket_path}; `vlmctl stop` it first")
            process = spawn_detached(
                daemon_command(resolve_model(g, model), g.socket_path, daemon_options(g, ctx.args)), g.paths
            )
            status = None
            if g.is_tty:
                from rich.console import Console

                status = Console(stderr=True).status("starting ...")
                status.start()
            try:
                await wait_ready(client, process, g.paths, timeout=600,
                                 on_progress=(lambda text: status.update(text + " ...")) if status else None)
            finally:
                if status is not None:
                    status.stop()
            info = await client.get("/get_server_info")
        print(f"ready: {info['socket']}" + (f" and {info['url']}" if info.get("url") else ""))

    run(go())


def stop(ctx: typer.Context):
    """Stop the daemon (in-flight requests get a grace period). Leaves no process and no socket.

    Example: vlmctl stop
    """
    g: Globals = ctx.obj
    from vlmctl.control import daemon_pid, stop_process

    pid = daemon_pid(g.paths)
    if pid is None:
        async def ask_pid() -> int | None:
            async with g.client(timeout=5) as client:
                try:
                    return (await client.get("/get_server_info")).get("pid")
                except DaemonUnreachable:
                    return None

        pid = run(ask_pid())
    if pid is None:
        print("no daemon is running", file=sys.stderr)
        return
    if not stop_process(pid):
        raise CommandError(f"daemon process {pid} did not stop")
    g.paths.pid_file.unlink(missing_ok=True)
    print(f"stopped daemon {pid}", file=sys.stderr)


def restart(ctx: typer.Context, model: ModelOption = None):
    """Stop the running daemon and start a new one (with another --model, for example).

    Example: vlmctl restart --model llava-hf/llava-v1.6-mistral-7b-hf
    """
    stop(ctx)
    start(ctx, model)


def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Model, device, dtype, pid, uptime, socket and URL, KV pool usage, running and queued requests.

    Example: vlmctl status --json
    """
    g: Globals = ctx.obj

    async def fetch() -> dict:
        async with g.client(timeout=10) as client:
            return await client.get("/get_server_info")

    info = run(fetch())
    engine = info.get("engine") or {}
    pool = info.get("kv_pool", {})
    summary = {
        "model": info.get("served_model_name") or info.get("model_path"),
        "model_path": info.get("model_path"),
        "device": engine.get("device"),
        "dtype": engine.get("dtype"),
        "pid": info.get("pid"),
        "uptime_s": round(info.get("uptime_s", 0.0), 1),
        "socket": info.get("socket"),
        "url": info.get("url"),
        "ready": info.get("ready"),
        "kv_tokens_used": pool.get("num_used_tokens"),
        "kv_tokens_total": pool.get("num_total_tokens"),
        "token_usage": round(pool.get("token_usage", 0.0), 4),
        "running_requests": info.get("num_running_reqs"),
        "queued_requests": info.get("num_queue_reqs"),
    }
    if as_json:
        print(json.dumps(summary))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key.replace('_', ' '):<{width}}  {'-' if value is None else value}")


def logs(ctx: typer.Context,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="how many last lines")] = 50):
    """Print the background daemon's log.

    Example: vlmctl logs -f -n 20
    """
    g: Globals = ctx.obj
    path = g.paths.log_file
    if not path.exists():
        raise CommandError(f"no log yet at {path} (the daemon was never started in the background)")
    with open(path, errors="replace") as handle:
        tail = handle.readlines()[-lines:] if lines else []
        sys.stdout.writelines(tail)
        sys.stdout.flush()
        while follow:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
