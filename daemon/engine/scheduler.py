"""The scheduler: decides, each step, which requests run and which tokens they feed.

Plain Python, no torch. Inputs are new requests, aborts and the sampled tokens of the last
step; the output is a `ScheduledBatch`. A step either prefills newly admitted requests
(within the token and request budgets) or decodes every running request by one token. When
a decode step cannot get one slot per request, the newest requests are retracted to the
front of the queue and recomputed later.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vlmctl.daemon.engine.kv_cache import KVCacheManager
from vlmctl.daemon.engine.request import (
    ContextTooLong,
    FinishReason,
    Request,
    RequestStatus,
)


class ForwardMode(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step.

    The step feeds `input_ids` at positions `prefix_len ..` and writes their K/V to
    `new_slots`; after scheduling, `request.slots` already ends with `new_slots`.
    """

    request: Request
    prefix_len: int
    input_ids: list[int]
    new_slots: list[int]

    @property
    def kv_len(self) -> int:
        return self.prefix_len + len(self.input_ids)


@dataclass(slots=True)
class ScheduledBatch:
    """What the model runner executes in one step; every request samples one token."""

    mode: ForwardMode
    items: list[ScheduledRequest]
    num_cached_tokens: int = 0  # prompt tokens reused from a prefix cache this step

    @property
    def num_tokens(self) -> int:
        return sum(len(item.input_ids) for item in self.items)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_running_requests: int = 64
    max_prefill_tokens: int = 16384
    context_len: int = 4096
    policy: str = "fcfs"


Policy = Callable[[Iterable[Request]], list[Request]]


def _fcfs(waiting: Iterable[Request]) -> list[Request]:
    return list(waiting)


POLICIES: dict[str, Policy] = {"fcfs": _fcfs}


class Scheduler:
    def __init__(self, kv: KVCacheManager, config: SchedulerConfig) -> None:
        if config.policy not in POLICIES:
            raise ValueError(
                f"unknown schedule policy {config.policy!r}; choose one of {', '.join(POLICIES)}"
            )
        self.kv = kv
        self.config = config
        self._policy = POLICIES[config.policy]
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._requests: dict[str, Request] = {}
        # Requests finished outside a step (aborts): reported with the next step's outputs.
        self._finished_outside_step: list[Request] = []

    # ----- inputs -------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue a request, or raise ContextTooLong if it can never run."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        limit = self.config.context_len
        if request.prompt_len >= limit:
            raise ContextTooLong(
                f"the prompt has {request.prompt_len} tokens but the model's context is {limit} "
                "tokens (prompt plus output); shorten the prompt or use fewer images"
            )
        if request.prompt_len + 1 > self.kv.num_slots:
            raise ContextTooLong(
                f"the prompt has {request.prompt_len} tokens but the KV cache holds only "
                f"{self.kv.num_slots}; raise --max-total-tokens or shorten the prompt"
            )
        if request.prompt_len == 0:
            raise ContextTooLong("the prompt is empty")
        request.max_context_len = limit
        request.status = RequestStatus.WAITING
        self._requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Finish a request with reason `abort` and free its slots; None if unknown."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        self._finish(request, FinishReason.ABORT)
        self._finished_outside_step.append(request)
        return request

    def fail(self, request: Request, message: str) -> None:
        """Finish a request with an error (its step raised); frees its slots."""
        if request.is_finished:
            return
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        request.error = message
        self._finish(request, FinishReason.ERROR)

    # ----- scheduling ---------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """The next batch: a prefill if any waiting request can be admitted, else a decode."""
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        if not self.waiting:
            return None
        budget = self.config.max_prefill_tokens
        items: list[ScheduledRequest] = []
        num_tokens = 0
        for request in self._policy(self.waiting):
            if len(self.running) + len(items) >= self.config.max_running_requests:
                break
            input_ids = request.all_ids
            n = len(input_ids)
            # A prompt longer than the budget may still run alone (there is no chunking yet).
            if items and num_tokens + n > budget:
                break
            # Keep one slot per running request for the decode step that follows.
            reserve = len(self.running) + len(items) + 1
            if self.kv.num_free_slots < n + reserve - 1 or self.kv.num_free_rows == 0:
                break
            request.row = self.kv.alloc_row()
            request.slots = self.kv.alloc_slots(n)
            items.append(ScheduledRequest(request, 0, input_ids, request.slots[:]))
            num_tokens += n
        if not items:
            return None
        for item in items:
            self.waiting.remove(item.request)
            item.request.status = RequestStatus.RUNNING
            self.running.append(item.request)
        return ScheduledBatch(ForwardMode.PREFILL, items)

    def _schedule_decode(self) -> ScheduledBatch | None:
        if not self.running:
            return None
        while self.kv.num_free_slots < len(self.running):
            if len(self.running) == 1:
                # A lone request has filled the whole pool: it cannot grow any further.
                lone = self.running[0]
                self._finish(lone, FinishReason.LENGTH)
                self._finished_outside_step.append(lone)
                return None
            self._retract(max(self.running, key=lambda r: r.arrival))
        items = []
        for request in self.running:
            prefix_len = len(request.slots)
            slot = self.kv.alloc_slots(1)
            request.slots.extend(slot)
            items.append(ScheduledRequest(request, prefix_len, [request.output_ids[-1]], slot))
        return ScheduledBatch(ForwardMode.DECODE, items)

    def _retract(self, request: Request) -> None:
        """Send a running request back to the queue; its KV is recomputed when readmitted."""
        self.running.remove(request)
        self._release(request)
        request.status = RequestStatus.WAITING
        request.num_retractions += 1
        self.waiting.appendleft(request)

    # ----- outputs ------------------------------------------------------------------------

    def update(self, batch: ScheduledBatch, sampled: dict[str, int]) -> list[Request]:
        """Append each request's sampled token; return the requests this step finished.

        Requests missing from `sampled` (failed in the step) must already be finished.
        """
        finished = self.take_finished_outside_step()
        for item in batch.items:
            request = item.request
            if request.is_finished:
                continue
            token_id = sampled[request.request_id]
            request.output_ids.append(token_id)
            reason = request.check_stop(token_id)
            if reason is not None:
                self._finish(request, reason)
                finished.append(request)
        return finished

    def take_finished_outside_step(self) -> list[Request]:
        finished, self._finished_outside_step = self._finished_outside_step, []
        return finished

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        self._release(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self._requests.pop(request.request_id, None)

    def _release(self, request: Request) -> None:
        self.kv.free_slots(request.slots)
        request.slots = []
        if request.row is not None:
            self.kv.free_row(request.row)
            request.row = None

    # ----- introspection ------------------------------------------------------------------

    def num_tokens_in_use(self) -> int:
        return self.kv.num_slots - self.kv.num_free_slots

    def check_integrity(self) -> None:
        """Assert that the pool's free list and the live requests account for every slot."""
        live = self.running
        for request in self.waiting:
            if request.slots or request.row is not None:
                raise AssertionError(f"waiting request {request.request_id} holds KV")
        self.kv.check_integrity([r.slots for r in live], [r.row for r in live if r.row is not None])
