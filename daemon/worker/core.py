"""EngineCore: one step of the engine, no processes, no pipes.

Holds the scheduler and the model runner. `step()` schedules a batch, runs it, appends the
sampled tokens and returns what each request got. A step that raises is retried request by
request, so only the requests that fail on their own are failed; the others go on.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from vlmctl.daemon.engine.request import ContextTooLong, Request
from vlmctl.daemon.engine.sampling_params import InvalidRequest
from vlmctl.daemon.engine.scheduler import ForwardMode, ScheduledBatch, Scheduler
from vlmctl.daemon.engine.stats import StepStats, StepStatsCollector
from vlmctl.daemon.worker.messages import EngineLoad, StepOutputs, TokenizedRequest, TokenOutput

logger = logging.getLogger("vlmctl.engine")


class SampleLike(Protocol):
    token_id: int
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None


class Runner(Protocol):
    def execute(self, batch: ScheduledBatch) -> list[SampleLike]:
        """Run a batch; one sample per item, in order."""
        ...

    def release(self, request_id: str) -> None:
        """Forget per-request state (sampling generators) of a finished request."""
        ...


class InjectedFault(RuntimeError):
    pass


class EngineCore:
    def __init__(
        self, scheduler: Scheduler, runner: Runner, eos_token_ids: frozenset[int], decode_log_interval: int = 40
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.eos_token_ids = eos_token_ids
        self.stats = StepStatsCollector(decode_log_interval)
        self._faults: set[str] = set()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add(self, tokenized: TokenizedRequest) -> None:
        """Queue a request; raises InvalidRequest (ContextTooLong) if it can never run."""
        request = Request(
            request_id=tokenized.request_id,
            prompt_ids=list(tokenized.input_ids),
            params=tokenized.params,
            images=list(tokenized.images),
            eos_token_ids=self.eos_token_ids,
        )
        self.scheduler.add(request)

    def abort(self, request_id: str) -> None:
        if self.scheduler.abort(request_id) is not None:
            self.runner.release(request_id)

    def inject_fault(self, request_id: str) -> None:
        """Make every step that runs `request_id` raise until that request finishes."""
        self._faults.add(request_id)

    def step(self) -> StepOutputs | None:
        step_start = time.monotonic()
        batch = self.scheduler.schedule()
        outputs = [self._final_output(r) for r in self.scheduler.take_finished_outside_step()]
        if batch is None:
            return StepOutputs(outputs, load=self.load()) if outputs else None
        num_running_before = len(self.scheduler.running) - (
            len(batch.items) if batch.mode is ForwardMode.PREFILL else 0
        )
        samples = self._execute(batch)
        sampled = {
            item.request.request_id: sample.token_id
            for item, sample in zip(batch.items, samples)
            if sample is not None
        }
        finished = {r.request_id: r for r in self.scheduler.update(batch, sampled)}
        for item, sample in zip(batch.items, samples):
            request = item.request
            if sample is None:
                outputs.append(self._final_output(request))
                continue
            done = request.request_id in finished
            outputs.append(
                TokenOutput(
                    request_id=request.request_id,
                    token_ids=[sample.token_id],
                    logprobs=None if sample.logprob is None else [sample.logprob],
                    top_logprobs=None if sample.top_logprobs is None else [sample.top_logprobs],
                    finish_reason=request.finish_reason.value if done and request.finish_reason else None,
                    prompt_tokens=request.prompt_len,
                    cached_tokens=request.num_cached_tokens,
                )
            )
        for request in finished.values():
            self._faults.discard(request.request_id)
            self.runner.release(request.request_id)
        return StepOutputs(outputs, self._record(batch, num_running_before, step_start), self.load())

    def load(self) -> EngineLoad:
        scheduler = self.scheduler
        return EngineLoad(
            len(scheduler.running), len(scheduler.waiting), scheduler.num_tokens_in_use(), scheduler.kv.num_slots
        )

    def _execute(self, batch: ScheduledBatch) -> list[SampleLike | None]:
        try:
            return list(self._run(batch))
        except Exception as exc:
            if len(batch.items) == 1:
                self._fail(batch.items[0].request, exc)
                return [None]
            logger.warning("step of %d requests failed (%s); retrying them one by one", len(batch.items), exc)
        results: list[SampleLike | None] = []
        for item in batch.items:
            try:
                results.extend(self._run(ScheduledBatch(batch.mode, [item])))
            except Exception as exc:
                self._fail(item.request, exc)
                results.append(None)
        return results

    def _run(self, batch: ScheduledBatch) -> list[SampleLike]:
        for item in batch.items:
            if item.request.request_id in self._faults:
                raise InjectedFault(f"injected fault for request {item.request.request_id}")
        return self.runner.execute(batch)

    def _fail(self, request: Request, exc: Exception) -> None:
        logger.error("request %s failed in a step: %s: %s", request.request_id, type(exc).__name__, exc,
                     exc_info=not isinstance(exc, InjectedFault))
        self.scheduler.fail(request, f"{type(exc).__name__}: {exc}")
        self._faults.discard(request.request_id)
        self.runner.release(request.request_id)

    @staticmethod
    def _final_output(request: Request) -> TokenOutput:
        return TokenOutput(
            request_id=request.request_id,
            token_ids=[],
            finish_reason=request.finish_reason.value if request.finish_reason else None,
            error=request.error,
            prompt_tokens=request.prompt_len,
            cached_tokens=request.num_cached_tokens,
        )

    def _record(self, batch: ScheduledBatch, num_running_before: int, step_start: float) -> StepStats | None:
        scheduler = self.scheduler
        usage = scheduler.kv.usage()
        if batch.mode is ForwardMode.PREFILL:
            record: StepStats | None = self.stats.on_prefill(
                num_new_sequences=len(batch.items),
                num_new_tokens=batch.num_tokens - batch.num_cached_tokens,
                num_cached_tokens=batch.num_cached_tokens,
                token_usage=usage.usage,
                num_tokens=usage.num_used,
                num_running=num_running_before,
                num_queued=len(scheduler.waiting),
            )
        else:
            record = self.stats.on_decode(
                step_start=step_start,
                num_generated=len(batch.items),
                token_usage=usage.usage,
                num_tokens=usage.num_used,
                num_running=len(scheduler.running),
                num_queued=len(scheduler.waiting),
            )
        if record is not None:
            logger.info(record.log_line())
        return record


def reject_output(request_id: str, exc: Exception) -> TokenOutput:
    """The output for a request refused at admission."""
    if isinstance(exc, ContextTooLong):
        kind = "context"
    elif isinstance(exc, InvalidRequest):
        kind = "invalid"
    else:
        kind = "internal"
    return TokenOutput(request_id=request_id, token_ids=[], finish_reason=None,
                       error=str(exc), error_kind=kind)
