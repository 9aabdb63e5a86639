"""Start the daemon as a subprocess, and serve test images over local HTTP."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

try:  # openai 3 moved to httpx2 (same API); older releases use httpx
    import httpx2 as httpx
except ImportError:
    import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, process: subprocess.Popen, socket_path: Path, port: int | None, log: Path) -> None:
        self.process, self.socket, self.port, self.log = process, socket_path, port, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uds_client(self, **kwargs) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://vlmctl",
                            timeout=60, **kwargs)

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def daemon_command(model: Path, socket_path: Path, port: int | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "vlmctl.daemon", "--model-path", str(model), "--socket", str(socket_path),
           "--dtype", "float32", "--max-total-tokens", "8192", "--device", "cpu", *extra]
    if port is not None:
        cmd += ["--port", str(port)]
    return cmd


@contextmanager
def running_daemon(model: Path, tmp: Path, *extra: str, port: bool = True, timeout: float = 90):
    socket_path = tmp / "run" / "vlmctl.sock"
    log = tmp / "daemon.log"
    tcp = free_port() if port else None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as log_file:
        process = subprocess.Popen(daemon_command(model, socket_path, tcp, *extra), stdout=log_file,
                                   stderr=subprocess.STDOUT, env=env)
    daemon = Daemon(process, socket_path, tcp, log)
    try:
        wait_ready(daemon, timeout)
        yield daemon
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(daemon: Daemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.process.returncode}:\n{daemon.log.read_text()}")
        if daemon.socket.exists():
            try:
                with daemon.uds_client() as client:
                    if client.get("/health").status_code == 200:
                        return
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"daemon not ready in {timeout} s:\n{daemon.log.read_text()}")


@contextmanager
def image_server(root: Path):
    """A local HTTP server for "remote" images (tests never touch the network)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", "/" + self.path.removeprefix("/redirect/"))
                self.end_headers()
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
