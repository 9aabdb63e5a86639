"""Attention backends behind one interface, chosen by name."""

from __future__ import annotations

from vlmctl.daemon.attention.base import AttentionBackend, AttentionInputs
from vlmctl.daemon.runner.kv_pool import KVPool

BACKENDS = ("torch_native",)


def create_backend(name: str, pool: KVPool) -> AttentionBackend:
    if name == "torch_native":
        from vlmctl.daemon.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend(pool)
    raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["AttentionBackend", "AttentionInputs", "BACKENDS", "create_backend"]
