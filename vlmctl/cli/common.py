"""What every command shares: global options, the client, finding or starting the daemon."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vlmctl.client import DaemonClient, DaemonUnreachable
from vlmctl.config import Config, load_config
from vlmctl.paths import Paths, paths

DEFAULT_IDLE_TIMEOUT = 600.0


class UsageError(ValueError):
    """A mistake in how a command was called (exit status 2)."""


class CommandError(RuntimeError):
    """A command failed (exit status 1); the message is printed as one line."""


@dataclass(slots=True)
class Globals:
    socket: Path | None = None
    url: str | None = None
    api_key: str | None = None
    debug: bool = False
    _config: Config | None = field(default=None, repr=False)

    @property
    def paths(self) -> Paths:
        return paths()

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.paths.config_file)
        return self._config

    @property
    def socket_path(self) -> Path:
        return self.socket or self.paths.socket

    def client(self, timeout: float | None = None) -> DaemonClient:
        url = self.url or os.environ.get("VLMCTL_URL")
        return DaemonClient(None if url else self.socket_path, url, self.api_key, timeout)

    @property
    def is_tty(self) -> bool:
        return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def run(coroutine):
    return asyncio.run(coroutine)


def resolve_model(g: Globals, model: str | None) -> str:
    chosen = model or g.config.model or bundled_model()
    if chosen is None:
        raise CommandError(
            f"no model to serve: pass --model PATH_OR_HUB_ID or set `model = \"...\"` in {g.paths.config_file}"
        )
    return chosen


def bundled_model() -> str | None:
    """The model shipped inside the package, once there is one."""
    from importlib.resources import files

    candidate = files("vlmctl").joinpath("models", "default")
    return str(candidate) if candidate.is_dir() and candidate.joinpath("config.json").is_file() else None


def daemon_options(g: Globals, extra: list[str] | None = None) -> list[str]:
    """Daemon options from the config file, then `extra` from the command line."""
    extra = list(extra or [])
    options = g.config.daemon_args()
    if g.config.chat_template and "--chat-template" not in options + extra:
        options += ["--chat-template", g.config.chat_template]
    return options + extra


async def ensure_daemon(g: Globals, model: str | None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                        quiet: bool = False) -> None:
    """Use the running daemon (checking its model), or start one that exits when idle."""
    from vlmctl.control import daemon_command, spawn_detached, wait_ready

    async with g.client(timeout=10) as client:
        status = await client.health()
        if status is not None:
            if model:
                await _check_same_model(client, model)
            if status == 503:
                await _wait_loading(client)
            return
    if g.url or os.environ.get("VLMCTL_URL"):
        raise DaemonUnreachable(f"no daemon answers at {g.url or os.environ['VLMCTL_URL']}")
    chosen = resolve_model(g, model)
    options = daemon_options(g)
    if "--idle-timeout" in options and idle_timeout != DEFAULT_IDLE_TIMEOUT:
        at = options.index("--idle-timeout")
        del options[at : at + 2]  # the command line beats the config file
    if "--idle-timeout" not in options:
        options += ["--idle-timeout", str(idle_timeout)]
    process = spawn_detached(daemon_command(chosen, g.socket_path, options), g.paths)
    progress = None
    if g.is_tty and not quiet:
        from rich.console import Console

        progress = Console(stderr=True).status(f"starting the daemon with {chosen} ...")
        progress.start()
    try:
        async with g.client(timeout=10) as client:
            await wait_ready(client, process, g.paths, timeout=600)
    finally:
        if progress is not None:
            progress.stop()


async def _check_same_model(client: DaemonClient, model: str) -> None:
    info = await client.get("/get_server_info")
    served = {info.get("model_path"), info.get("served_model_name")}
    if model not in served and str(Path(model).expanduser().resolve()) not in served:
        raise CommandError(
            f"the running daemon serves {info.get('model_path')!r}, not {model!r}; "
            f"switch with `vlmctl restart --model {model}`"
        )


async def _wait_loading(client: DaemonClient) -> None:
    for _ in range(3000):
        if await client.health() == 200:
            return
        await asyncio.sleep(0.2)
    raise CommandError("the daemon is still loading its model after 10 minutes")
