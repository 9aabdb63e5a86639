"""Step statistics in SGLang's wording, as log lines and as structured records."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class StepStats:
    """One logged scheduler step. `kind` is "prefill" or "decode"."""

    kind: str
    time: float
    num_running_requests: int
    num_queued_requests: int
    token_usage: float
    num_tokens: int  # decode: tokens held in the KV pool
    num_new_sequences: int = 0  # prefill only
    num_new_tokens: int = 0  # prefill only
    num_cached_tokens: int = 0  # prefill only
    gen_throughput: float = 0.0  # decode only, tokens/s since the last decode record

    def log_line(self) -> str:
        if self.kind == "prefill":
            return (
                f"Prefill batch. #new-seq: {self.num_new_sequences}, #new-token: {self.num_new_tokens}, "
                f"#cached-token: {self.num_cached_tokens}, token usage: {self.token_usage:.2f}, "
                f"#running-req: {self.num_running_requests}, #queue-req: {self.num_queued_requests}"
            )
        return (
            f"Decode batch. #running-req: {self.num_running_requests}, #token: {self.num_tokens}, "
            f"token usage: {self.token_usage:.2f}, gen throughput (token/s): {self.gen_throughput:.2f}, "
            f"#queue-req: {self.num_queued_requests}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


class StepStatsCollector:
    """Turns steps into records: every prefill, and every `decode_log_interval`-th decode."""

    def __init__(self, decode_log_interval: int = 40) -> None:
        if decode_log_interval < 1:
            raise ValueError("decode_log_interval must be at least 1")
        self.decode_log_interval = decode_log_interval
        self._num_decode_steps = 0
        self._decode_tokens_since_log = 0
        self._window_start: float | None = None

    def on_prefill(
        self,
        *,
        num_new_sequences: int,
        num_new_tokens: int,
        num_cached_tokens: int,
        token_usage: float,
        num_tokens: int,
        num_running: int,
        num_queued: int,
    ) -> StepStats:
        return StepStats(
            kind="prefill",
            time=time.time(),
            num_running_requests=num_running,
            num_queued_requests=num_queued,
            token_usage=token_usage,
            num_tokens=num_tokens,
            num_new_sequences=num_new_sequences,
            num_new_tokens=num_new_tokens,
            num_cached_tokens=num_cached_tokens,
        )

    def on_decode(
        self, *, step_start: float, num_generated: int, token_usage: float, num_tokens: int, num_running: int,
        num_queued: int,
    ) -> StepStats | None:
        """`step_start` is the time.monotonic() at which this decode step began: throughput
        is measured from the first decode step after the last record, so idle time between
        bursts of requests does not count."""
        self._num_decode_steps += 1
        if self._window_start is None:
            self._window_start = step_start
        self._decode_tokens_since_log += num_generated
        if self._num_decode_steps % self.decode_log_interval:
            return None
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        throughput = self._decode_tokens_since_log / elapsed
        self._window_start = None
        self._decode_tokens_since_log = 0
        return StepStats(
            kind="decode",
            time=time.time(),
            num_running_requests=num_running,
            num_queued_requests=num_queued,
            token_usage=token_usage,
            num_tokens=num_tokens,
            gen_throughput=throughput,
        )
