"""The CLI's side of the daemon: HTTP over the Unix socket (or a TCP URL), with aiohttp."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp


class DaemonUnreachable(RuntimeError):
    """No daemon answers at the socket or URL (exit status 3)."""


class APIFailure(RuntimeError):
    """The daemon answered with an error; `message` is its error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DaemonClient:
    def __init__(self, socket: Path | None = None, url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None) -> None:
        self.socket, self.url = socket, url.rstrip("/") if url else None
        self.where = self.url or f"unix:{socket}"
        connector = None if self.url else aiohttp.UnixConnector(path=str(socket))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5)
        )
        self._base = self.url or "http://vlmctl"

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, body: Any = None) -> aiohttp.ClientResponse:
        try:
            return await self._session.request(method, self._base + path, json=body)
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"no daemon at {self.where} ({exc.__class__.__name__})") from exc
        except aiohttp.ClientError as exc:
            raise DaemonUnreachable(f"lost the daemon at {self.where}: {exc}") from exc

    @staticmethod
    async def _check(response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        text = await response.text()
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text.strip() or response.reason
        raise APIFailure(response.status, message)

    async def get(self, path: str) -> Any:
        async with await self._request("GET", path) as response:
            await self._check(response)
            return await response.json(content_type=None)

    async def get_text(self, path: str) -> str:
        async with await self._request("GET", path) as response:
            await self._check(response)
            return await response.text()

    async def post(self, path: str, body: Any) -> Any:
        async with await self._request("POST", path, body) as response:
            await self._check(response)
            return await response.json(content_type=None)

    async def health(self) -> int | None:
        """/health's status code, or None when nothing answers."""
        try:
            async with await self._request("GET", "/health") as response:
                return response.status
        except DaemonUnreachable:
            return None

    async def events(self, method: str, path: str, body: Any = None) -> AsyncIterator[dict]:
        """The `data:` events of a server-sent-events response, until [DONE] or the end."""
        async with await self._request(method, path, body) as response:
            await self._check(response)
            try:
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        return
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise APIFailure(500, event["error"].get("message", "error"))
                    yield event
            except aiohttp.ClientPayloadError as exc:
                raise DaemonUnreachable(f"the daemon at {self.where} went away") from exc
