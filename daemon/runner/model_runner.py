"""Runs one scheduled batch through the model: batch tensors, forward, logits, sampling."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from vlmctl.daemon.attention import AttentionInputs, create_backend
from vlmctl.daemon.engine.scheduler import ForwardMode, ScheduledBatch, ScheduledRequest
from vlmctl.daemon.models.forward_batch import ForwardBatch, ImageBatch
from vlmctl.daemon.runner.kv_pool import KVPool
from vlmctl.daemon.runner.sampler import SampleOutput, Sampler


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    device: torch.device
    dtype: torch.dtype
    num_slots: int
    num_rows: int
    context_len: int
    attention_backend: str = "torch_native"
    seed: int | None = None


class ModelRunner:
    def __init__(self, model: nn.Module, config: RunnerConfig) -> None:
        self.model = model
        self.config = config
        self.device = config.device
        text = model.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.pool = KVPool(
            text.num_hidden_layers, config.num_slots, text.num_key_value_heads or text.num_attention_heads,
            head_dim, config.dtype, config.device,
        )
        # Row r lists, in order, the KV slots of the request that holds row r.
        self.req_to_token = torch.zeros(
            (config.num_rows, config.context_len), dtype=torch.long, device=config.device
        )
        self.attention = create_backend(config.attention_backend, self.pool)
        self.sampler = Sampler(text.vocab_size, config.device, config.seed)

    def release(self, request_id: str) -> None:
        self.sampler.release(request_id)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]:
        """Run the batch and sample one token per request, in `batch.items` order."""
        forward_batch, last_positions = self._prepare(batch)
        hidden = self.model(forward_batch)
        logits = self.model.compute_logits(hidden[last_positions]).float()
        return self.sampler.sample(logits, [item.request for item in batch.items])

    def _prepare(self, batch: ScheduledBatch) -> tuple[ForwardBatch, torch.Tensor]:
        items = batch.items
        device = self.device
        is_decode = batch.mode is ForwardMode.DECODE
        q_lens = [len(item.input_ids) for item in items]
        prefix_lens = [item.prefix_len for item in items]
        kv_lens = [item.kv_len for item in items]
        rows = [item.request.row for item in items]
        input_ids = list(itertools.chain.from_iterable(item.input_ids for item in items))
        out_slots = list(itertools.chain.from_iterable(item.new_slots for item in items))
        if is_decode:
            positions = prefix_lens
        else:
            positions = list(itertools.chain.from_iterable(range(p, k) for p, k in zip(prefix_lens, kv_lens)))
        host = torch.tensor([input_ids, positions, out_slots], dtype=torch.long)
        small = torch.tensor([rows, kv_lens, prefix_lens], dtype=torch.long)
        host, small = host.to(device, non_blocking=True), small.to(device, non_blocking=True)
        input_ids_t, positions_t, out_slots_t = host
        rows_t, kv_lens_t, prefix_t = small
        if is_decode:
            self.req_to_token[rows_t, prefix_t] = out_slots_t
        else:
            start = 0
            for item, n in zip(items, q_lens):
                self.req_to_token[item.request.row, item.prefix_len : item.kv_len] = out_slots_t[start : start + n]
                start += n
        self.attention.plan(
            AttentionInputs(
                is_decode=is_decode, q_lens=q_lens, prefix_lens=prefix_lens, kv_lens=kv_lens,
                rows=rows_t, kv_lens_t=kv_lens_t, out_slots=out_slots_t, req_to_token=self.req_to_token,
            )
        )
        images = None if is_decode else self._images(items, q_lens)
        last_positions = torch.tensor(list(itertools.accumulate(q_lens)), device=device) - 1
        forward_batch = ForwardBatch(input_ids_t, positions_t, self.attention, images)
        return forward_batch, last_positions

    def _images(self, items: list[ScheduledRequest], q_lens: list[int]) -> ImageBatch | None:
        """The images whose tokens fall in this step's chunk of each request."""
        pixel_values, positions, token_ranges = [], [], []
        flat_start = 0
        for item, q_len in zip(items, q_lens):
            chunk_start, chunk_end = item.prefix_len, item.kv_len
            for image in item.request.images:
                start = max(image.offset, chunk_start)
                end = min(image.offset + image.num_tokens, chunk_end)
                if start >= end:
                    continue
                first = flat_start + start - chunk_start
                pixel_values.append(torch.as_tensor(image.pixel_values))
                positions.append(torch.arange(first, first + end - start, device=self.device))
                token_ranges.append((start - image.offset, end - image.offset))
            flat_start += q_len
        if not pixel_values:
            return None
        return ImageBatch(pixel_values, positions, token_ranges)
