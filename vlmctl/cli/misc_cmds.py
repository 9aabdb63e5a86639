"""models, pull, completions."""

from __future__ import annotations

from typing import Annotated

import typer

from vlmctl.cli.common import CommandError, UsageError, bundled_model

SHELLS = ("bash", "zsh", "fish")


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(pull)
    app.command()(completions)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def models():
    """The models available here: the bundled one and those in the Hugging Face cache.

    Example: vlmctl models
    """
    rows = []
    bundled = bundled_model()
    if bundled:
        from pathlib import Path

        rows.append(("(bundled) default", sum(p.stat().st_size for p in Path(bundled).rglob("*") if p.is_file())))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                rows.append((repo.repo_id, repo.size_on_disk))
    except Exception as exc:  # an absent or unreadable cache is simply empty here
        if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
            raise CommandError(f"cannot read the Hugging Face cache: {exc}") from exc
    if not rows:
        print("no models yet: `vlmctl pull MODEL` downloads one")
        return
    width = max(len(name) for name, _ in rows)
    for name, size in sorted(rows):
        print(f"{name:<{width}}  {_size(size):>10}")


def pull(model: Annotated[str, typer.Argument(help="hub id, e.g. llava-hf/llava-1.5-7b-hf")]):
    """Download a model from the Hugging Face hub into its cache (with a progress bar).

    Example: vlmctl pull llava-hf/llava-1.5-7b-hf
    """
    from huggingface_hub import snapshot_download

    from vlmctl.daemon.models.loader import _CHECKPOINT_PATTERNS

    try:
        path = snapshot_download(model, allow_patterns=_CHECKPOINT_PATTERNS)
    except Exception as exc:  # the hub client raises many types; report the reason in one line
        raise CommandError(f"cannot download {model}: {exc}".splitlines()[0]) from exc
    print(path)


def completions(shell: Annotated[str, typer.Argument(help="bash, zsh or fish")]):
    """Print a shell completion script.

    Example: vlmctl completions bash > ~/.local/share/bash-completion/completions/vlmctl
    """
    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")
    print(completion_script(shell), end="")


def completion_script(shell: str) -> str:
    import typer.main

    try:  # typer 0.29+: its own completion classes, registered on demand
        from typer._click.shell_completion import get_completion_class
        from typer._completion_classes import completion_init

        completion_init()
    except ImportError:
        from click.shell_completion import get_completion_class

    from vlmctl.cli import app

    command = typer.main.get_command(app)
    cls = get_completion_class(shell)
    return cls(command, {}, "vlmctl", "_VLMCTL_COMPLETE").source()
