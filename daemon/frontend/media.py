"""Where an image comes from: a data URI, an http(s) URL, or an allow-listed local path.

URLs are fetched with aiohttp under limits: connect and total timeouts, a byte cap enforced
while streaming, a few redirects (each one checked again), and no loopback, private,
link-local, multicast or reserved addresses unless allowed. The address check runs on the
addresses the resolver returns and the connection uses, so DNS tricks do not get through.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from vlmctl.daemon.frontend.images import ImageError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass(frozen=True, slots=True)
class MediaLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    allow_private_urls: bool = False
    allowed_local_path: Path | None = None
    connect_timeout: float = 5.0
    total_timeout: float = 30.0
    max_redirects: int = 3


def decode_data_uri(uri: str, limits: MediaLimits) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise ImageError("a data URI must look like data:image/png;base64,...")
    mime = (match.group("mime") or "").lower()
    if mime and not (mime.startswith("image/") or mime == "application/octet-stream"):
        raise ImageError(f"data URI of type {mime!r} is not an image")
    payload = uri[match.end() :]
    if not match.group("b64"):
        raise ImageError("only base64 data URIs are supported (data:image/...;base64,...)")
    if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
        raise ImageError(f"image is larger than the limit of {limits.max_image_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 in data URI: {exc}") from exc


def read_local(path_text: str, limits: MediaLimits) -> bytes:
    if limits.allowed_local_path is None:
        raise ImageError("local image paths are not allowed; start the daemon with --allowed-local-media-path DIR")
    root = limits.allowed_local_path.resolve()
    path = Path(path_text.removeprefix("file://")).expanduser().resolve()
    if not path.is_relative_to(root):
        raise ImageError(f"image path {path_text!r} is outside the allowed directory {str(root)!r}")
    try:
        if path.stat().st_size > limits.max_image_bytes:
            raise ImageError(f"image {path_text!r} is larger than the limit of {limits.max_image_bytes} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {path_text!r}: {exc.strerror or exc}") from exc


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp, then drops addresses that may not be fetched."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        records = await self._inner.resolve(host, port, family)
        allowed = [r for r in records if _address_allowed(r["host"])]
        if not allowed:
            raise ImageError(
                f"image URL host {host!r} resolves to a private, loopback or otherwise internal address; "
                "start the daemon with --allow-private-image-urls to allow it"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class MediaFetcher:
    """One aiohttp session for all image downloads of the daemon."""

    def __init__(self, limits: MediaLimits) -> None:
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self.limits.allow_private_urls else GuardedResolver()
            connector = aiohttp.TCPConnector(resolver=resolver, limit=32)
            timeout = aiohttp.ClientTimeout(total=self.limits.total_timeout, sock_connect=self.limits.connect_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, source: str) -> bytes:
        """Bytes of an image given as data URI, URL or (allowed) local path."""
        if source.startswith("data:"):
            return decode_data_uri(source, self.limits)
        scheme = urlsplit(source).scheme.lower()
        if scheme in ("http", "https"):
            return await self._fetch_url(source)
        if scheme == "file" or source.lower().endswith(_IMAGE_SUFFIXES):
            return read_local(source, self.limits)
        if scheme == "" and _BASE64.fullmatch(source[:4096]):
            # SGLang's image_data also takes bare base64.
            return decode_data_uri("data:image/unknown;base64," + source, self.limits)
        raise ImageError(
            f"unsupported image source {source[:40]!r}: use an http(s) URL, a data URI, base64 or an image path"
        )

    async def _fetch_url(self, url: str) -> bytes:
        limits = self.limits
        for _ in range(limits.max_redirects + 1):
            self._check_url(url)
            try:
                async with self._client().get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise ImageError(f"fetching image {url!r} gave HTTP {response.status}")
                    if (response.content_length or 0) > limits.max_image_bytes:
                        raise ImageError(f"image at {url!r} is larger than {limits.max_image_bytes} bytes")
                    data = bytearray()
                    async for chunk in response.content.iter_chunked(65536):
                        data += chunk
                        if len(data) > limits.max_image_bytes:
                            raise ImageError(f"image at {url!r} is larger than {limits.max_image_bytes} bytes")
                    return bytes(data)
            except ImageError:
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ImageError(f"cannot fetch image {url!r}: {type(exc).__name__}: {exc}") from exc
        raise ImageError(f"too many redirects fetching image (more than {limits.max_redirects})")

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ImageError(f"image URL must be http or https, not {parts.scheme!r}")
        host = parts.hostname or ""
        if not host:
            raise ImageError(f"image URL {url!r} has no host")
        if self.limits.allow_private_urls:
            return
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not _address_allowed(str(literal)):
            raise ImageError(
                f"image URL host {host!r} is a private, loopback or otherwise internal address; "
                "start the daemon with --allow-private-image-urls to allow it"
            )
