"""The aiohttp application, its listeners and its lifecycle."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import socket
from pathlib import Path

from aiohttp import web

from vlmctl.daemon.server import native, openai
from vlmctl.daemon.server.openapi import openapi_spec
from vlmctl.daemon.server.protocol import APIError, to_api_error
from vlmctl.daemon.server.state import ServerConfig, ServerState

logger = logging.getLogger("vlmctl.server")

_OPEN_PATHS = {"/health"}


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why (printed as one line, exit 1)."""


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            raise APIError(404, f"no route {request.method} {request.path}", code="not_found") from exc
        if exc.status == 405:
            raise APIError(405, f"{request.method} is not allowed on {request.path}") from exc
        raise
    except (APIError, ConnectionResetError, asyncio.CancelledError):
        raise  # an APIError is already a response; a client that left had its requests aborted
    except Exception as exc:
        error = to_api_error(exc)
        if error.status >= 500:
            logger.exception("%s %s failed", request.method, request.path)
        raise error from exc


@web.middleware
async def render_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except APIError as error:
        return web.json_response(error.body(), status=error.status)


def auth_middleware(api_key: str):
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                               type_="authentication_error", code="invalid_api_key")
        return await handler(request)

    return auth


@web.middleware
async def log_requests(request: web.Request, handler):
    response = await handler(request)
    logger.info("%s %s -> %s", request.method, request.path, response.status)
    return response


def build_app(state: ServerState) -> web.Application:
    middlewares = [render_errors]
    if state.config.api_key:
        middlewares.append(auth_middleware(state.config.api_key))
    if state.config.log_requests:
        middlewares.append(log_requests)
    middlewares.append(errors)
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    app["state"] = state
    app.add_routes(openai.routes)
    app.add_routes(native.routes)
    app.router.add_get("/openapi.json", lambda request: web.json_response(openapi_spec()))
    return app


def claim_socket(path: Path) -> None:
    """Make the socket's directory (0700) and remove a stale socket; refuse a live one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise StartupError(f"{path} exists and is not a usable socket ({exc}); remove it or pick --socket") from exc
    finally:
        probe.close()
    raise StartupError(f"another daemon is already listening on {path}; stop it first or pick another --socket")


def check_host(config: ServerConfig) -> None:
    if config.port is None:
        return
    loopback = config.host in ("127.0.0.1", "::1", "localhost") or config.host.startswith("127.")
    if not loopback and not config.api_key:
        raise StartupError(
            f"refusing to listen on {config.host}:{config.port} without --api-key: anyone on the network "
            "could use the model; set --api-key or bind 127.0.0.1"
        )


async def serve(config: ServerConfig) -> None:
    """Listen, load the model, serve until SIGTERM/SIGINT, then shut down gracefully."""
    check_host(config)
    claim_socket(config.socket)
    state = ServerState(config)
    # handler_cancellation: a client that disconnects cancels its handler, which aborts its
    # requests in the engine (aiohttp leaves handlers running by default).
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=config.shutdown_grace,
                           handler_cancellation=True)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.UnixSite(runner, str(config.socket)).start()
        os.chmod(config.socket, 0o600)
        where = f"unix:{config.socket}"
        if config.port is not None:
            await web.TCPSite(runner, config.host, config.port).start()
            where += f" and http://{config.host}:{config.port}"
        logger.info("listening on %s; loading %s", where, config.engine.model)
        loading = asyncio.ensure_future(state.start())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # a failed load raises here
            logger.info("ready: %s serves %s (%s on %s)", where, state.model_name,
                        state.engine.info.dtype, state.engine.info.device)
            print(json.dumps({"event": "ready", "socket": str(config.socket), "port": config.port}), flush=True)
            if config.idle_timeout:
                asyncio.ensure_future(_idle_watch(state, config.idle_timeout, stop))
            await stop.wait()
        else:
            loading.cancel()
        logger.info("shutting down: finishing %d in-flight requests (grace %.0f s)", state.inflight,
                    config.shutdown_grace)
        await _drain(state, config.shutdown_grace)
    finally:
        await runner.cleanup()
        await state.close()
        config.socket.unlink(missing_ok=True)
        logger.info("stopped")


async def _idle_watch(state: ServerState, timeout: float, stop: asyncio.Event) -> None:
    """Stop the daemon after `timeout` seconds without a request (auto-started daemons)."""
    while not stop.is_set():
        idle = state.idle_for()
        if idle >= timeout:
            logger.info("no requests for %.0f s: stopping (--idle-timeout)", idle)
            stop.set()
            return
        await asyncio.sleep(min(timeout - idle, 5.0) + 0.05)


async def _drain(state: ServerState, grace: float) -> None:
    """Let in-flight requests finish within `grace` seconds; the rest are aborted by cleanup."""
    state.ready = False
    deadline = asyncio.get_running_loop().time() + grace
    while state.inflight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
