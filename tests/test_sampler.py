"""The sampler on hand-made logits: seeds, filters, penalties, logprobs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vlmctl.daemon.engine.request import Request
from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.runner.sampler import Sampler

VOCAB = 50


def make_request(rid: str, output_ids=(), prompt_ids=(1, 2, 3), eos=frozenset(), **params) -> Request:
    request = Request(rid, list(prompt_ids), SamplingParams(**params), eos_token_ids=eos)
    request.output_ids = list(output_ids)
    return request


def logits_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def test_seeded_request_gives_same_tokens_whatever_else_is_in_the_batch():
    row = logits_for(1, seed=42)[0]
    alone, mixed = [], []
    sampler_a, sampler_b = Sampler(VOCAB, torch.device("cpu"), seed=1), Sampler(VOCAB, torch.device("cpu"), seed=2)
    for step in range(20):
        target = make_request("target", temperature=1.0, seed=7)
        alone.append(sampler_a.sample(row[None], [target])[0].token_id)
        others = [make_request(f"o{i}", temperature=0.8, top_p=0.9) for i in range(step % 4 + 1)]
        batch = torch.cat([logits_for(len(others), seed=step), row[None]])
        mixed.append(sampler_b.sample(batch, [*others, target])[-1].token_id)
    assert alone == mixed
    assert len(set(alone)) > 1  # it really sampled


def test_top_k_one_equals_greedy():
    logits = logits_for(8)
    sampler = Sampler(VOCAB, torch.device("cpu"), seed=0)
    greedy = [make_request(str(i), temperature=0.0) for i in range(8)]
    topk1 = [make_request(str(i), temperature=1.5, top_k=1) for i in range(8)]
    assert [o.token_id for o in sampler.sample(logits, greedy)] == logits.argmax(-1).tolist()
    assert [o.token_id for o in sampler.sample(logits, topk1)] == logits.argmax(-1).tolist()


def test_tiny_top_p_and_full_min_p_pick_the_most_likely_token():
    logits = logits_for(4)
    sampler = Sampler(VOCAB, torch.device("cpu"), seed=0)
    for params in ({"top_p": 1e-6}, {"min_p": 1.0}):
        requests = [make_request(str(i), temperature=1.0, **params) for i in range(4)]
        assert [o.token_id for o in sampler.sample(logits, requests)] == logits.argmax(-1).tolist()


def test_top_k_limits_samples_to_the_k_best():
    logits = logits_for(1)
    best3 = set(logits[0].topk(3).indices.tolist())
    sampler = Sampler(VOCAB, torch.device("cpu"), seed=0)
    seen = {sampler.sample(logits, [make_request("r", temperature=5.0, top_k=3)])[0].token_id for _ in range(200)}
    assert seen <= best3 and len(seen) > 1


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = logits_for(1)
    request = make_request("r", output_ids=[5, 6, 5], prompt_ids=[1, 2, 3, 999], temperature=0.0,
                           repetition_penalty=1.7)
    sampler = Sampler(VOCAB, torch.device("cpu"))
    ours = sampler._apply_penalties(logits, [request])
    ids = torch.tensor([[1, 2, 3, 5, 6, 5]])  # 999 is an image pad id: not a vocabulary token
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_frequency_and_presence_penalties_follow_openai():
    logits = logits_for(1)
    request = make_request("r", output_ids=[5, 6, 5], temperature=0.0, frequency_penalty=0.5,
                           presence_penalty=0.25)
    ours = Sampler(VOCAB, torch.device("cpu"))._apply_penalties(logits, [request])
    expected = logits.clone()
    expected[0, 5] -= 2 * 0.5 + 0.25
    expected[0, 6] -= 1 * 0.5 + 0.25
    torch.testing.assert_close(ours, expected)


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.zeros(1, VOCAB)
    logits[0, 7] = 10.0  # EOS is by far the best
    logits[0, 9] = 5.0
    sampler = Sampler(VOCAB, torch.device("cpu"))
    early = make_request("r", output_ids=[1], eos=frozenset({7}), temperature=0.0, min_tokens=3)
    later = make_request("s", output_ids=[1, 2, 3], eos=frozenset({7}), temperature=0.0, min_tokens=3)
    assert sampler.sample(logits, [early])[0].token_id == 9
    assert sampler.sample(logits, [later])[0].token_id == 7


def test_logprobs_are_raw_model_logprobs_with_top_alternatives():
    logits = logits_for(2)
    requests = [make_request("a", temperature=0.0, logprobs=True, top_logprobs=3), make_request("b", temperature=0.0)]
    outputs = Sampler(VOCAB, torch.device("cpu")).sample(logits, requests)
    expected = torch.log_softmax(logits, -1)
    token = outputs[0].token_id
    assert outputs[0].logprob == pytest.approx(expected[0, token].item(), abs=1e-6)
    assert [t for t, _ in outputs[0].top_logprobs] == expected[0].topk(3).indices.tolist()
    assert outputs[1].logprob is None and outputs[1].top_logprobs is None


@pytest.mark.parametrize(
    "params, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_sampling_params_are_invalid_requests(params, message):
    with pytest.raises(InvalidRequest, match=message):
        SamplingParams(**params)


def test_engine_bookkeeping_modules_import_no_torch():
    code = (
        "import sys; import vlmctl.daemon.engine.scheduler, vlmctl.daemon.engine.kv_cache, "
        "vlmctl.daemon.worker.core; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
