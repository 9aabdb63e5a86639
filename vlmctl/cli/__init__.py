"""The `vlmctl` command line: one command and it works, with the daemon started for you.

Exit status: 0 success, 1 error, 2 usage error, 3 daemon unreachable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer 0.29+ vendors click as typer._click
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort as ClickAbort
    from typer.exceptions import Exit as ClickExit
except ImportError:  # older typer uses click itself
    from click.exceptions import Abort as ClickAbort
    from click.exceptions import Exit as ClickExit
    from click.exceptions import UsageError as ClickUsageError

from vlmctl.cli import ask_cmds, bench_cmd, daemon_cmds, misc_cmds, watch_cmds
from vlmctl.cli.common import CommandError, Globals, UsageError

app = typer.Typer(
    name="vlmctl", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None, help="Serve vision-language models from your own machine.",
)


@app.callback()
def main_options(
    ctx: typer.Context,
    socket: Annotated[Path | None, typer.Option("--socket", envvar="VLMCTL_SOCKET",
                                                help="daemon Unix socket")] = None,
    url: Annotated[str | None, typer.Option("--url", envvar="VLMCTL_URL",
                                            help="talk to a daemon over TCP instead, e.g. http://127.0.0.1:30010")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="VLMCTL_API_KEY",
                                                help="the daemon's --api-key")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
):
    """Serve vision-language models from your own machine.

    State lives in the user's config, log and runtime directories; VLMCTL_HOME moves all of it.
    """
    ctx.obj = Globals(socket=socket, url=url, api_key=api_key, debug=debug)


for module in (daemon_cmds, ask_cmds, watch_cmds, bench_cmd, misc_cmds):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors are one line on stderr with the documented exit status."""
    from vlmctl.client import APIFailure, DaemonUnreachable
    from vlmctl.config import ConfigError
    from vlmctl.control import StartFailed

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    if "_VLMCTL_COMPLETE" in os.environ:
        _enable_completion()
    try:
        result = app(args=argv, prog_name="vlmctl", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except ClickExit as exc:
        return exc.exit_code
    except ClickAbort:
        return 130
    except (ClickUsageError, UsageError) as exc:
        message = exc.format_message() if isinstance(exc, ClickUsageError) else str(exc)
        return _fail(f"{message} (see vlmctl --help)", 2)
    except DaemonUnreachable as exc:
        return _fail(f"{exc}; start one with `vlmctl start --model MODEL`", 3)
    except (CommandError, APIFailure, ConfigError, StartFailed) as exc:
        if debug:
            raise
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            raise
        return _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


def _enable_completion() -> None:
    """Register typer's shell-completion classes (the shell asks through _VLMCTL_COMPLETE)."""
    try:
        from typer._completion_classes import completion_init
    except ImportError:  # older typer: click's classes are registered already
        return
    completion_init()


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"vlmctl: error: {' '.join(message.split())}\n")
    return code


def entry() -> None:
    sys.exit(main())
