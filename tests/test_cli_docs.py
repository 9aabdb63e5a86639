"""Man pages and completion scripts are generated from the CLI and must not drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vlmctl.cli.docs import generate

ROOT = Path(__file__).resolve().parents[1]


def test_man_pages_and_completions_match_the_cli():
    files = generate()
    assert {p.parent.name for p in files} == {"man", "completions"}
    for path, text in files.items():
        assert (ROOT / path).read_text() == text, f"{path} drifted: run python -m vlmctl.cli.docs"
    committed = {p.relative_to(ROOT) for p in (ROOT / "man").glob("*.1")}
    assert committed == {p for p in files if p.parent.name == "man"}, "a man page has no command any more"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_page_renders():
    out = subprocess.run(["man", "-l", str(ROOT / "man" / "vlmctl.1")], capture_output=True, text=True,
                         env={"MANPAGER": "cat", "PAGER": "cat", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0 and "EXIT STATUS" in out.stdout and "ask" in out.stdout
