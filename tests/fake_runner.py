"""A model runner without a model: deterministic tokens from the request's own history."""

from __future__ import annotations

from dataclasses import dataclass

from vlmctl.daemon.engine.kv_cache import KVCacheManager
from vlmctl.daemon.engine.sampling_params import SamplingParams
from vlmctl.daemon.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from vlmctl.daemon.worker.core import EngineCore
from vlmctl.daemon.worker.messages import TokenizedRequest

EOS = 0


@dataclass
class FakeSample:
    token_id: int
    logprob: float | None = None
    top_logprobs: list | None = None


class FakeRunner:
    """Token = f(number of tokens before it), so a recomputed request repeats itself."""

    def __init__(self) -> None:
        self.batches: list[ScheduledBatch] = []
        self.released: list[str] = []

    def execute(self, batch: ScheduledBatch) -> list[FakeSample]:
        self.batches.append(batch)
        for item in batch.items:
            assert len(item.new_slots) == len(item.input_ids)
            assert item.request.slots[-len(item.new_slots):] == item.new_slots
        return [FakeSample(1 + (item.kv_len * 7) % 50) for item in batch.items]

    def release(self, request_id: str) -> None:
        self.released.append(request_id)


def make_core(num_slots=1000, max_running=8, max_prefill=4096, context_len=512):
    kv = KVCacheManager(num_slots, max_running)
    scheduler = Scheduler(kv, SchedulerConfig(max_running, max_prefill, context_len))
    runner = FakeRunner()
    return EngineCore(scheduler, runner, frozenset({EOS}), decode_log_interval=1), runner


def request(rid: str, prompt_len: int, max_tokens: int = 8, **params) -> TokenizedRequest:
    return TokenizedRequest(rid, list(range(100, 100 + prompt_len)),
                            SamplingParams(max_tokens=max_tokens, temperature=0, **params))


def run_to_end(core: EngineCore, max_steps: int = 10_000):
    """Step until idle; returns {request_id: (token_ids, finish_reason, error)}."""
    results: dict[str, tuple[list[int], str | None, str | None]] = {}
    for _ in range(max_steps):
        out = core.step()
        core.scheduler.check_integrity()
        if out is not None:
            for o in out.outputs:
                tokens, _, _ = results.get(o.request_id, ([], None, None))
                results[o.request_id] = (tokens + o.token_ids, o.finish_reason, o.error)
        if not core.has_work:
            out = core.step()
            if out is not None:
                for o in out.outputs:
                    tokens, _, _ = results.get(o.request_id, ([], None, None))
                    results[o.request_id] = (tokens + o.token_ids, o.finish_reason, o.error)
            return results
    raise AssertionError("engine did not go idle")
