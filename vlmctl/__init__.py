"""vlmctl: serve vision-language models from your own machine."""

from __future__ import annotations

from vlmctl.daemon.engine.request import ContextTooLong
from vlmctl.daemon.engine.sampling_params import InvalidRequest, SamplingParams
from vlmctl.daemon.frontend.images import ImageError

__version__ = "0.1.0"

__all__ = ["ContextTooLong", "Engine", "ImageError", "InvalidRequest", "RequestOutput", "SamplingParams"]


def __getattr__(name: str):
    # Engine pulls in torch and transformers; import it only when asked for.
    if name == "Engine":
        from vlmctl.engine import Engine

        return Engine
    if name == "RequestOutput":
        from vlmctl.daemon.worker.async_engine import RequestOutput

        return RequestOutput
    raise AttributeError(name)
