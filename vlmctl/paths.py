"""Where vlmctl keeps its state. VLMCTL_HOME moves all of it (tests use a temporary one)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Paths:
    config_dir: Path
    log_dir: Path
    runtime_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def socket(self) -> Path:
        env = os.environ.get("VLMCTL_SOCKET")
        return Path(env).expanduser() if env else self.runtime_dir / "vlmctl.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "vlmctl.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "daemon.log"


def paths() -> Paths:
    home = os.environ.get("VLMCTL_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root / "config", root / "logs", root / "run")
    import warnings

    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID and warns; the
        # fallback is fine for us and a warning would break the one-line-error promise.
        warnings.simplefilter("ignore")
        runtime = platformdirs.user_runtime_dir("vlmctl")
    return Paths(
        Path(platformdirs.user_config_dir("vlmctl")),
        Path(platformdirs.user_log_dir("vlmctl")),
        Path(runtime),
    )
