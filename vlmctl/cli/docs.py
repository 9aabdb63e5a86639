"""Man pages and shell completion scripts, generated from the CLI itself.

    python -m vlmctl.cli.docs          # rewrite man/ and completions/
    python -m vlmctl.cli.docs --check  # exit 1 if they drifted from the CLI
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vlmctl

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026"


def _roff(text: str) -> str:
    out = []
    for line in text.splitlines():
        line = line.replace("\\", "\\e").replace("-", "\\-")
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _paragraphs(text: str) -> str:
    """Help text to roff: paragraphs, and indented lines (examples) kept as they are."""
    blocks = []
    for block in (text or "").strip().split("\n\n"):
        lines = block.splitlines()
        if any(line.startswith("  ") for line in lines[1:]) or lines[0].startswith("  "):
            blocks.append(".nf\n" + _roff("\n".join(lines)) + "\n.fi")
        else:
            blocks.append(_roff(" ".join(line.strip() for line in lines)))
    return "\n.PP\n".join(blocks)


def _options(command) -> str:
    parts = []
    for param in command.params:
        opts = getattr(param, "opts", [])
        if not opts or not opts[0].startswith("-"):
            parts.append(f".TP\n.I {param.name.upper()}\n{_roff(getattr(param, 'help', '') or '')}")
            continue
        names = ", ".join(opts + list(getattr(param, "secondary_opts", [])))
        parts.append(f".TP\n.B {_roff(names)}\n{_roff(getattr(param, 'help', '') or '')}")
    return "\n".join(parts)


def man_page(name: str, command, summary: str) -> str:
    title = name.upper()
    sections = [
        f'.TH {title} 1 "{DATE}" "vlmctl {vlmctl.__version__}" "vlmctl manual"',
        f".SH NAME\n{_roff(name)} \\- {_roff(summary)}",
        f".SH SYNOPSIS\n.B {_roff(name.replace('-', ' '))}\n{_roff('[OPTIONS] ' + ' '.join(p.name.upper() for p in command.params if not getattr(p, 'opts', ['-'])[0].startswith('-')))}",
        f".SH DESCRIPTION\n{_paragraphs(command.help or '')}",
    ]
    options = _options(command)
    if options:
        sections.append(f".SH OPTIONS\n{options}")
    return "\n".join(sections) + "\n"


def generate() -> dict[Path, str]:
    """Every generated file, by path relative to the repository root."""
    import typer.main

    from vlmctl.cli import app
    from vlmctl.cli.misc_cmds import SHELLS, completion_script

    group = typer.main.get_command(app)
    files: dict[Path, str] = {}
    main = man_page("vlmctl", group, "serve vision-language models from your own machine")
    commands = "\n".join(
        f".TP\n.B {_roff(n)}\n{_roff(c.get_short_help_str(limit=200))}" for n, c in group.commands.items()
    )
    files[Path("man/vlmctl.1")] = main + ".SH COMMANDS\n" + commands + "\n.SH EXIT STATUS\n" + _roff(
        "0 success, 1 error, 2 usage error, 3 daemon unreachable.") + "\n.SH ENVIRONMENT\n" + _roff(
        "VLMCTL_HOME moves all state; VLMCTL_SOCKET and VLMCTL_URL pick the daemon; NO_COLOR.") + "\n"
    for name, command in group.commands.items():
        files[Path(f"man/vlmctl-{name}.1")] = man_page(
            f"vlmctl-{name}", command, command.get_short_help_str(limit=80)
        )
    for shell in SHELLS:
        files[Path(f"completions/vlmctl.{shell}")] = completion_script(shell)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    files = generate()
    drifted = [p for p, text in files.items() if not (ROOT / p).is_file() or (ROOT / p).read_text() != text]
    if args.check:
        for path in drifted:
            print(f"{path} is out of date; run python -m vlmctl.cli.docs", file=sys.stderr)
        return 1 if drifted else 0
    for path in drifted:
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(files[path])
    print(f"wrote {len(drifted)} of {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
