"""Builds an EngineCore from an EngineConfig: model, KV pool size, scheduler, runner."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from vlmctl.daemon.engine.kv_cache import KVCacheManager
from vlmctl.daemon.engine.scheduler import Scheduler, SchedulerConfig
from vlmctl.daemon.models.loader import build_model, resolve_model_path
from vlmctl.daemon.runner.kv_pool import KVPool
from vlmctl.daemon.runner.model_runner import ModelRunner, RunnerConfig
from vlmctl.daemon.worker.config import EngineConfig
from vlmctl.daemon.worker.core import EngineCore
from vlmctl.daemon.worker.messages import EngineInfo

logger = logging.getLogger("vlmctl.engine")

_CPU_KV_BUDGET = 4 << 30


def text_config_of(hf_config):
    return getattr(hf_config, "text_config", None) or hf_config


def resolve_dtype(name: str, hf_config, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    configured = getattr(hf_config, "dtype", None) or getattr(text_config_of(hf_config), "dtype", None)
    if isinstance(configured, str):
        configured = getattr(torch, configured, None)
    half = configured in (torch.float16, torch.bfloat16)
    if device.type == "cuda":
        return configured if half else torch.bfloat16
    return torch.bfloat16 if half else torch.float32


def eos_token_ids(path: Path, hf_config) -> frozenset[int]:
    """EOS ids as generate() uses them: generation_config.json, else the config's."""
    ids: object = None
    generation_config = path / "generation_config.json"
    if generation_config.is_file():
        ids = json.loads(generation_config.read_text()).get("eos_token_id")
    if ids is None:
        ids = getattr(text_config_of(hf_config), "eos_token_id", None) or getattr(hf_config, "eos_token_id", None)
    if ids is None:
        return frozenset()
    return frozenset([ids] if isinstance(ids, int) else ids)


def num_kv_slots(config: EngineConfig, text_config, dtype: torch.dtype, device: torch.device, context_len: int) -> int:
    if config.max_total_tokens is not None:
        return config.max_total_tokens
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    per_token = KVPool.bytes_per_token(
        text_config.num_hidden_layers, text_config.num_key_value_heads or text_config.num_attention_heads,
        head_dim, dtype,
    )
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = total * config.mem_fraction_static - (total - free)
        if budget < per_token * 16:
            raise MemoryError(
                f"no room for a KV cache: the model leaves {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB; "
                "raise --mem-fraction-static or use a smaller model"
            )
        return int(budget // per_token)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    budget = min(_CPU_KV_BUDGET, available // 4)
    return max(16, min(int(budget // per_token), max(4 * context_len, 16384)))


def load_engine_core(config: EngineConfig) -> tuple[EngineCore, EngineInfo]:
    from transformers import AutoConfig

    device = torch.device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads or max(1, (os.cpu_count() or 2) - 1))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    path = resolve_model_path(config.model)
    hf_config = AutoConfig.from_pretrained(path)
    text_config = text_config_of(hf_config)
    dtype = resolve_dtype(config.dtype, hf_config, device)
    context_len = config.context_length or getattr(text_config, "max_position_embeddings", 4096)
    if config.random_seed is not None:
        torch.manual_seed(config.random_seed)
    model = build_model(hf_config, path, dtype, device, context_len)
    num_slots = num_kv_slots(config, text_config, dtype, device, context_len)
    kv = KVCacheManager(num_slots, config.max_running_requests)
    scheduler = Scheduler(
        kv,
        SchedulerConfig(
            max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens,
            context_len=context_len,
            policy=config.schedule_policy,
        ),
    )
    runner = ModelRunner(
        model,
        RunnerConfig(
            device=device, dtype=dtype, num_slots=num_slots, num_rows=config.max_running_requests,
            context_len=context_len, attention_backend=config.attention_backend, seed=config.random_seed,
        ),
    )
    eos = eos_token_ids(path, hf_config)
    core = EngineCore(scheduler, runner, eos, config.decode_log_interval)
    info = EngineInfo(
        model_path=str(path),
        architecture=type(model).__name__,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        context_len=context_len,
        num_slots=num_slots,
        max_running_requests=config.max_running_requests,
        vocab_size=text_config.vocab_size,
        eos_token_ids=tuple(sorted(eos)),
        pid=os.getpid(),
    )
    logger.info(
        "model %s loaded: %s, %s on %s; KV cache %d tokens", path.name, info.architecture, info.dtype,
        info.device, num_slots,
    )
    return core, info
