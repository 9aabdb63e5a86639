"""The engine's settings, with SGLang's names where SGLang has the setting."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str
    tokenizer: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    context_length: int | None = None
    max_total_tokens: int | None = None
    mem_fraction_static: float = 0.85
    max_running_requests: int = 64
    max_prefill_tokens: int = 16384
    schedule_policy: str = "fcfs"
    attention_backend: str = "torch_native"
    random_seed: int | None = None
    decode_log_interval: int = 40
    load_timeout: float = 600.0
    log_level: str = "info"  # of the engine process: debug | info | warning | error
    # Torch threads of the engine process on CPU. Default: all cores but one, which is left
    # to the front process (tokenizing, images, streaming); oversubscribed cores stall
    # every OpenMP barrier of a step.
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        device_type = self.device.split(":")[0]
        if device_type not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError("mem_fraction_static must be between 0 and 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError("cpu_threads must be at least 1")
        for name in ("max_running_requests", "max_prefill_tokens", "decode_log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_total_tokens is not None and self.max_total_tokens < 16:
            raise ValueError("max_total_tokens must be at least 16")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError("context_length must be at least 2")
