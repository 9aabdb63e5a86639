"""Starting, finding and stopping the daemon process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vlmctl.client import DaemonClient
from vlmctl.paths import Paths


class StartFailed(RuntimeError):
    """The daemon exited or did not become ready; the message carries its last log line."""


def daemon_command(model: str, socket: Path, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "vlmctl.daemon", "--model-path", model, "--socket", str(socket), *options]


def spawn_detached(command: list[str], paths: Paths) -> subprocess.Popen:
    """Start the daemon in its own session, logging to the log file; record its pid."""
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    paths.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(paths.log_file, "a") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    paths.pid_file.write_text(str(process.pid))
    return process


def last_log_line(paths: Paths) -> str:
    try:
        lines = [line for line in paths.log_file.read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1].strip()


async def wait_ready(client: DaemonClient, process: subprocess.Popen, paths: Paths, timeout: float,
                     on_progress=None) -> None:
    """Poll /health until 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise StartFailed(f"the daemon exited during start-up (status {code}): {last_log_line(paths)}")
        status = await client.health()
        if status == 200:
            return
        if on_progress is not None:
            on_progress("loading the model" if status == 503 else "starting")
        await asyncio.sleep(0.2)
    raise StartFailed(f"the daemon was not ready within {timeout:.0f} s; see {paths.log_file}")


def daemon_pid(paths: Paths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def stop_process(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM, wait, then SIGKILL. True when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
