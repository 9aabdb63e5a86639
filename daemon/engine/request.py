"""A request as the engine sees it: token ids in, token ids out, and its KV bookkeeping.

This module imports no torch. Images travel as opaque objects (`worker.messages.ImageSpan`):
the model runner reads their pixels and token positions; the scheduler never looks at them.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams


class ContextTooLong(InvalidRequest):
    """The prompt cannot fit the model's context or the KV pool."""


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


_arrival = itertools.count()


@dataclass(slots=True, eq=False)
class Request:
    """One generation request inside the engine.

    Invariant: `slots` holds one KV slot per token whose K/V is in the pool, in order, so
    `len(slots) == num_computed_tokens`. The last sampled token is never in the pool: its
    K/V is written by the next decode step, which also gives the logits for the token after.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    images: list[Any] = field(default_factory=list)
    eos_token_ids: frozenset[int] = frozenset()
    max_context_len: int | None = None

    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    error: str | None = None
    slots: list[int] = field(default_factory=list)
    row: int | None = None  # row in the runner's request-to-slot table while running
    num_cached_tokens: int = 0  # prompt tokens served from a prefix cache
    num_retractions: int = 0
    arrival: int = field(default_factory=lambda: next(_arrival))

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def seq_len(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_computed_tokens(self) -> int:
        return len(self.slots)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def check_stop(self, token_id: int) -> FinishReason | None:
        """Finish reason after appending `token_id`, or None to keep going."""
        num_out = len(self.output_ids)
        params = self.params
        if num_out >= params.min_tokens:
            if token_id in params.stop_token_ids:
                return FinishReason.STOP
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return FinishReason.STOP
        if params.max_tokens is not None and num_out >= params.max_tokens:
            return FinishReason.LENGTH
        if self.max_context_len is not None and self.seq_len >= self.max_context_len:
            return FinishReason.LENGTH
        return None
