"""`python -m vlmctl.daemon --model-path PATH [options]`: run the daemon in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from vlmctl.daemon.server.args import parse_args

    config = parse_args(argv)
    logging.basicConfig(level=config.engine.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s [%(name)s] %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from vlmctl.daemon.server.app import StartupError, serve
    from vlmctl.daemon.worker.client import EngineStartError

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop has no Windows build; asyncio's loop works too
        runner = asyncio.run
    try:
        runner(serve(config))
    except (StartupError, EngineStartError, ValueError) as exc:
        sys.stderr.write(f"vlmctl daemon: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
