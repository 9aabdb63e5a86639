"""Messages between the caller (front process) and the engine process.

Small frozen dataclasses pickled over a socketpair. Pixels travel by value, as numpy
arrays (about 1 ms for a 336 px image): torch's shared-memory hand-over caches storages
in the receiver by file identity, and a reused shared-memory file could then hand a
request another request's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmctl.daemon.engine.sampling_params import SamplingParams
from vlmctl.daemon.engine.stats import StepStats


@dataclass(frozen=True, slots=True)
class ImageSpan:
    """One image of a prompt: its tokens are `input_ids[offset : offset + num_tokens]`."""

    offset: int
    num_tokens: int
    pixel_values: Any  # numpy array [3, H, W] (float32) as the image processor made it
    image_hash: int


@dataclass(frozen=True, slots=True)
class TokenizedRequest:
    request_id: str
    input_ids: list[int]
    params: SamplingParams
    images: list[ImageSpan] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Test hook: the next step that runs `request_id` raises inside the model runner."""

    request_id: str


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the engine process reports once the model is loaded."""

    model_path: str
    architecture: str
    device: str
    dtype: str
    context_len: int
    num_slots: int
    max_running_requests: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    pid: int


@dataclass(frozen=True, slots=True)
class EngineReady:
    info: EngineInfo


@dataclass(frozen=True, slots=True)
class EngineFailed:
    """The engine could not start (or died); `message` says why."""

    message: str


@dataclass(frozen=True, slots=True)
class TokenOutput:
    """What one request got from one step (at most one new token)."""

    request_id: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str | None = None
    error: str | None = None
    error_kind: str | None = None  # "context" / "invalid" for a user's mistake, else "internal"
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """The scheduler's counts after a step."""

    num_running: int = 0
    num_waiting: int = 0
    num_used_tokens: int = 0
    num_total_tokens: int = 0

    @property
    def token_usage(self) -> float:
        return self.num_used_tokens / self.num_total_tokens if self.num_total_tokens else 0.0


@dataclass(frozen=True, slots=True)
class StepOutputs:
    outputs: list[TokenOutput]
    stats: StepStats | None = None
    load: EngineLoad | None = None
