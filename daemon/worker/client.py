"""The caller's side of the engine process, for asyncio.

A reader thread receives step outputs and hands them to the event loop; a writer thread
sends requests, so the event loop never blocks on the pipe. If the engine process dies,
every waiting caller gets EngineDeadError.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection

from vlmctl.daemon.engine.stats import StepStats
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.messages import (
    AbortRequest,
    EngineFailed,
    EngineInfo,
    EngineLoad,
    EngineReady,
    InjectFault,
    Shutdown,
    StepOutputs,
    TokenizedRequest,
    TokenOutput,
)

logger = logging.getLogger("vlmctl.engine")


class EngineDeadError(RuntimeError):
    """The engine process is not running (it failed to start, crashed or was stopped)."""


class EngineStartError(EngineDeadError):
    """The engine process could not load the model."""


class EngineClient:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.info: EngineInfo | None = None
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._stats_subscribers: set[asyncio.Queue] = set()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._dead: str | None = None
        self._stopping = False
        self.load = EngineLoad()  # as of the engine's last message

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._dead is None and self._process is not None

    async def start(self) -> EngineInfo:
        """Start the engine process and wait until its model is loaded.

        The process is a fresh interpreter (`python -m vlmctl.daemon.worker.process`), not a
        multiprocessing spawn: spawn re-imports the caller's __main__, which breaks scripts
        without a main guard and notebooks.
        """
        self._loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "vlmctl.daemon.worker.process", str(child.fileno())],
            pass_fds=[child.fileno()],
        )
        child.close()
        self._conn = Connection(parent.detach())
        hello = (self.config, self.config.log_level.upper())
        self._conn.send(hello)
        message = await self._loop.run_in_executor(None, self._wait_ready)
        if isinstance(message, EngineFailed):
            self._dead = message.message
            self._conn.close()
            await self._loop.run_in_executor(None, self._reap)
            raise EngineStartError(f"the engine could not start: {message.message}")
        self.info = message.info
        self.load = EngineLoad(num_total_tokens=message.info.num_slots)
        threading.Thread(target=self._reader, name="vlmctl-engine-reader", daemon=True).start()
        threading.Thread(target=self._writer, name="vlmctl-engine-writer", daemon=True).start()
        return self.info

    def _wait_ready(self) -> EngineReady | EngineFailed:
        assert self._conn is not None and self._process is not None
        if not self._conn.poll(self.config.load_timeout):
            self._process.kill()
            return EngineFailed(f"the model did not load within {self.config.load_timeout:.0f} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._process.wait(5)
            return EngineFailed(f"the engine process exited during start-up (exit code {code})")

    def _reap(self) -> None:
        """Wait for a failed engine process to exit (killing it if it lingers)."""
        assert self._process is not None
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    # ----- threads ------------------------------------------------------------------------

    def _reader(self) -> None:
        assert self._conn is not None and self._loop is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._loop.call_soon_threadsafe(self._dispatch, message)
            except RuntimeError:  # the event loop is closed: nobody is listening
                return
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:
                code = None
        try:
            self._loop.call_soon_threadsafe(self._on_dead, f"the engine process exited (exit code {code})")
        except RuntimeError:
            pass

    def _writer(self) -> None:
        assert self._conn is not None
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                return

    def _dispatch(self, message: object) -> None:
        if not isinstance(message, StepOutputs):
            return
        if message.load is not None:
            self.load = message.load
        for output in message.outputs:
            q = self._queues.get(output.request_id)
            if q is not None:
                q.put_nowait(output)
        if message.stats is not None:
            for subscriber in self._stats_subscribers:
                subscriber.put_nowait(message.stats)

    def _on_dead(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
            if not self._stopping:
                logger.error("%s", reason)
        error = EngineDeadError(reason)
        for q in self._queues.values():
            q.put_nowait(error)
        for subscriber in self._stats_subscribers:
            subscriber.put_nowait(error)

    # ----- requests -----------------------------------------------------------------------

    def _send(self, message: object) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        self._outbox.put(message)

    async def generate(self, request: TokenizedRequest) -> AsyncIterator[TokenOutput]:
        """Yield the request's outputs step by step; the last has finish_reason or error.

        Leaving the loop early (or being cancelled) aborts the request in the engine.
        """
        if request.request_id in self._queues:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        q: asyncio.Queue = asyncio.Queue()
        self._queues[request.request_id] = q
        done = False
        try:
            self._send(request)
            while True:
                item = await q.get()
                if isinstance(item, Exception):
                    done = True
                    raise item
                if item.finish_reason is not None or item.error is not None:
                    done = True
                yield item
                if done:
                    return
        finally:
            self._queues.pop(request.request_id, None)
            if not done and self._dead is None:
                self._outbox.put(AbortRequest(request.request_id))

    def abort(self, request_id: str) -> None:
        if self._dead is None:
            self._outbox.put(AbortRequest(request_id))

    def inject_fault(self, request_id: str) -> None:
        """Test hook: make the engine fail every step that runs `request_id`."""
        self._send(InjectFault(request_id))

    def subscribe_stats(self) -> asyncio.Queue:
        """A queue that receives every logged StepStats (or EngineDeadError at the end)."""
        q: asyncio.Queue[StepStats | Exception] = asyncio.Queue()
        self._stats_subscribers.add(q)
        return q

    def unsubscribe_stats(self, q: asyncio.Queue) -> None:
        self._stats_subscribers.discard(q)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine process (politely, then by force)."""
        self._stopping = True
        process = self._process
        if process is None:
            return
        if self._dead is None and process.poll() is None:
            self._outbox.put(Shutdown())
        self._outbox.put(None)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await loop.run_in_executor(None, process.wait)
        self._on_dead("the engine was shut down")
