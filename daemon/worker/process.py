"""The engine process: loads the model, then loops — drain messages, step, send outputs."""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing.connection import Connection

from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.core import EngineCore, reject_output
from vlmctl.daemon.worker.messages import (
    AbortRequest,
    EngineFailed,
    EngineReady,
    InjectFault,
    Shutdown,
    StepOutputs,
    TokenizedRequest,
)

logger = logging.getLogger("vlmctl.engine")


def main(fd: int) -> None:
    """`python -m vlmctl.daemon.worker.process FD`: FD is our end of the caller's socketpair."""
    conn = Connection(fd)
    config, log_level = conn.recv()
    engine_main(conn, config, log_level)


def engine_main(conn: Connection, config: EngineConfig, log_level: str) -> None:
    """Load the model, report ready (or why not), then serve until told to stop."""
    logging.basicConfig(
        level=log_level, stream=sys.stderr, format="%(asctime)s [engine] %(levelname)s %(message)s"
    )
    from vlmctl.daemon.worker.loading import load_engine_core

    try:
        core, info = load_engine_core(config)
    except BaseException as exc:  # report every load failure to the caller, then exit
        logger.exception("engine failed to start")
        conn.send(EngineFailed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(EngineReady(info))
    EngineLoop(core, conn).run()
    logger.info("engine process %d stopped", os.getpid())


class EngineLoop:
    def __init__(self, core: EngineCore, conn: Connection) -> None:
        self.core = core
        self.conn = conn
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                self._drain(block=not self.core.has_work)
            except (EOFError, OSError):
                return  # the caller is gone
            if self.stopping:
                return
            outputs = self.core.step()
            if outputs is not None:
                self.conn.send(outputs)

    def _drain(self, block: bool) -> None:
        if not self.conn.poll(None if block else 0):
            return
        rejected = []
        while True:
            message = self.conn.recv()
            if isinstance(message, TokenizedRequest):
                try:
                    self.core.add(message)
                except ValueError as exc:
                    rejected.append(reject_output(message.request_id, exc))
            elif isinstance(message, AbortRequest):
                self.core.abort(message.request_id)
            elif isinstance(message, InjectFault):
                self.core.inject_fault(message.request_id)
            elif isinstance(message, Shutdown):
                self.stopping = True
                return
            if not self.conn.poll(0):
                break
        if rejected:
            self.conn.send(StepOutputs(rejected, load=self.core.load()))


if __name__ == "__main__":
    main(int(sys.argv[1]))
