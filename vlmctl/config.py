"""The user's config file (TOML): default model, chat template and daemon options.

    model = "llava-hf/llava-1.5-7b-hf"
    chat_template = "vicuna_v1.1"

    [daemon]
    max_total_tokens = 65536
    dtype = "bfloat16"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """The config file cannot be read; the message names the file and the problem."""


@dataclass(slots=True)
class Config:
    model: str | None = None
    chat_template: str | None = None
    daemon: dict[str, object] = field(default_factory=dict)

    def daemon_args(self) -> list[str]:
        """The [daemon] table as daemon options: key = value -> --key value (true -> --key)."""
        args: list[str] = []
        for key, value in self.daemon.items():
            option = "--" + key.replace("_", "-")
            if value is True:
                args.append(option)
            elif value is not False and value is not None:
                args += [option, str(value)]
        return args


def load_config(path: Path) -> Config:
    if not path.is_file():
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    daemon = data.get("daemon", {})
    if not isinstance(daemon, dict):
        raise ConfigError(f"{path}: [daemon] must be a table")
    for key in ("model", "chat_template"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    return Config(model=data.get("model"), chat_template=data.get("chat_template"), daemon=dict(daemon))
