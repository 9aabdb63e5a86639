"""Scheduler and KV bookkeeping with a fake runner: no torch model, milliseconds each."""

from __future__ import annotations

import pytest
from fake_runner import make_core, request, run_to_end

from vlmctl.daemon.engine.kv_cache import KVCacheManager, OutOfSlots
from vlmctl.daemon.engine.request import ContextTooLong
from vlmctl.daemon.engine.scheduler import ForwardMode


def test_kv_manager_alloc_free_keeps_integrity():
    kv = KVCacheManager(10, 2)
    a = kv.alloc_slots(4)
    b = kv.alloc_slots(6)
    assert sorted(a + b) == list(range(10))
    with pytest.raises(OutOfSlots):
        kv.alloc_slots(1)
    kv.check_integrity([a, b], [])
    kv.free_slots(a)
    kv.check_integrity([b], [])
    with pytest.raises(AssertionError, match="leaked"):
        kv.check_integrity([], [])


def test_every_request_gets_max_tokens_and_pool_returns_to_empty():
    core, _ = make_core()
    for i in range(5):
        core.add(request(f"r{i}", 10 + i, max_tokens=6 + i))
    results = run_to_end(core)
    for i in range(5):
        tokens, reason, error = results[f"r{i}"]
        assert (len(tokens), reason, error) == (6 + i, "length", None)
    assert core.scheduler.kv.num_free_slots == core.scheduler.kv.num_slots


def test_prefill_respects_max_prefill_tokens():
    core, runner = make_core(max_prefill=25)
    for i in range(4):
        core.add(request(f"r{i}", 10, max_tokens=2))
    run_to_end(core)
    prefills = [b for b in runner.batches if b.mode is ForwardMode.PREFILL]
    assert [len(b.items) for b in prefills] == [2, 2]
    assert all(b.num_tokens <= 25 for b in prefills)


def test_prompt_longer_than_prefill_budget_runs_alone():
    core, runner = make_core(max_prefill=8)
    core.add(request("long", 20, max_tokens=2))
    results = run_to_end(core)
    assert results["long"][1] == "length"
    assert runner.batches[0].num_tokens == 20


def test_running_requests_never_exceed_max_running():
    core, runner = make_core(max_running=3)
    for i in range(7):
        core.add(request(f"r{i}", 5, max_tokens=4))
    results = run_to_end(core)
    assert all(r[1] == "length" for r in results.values())
    assert max(len(b.items) for b in runner.batches) <= 3


def test_decode_retracts_newest_when_pool_is_full_and_tokens_stay_the_same():
    reference, _ = make_core(num_slots=1000)
    small, runner = make_core(num_slots=60)
    for core in (reference, small):
        for i in range(4):
            core.add(request(f"r{i}", 10, max_tokens=20))
    expected = run_to_end(reference)
    got = run_to_end(small)
    assert got == expected
    assert any(item.request.num_retractions for b in runner.batches for item in b.items)
    # Recomputation shows as a second prefill of a request that already had output.
    prefilled = [item for b in runner.batches if b.mode is ForwardMode.PREFILL for item in b.items]
    assert len(prefilled) > 4
    assert any(len(item.input_ids) > 10 for item in prefilled)


def test_lone_request_that_fills_the_pool_finishes_with_length():
    core, _ = make_core(num_slots=30, context_len=512)
    core.add(request("big", 20, max_tokens=100))
    tokens, reason, error = run_to_end(core)["big"]
    assert reason == "length" and error is None
    assert 20 + len(tokens) <= 31


def test_abort_waiting_and_running_frees_everything():
    core, runner = make_core(max_running=1)
    core.add(request("running", 10, max_tokens=50))
    core.add(request("waiting", 10, max_tokens=50))
    core.step()
    core.step()
    core.abort("running")
    core.abort("waiting")
    core.scheduler.check_integrity()
    results = run_to_end(core)
    assert results["running"][1] == "abort"
    assert results["waiting"][1] == "abort"
    assert core.scheduler.kv.num_free_slots == core.scheduler.kv.num_slots
    assert {"running", "waiting"} <= set(runner.released)


def test_prompt_at_context_length_is_rejected_at_once():
    core, _ = make_core(context_len=64)
    with pytest.raises(ContextTooLong, match="context is 64"):
        core.add(request("long", 64))
    core.scheduler.check_integrity()


def test_prompt_larger_than_pool_is_rejected_at_once():
    core, _ = make_core(num_slots=32, context_len=512)
    with pytest.raises(ContextTooLong, match="KV cache holds only 32"):
        core.add(request("long", 40))


def test_generation_stops_at_context_length():
    core, _ = make_core(context_len=16)
    core.add(request("r", 10, max_tokens=100))
    tokens, reason, _ = run_to_end(core)["r"]
    assert reason == "length"
    assert 10 + len(tokens) == 16


def test_eos_stops_unless_ignored():
    core, runner = make_core()
    # The fake emits 1 + (kv_len * 7) % 50; kv_len 50 gives token 1, never EOS (0): use a stop id.
    core.add(request("stop", 10, max_tokens=30, stop_token_ids=[1 + (11 * 7) % 50]))
    core.add(request("min", 10, max_tokens=30, min_tokens=5, stop_token_ids=[1 + (11 * 7) % 50]))
    results = run_to_end(core)
    assert results["stop"][1] == "stop" and len(results["stop"][0]) == 2
    assert results["min"][1] == "length"


def test_step_records_use_sglang_wording():
    core, _ = make_core()
    core.add(request("r", 10, max_tokens=3))
    first = core.step()
    assert first.stats.log_line().startswith("Prefill batch. #new-seq: 1, #new-token: 10, #cached-token: 0")
    second = core.step()
    assert second.stats.log_line().startswith("Decode batch. #running-req: 1, #token: 11, token usage: ")
    assert "gen throughput (token/s): " in second.stats.log_line()
