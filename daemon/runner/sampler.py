"""Turns the last-position logits of a batch into one token per request.

Order of operations (as in vLLM and transformers): penalties and min_tokens masking on the
raw logits, then temperature, then top-k / top-p / min-p filtering, then sampling. A seeded
request draws its noise from its own generator, so its tokens do not depend on what else
is in the batch. Reported logprobs are those of the raw model output (before penalties and
temperature), like vLLM's default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmctl.daemon.engine.request import Request


@dataclass(slots=True)
class SampleOutput:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device, seed: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._generator = torch.Generator(device=device)
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()
        self._request_generators: dict[str, torch.Generator] = {}

    def release(self, request_id: str) -> None:
        """Forget a finished request's generator."""
        self._request_generators.pop(request_id, None)

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> list[SampleOutput]:
        """logits: [B, V] float32, one row per request in `requests`."""
        logits = logits[:, : self.vocab_size]
        want_logprobs = any(r.params.logprobs or r.params.top_logprobs for r in requests)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        logits = self._apply_penalties(logits, requests)
        if all(r.params.greedy for r in requests):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample_random(logits, requests)
        return self._outputs(tokens, raw_logprobs, requests)

    # ----- logits processing ----------------------------------------------------------------

    def _apply_penalties(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        rows = [i for i, r in enumerate(requests) if r.params.has_penalties or self._masks_stops(r)]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            request = requests[i]
            params = request.params
            row = logits[i]
            if params.repetition_penalty != 1.0:
                seen = torch.tensor(
                    sorted({t for t in request.all_ids if t < self.vocab_size}), device=logits.device,
                    dtype=torch.long,
                )
                if seen.numel():
                    score = row[seen]
                    penalty = params.repetition_penalty
                    row[seen] = torch.where(score < 0, score * penalty, score / penalty)
            if (params.frequency_penalty or params.presence_penalty) and request.output_ids:
                counts = torch.zeros(self.vocab_size, device=logits.device)
                out = torch.tensor(request.output_ids, device=logits.device, dtype=torch.long)
                counts.scatter_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
                row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
            if self._masks_stops(request):
                stop_ids = set(request.params.stop_token_ids)
                if not params.ignore_eos:
                    stop_ids |= request.eos_token_ids
                ids = [t for t in stop_ids if t < self.vocab_size]
                if ids:
                    row[torch.tensor(ids, device=logits.device)] = float("-inf")
        return logits

    @staticmethod
    def _masks_stops(request: Request) -> bool:
        return len(request.output_ids) < request.params.min_tokens

    def _sample_random(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        device = logits.device
        greedy = torch.tensor([r.params.greedy for r in requests], device=device)
        temps = torch.tensor(
            [r.params.temperature if not r.params.greedy else 1.0 for r in requests], device=device
        )
        probs = torch.softmax(logits / temps[:, None], dim=-1)
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        sorted_probs = self._filter(sorted_probs, requests)
        noise = torch.empty_like(sorted_probs)
        noise.exponential_(generator=self._generator)
        for i, request in enumerate(requests):
            seed = request.params.seed
            if seed is not None and not request.params.greedy:
                noise[i].exponential_(generator=self._request_generator(request.request_id, seed))
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
        choice = (sorted_probs / noise).argmax(dim=-1, keepdim=True)
        sampled = sorted_ids.gather(-1, choice).squeeze(-1)
        return torch.where(greedy, logits.argmax(dim=-1), sampled)

    def _filter(self, sorted_probs: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        device = sorted_probs.device
        vocab = sorted_probs.shape[-1]
        ranks = torch.arange(vocab, device=device)[None, :]
        top_k = torch.tensor([r.params.top_k or vocab for r in requests], device=device)
        top_p = torch.tensor([r.params.top_p for r in requests], device=device)
        min_p = torch.tensor([r.params.min_p for r in requests], device=device)
        keep = ranks < top_k[:, None]
        # Keep a token while the mass before it is below top_p: the first always stays.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep &= mass_before < top_p[:, None]
        keep &= sorted_probs >= min_p[:, None] * sorted_probs[:, :1]
        return sorted_probs * keep

    def _request_generator(self, request_id: str, seed: int) -> torch.Generator:
        generator = self._request_generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._request_generators[request_id] = generator
        return generator

    # ----- outputs --------------------------------------------------------------------------

    @staticmethod
    def _outputs(
        tokens: torch.Tensor, raw_logprobs: torch.Tensor | None, requests: list[Request]
    ) -> list[SampleOutput]:
        token_list = tokens.tolist()
        if raw_logprobs is None:
            return [SampleOutput(t) for t in token_list]
        chosen = raw_logprobs.gather(-1, tokens[:, None]).squeeze(-1).tolist()
        max_top = max(r.params.top_logprobs for r in requests)
        top_vals = top_ids = None
        if max_top:
            top_vals_t, top_ids_t = raw_logprobs.topk(max_top, dim=-1)
            top_vals, top_ids = top_vals_t.tolist(), top_ids_t.tolist()
        outputs = []
        for i, request in enumerate(requests):
            params = request.params
            if not (params.logprobs or params.top_logprobs):
                outputs.append(SampleOutput(token_list[i]))
                continue
            top = None
            if params.top_logprobs and top_ids is not None and top_vals is not None:
                n = params.top_logprobs
                top = list(zip(top_ids[i][:n], top_vals[i][:n]))
            outputs.append(SampleOutput(token_list[i], chosen[i], top))
        return outputs
