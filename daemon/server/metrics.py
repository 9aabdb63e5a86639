"""Request metrics in Prometheus' text format (no client library needed for this much)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vlmctl.daemon.worker.messages import EngineLoad

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...] = _LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(_LATENCY_BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, label: str) -> list[str]:
        out = [f'{name}_bucket{{{label},le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        out += [
            f'{name}_bucket{{{label},le="+Inf"}} {self.count}',
            f"{name}_sum{{{label}}} {self.total}",
            f"{name}_count{{{label}}} {self.count}",
        ]
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram()
        self.itl = Histogram()
        self.e2e = Histogram()

    def finish(self, status: str, prompt_tokens: int = 0, cached_tokens: int = 0, generated: int = 0) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens
        self.generation_tokens += generated

    def render(self, load: EngineLoad, model: str) -> str:
        label = f'model_name="{model}"'
        hit_rate = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        lines = [
            "# HELP vlmctl_requests_total Finished requests by outcome.",
            "# TYPE vlmctl_requests_total counter",
            *(f'vlmctl_requests_total{{{label},status="{s}"}} {n}' for s, n in sorted(self.requests.items())),
            "# HELP vlmctl_prompt_tokens_total Prompt tokens of finished requests.",
            "# TYPE vlmctl_prompt_tokens_total counter",
            f"vlmctl_prompt_tokens_total{{{label}}} {self.prompt_tokens}",
            "# HELP vlmctl_generation_tokens_total Generated tokens of finished requests.",
            "# TYPE vlmctl_generation_tokens_total counter",
            f"vlmctl_generation_tokens_total{{{label}}} {self.generation_tokens}",
            "# HELP vlmctl_num_running_reqs Requests in the running batch.",
            "# TYPE vlmctl_num_running_reqs gauge",
            f"vlmctl_num_running_reqs{{{label}}} {load.num_running}",
            "# HELP vlmctl_num_queue_reqs Requests waiting for the running batch.",
            "# TYPE vlmctl_num_queue_reqs gauge",
            f"vlmctl_num_queue_reqs{{{label}}} {load.num_waiting}",
            "# HELP vlmctl_token_usage Fraction of KV cache slots in use.",
            "# TYPE vlmctl_token_usage gauge",
            f"vlmctl_token_usage{{{label}}} {load.token_usage}",
            "# HELP vlmctl_cache_hit_rate Prompt tokens served from the prefix cache / prompt tokens.",
            "# TYPE vlmctl_cache_hit_rate gauge",
            f"vlmctl_cache_hit_rate{{{label}}} {hit_rate}",
        ]
        for name, help_text, hist in (
            ("vlmctl_time_to_first_token_seconds", "Time to first token.", self.ttft),
            ("vlmctl_inter_token_latency_seconds", "Time between consecutive tokens.", self.itl),
            ("vlmctl_e2e_request_latency_seconds", "Request latency, arrival to finish.", self.e2e),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *hist.lines(name, label)]
        return "\n".join(lines) + "\n"


class RequestTimer:
    """Feeds one request's token times into the histograms."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.start = time.monotonic()
        self.last: float | None = None

    def on_tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        if self.last is None:
            self.metrics.ttft.observe(now - self.start)
        else:
            # Tokens of one message arrived together: spread the gap over them.
            for _ in range(count):
                self.metrics.itl.observe((now - self.last) / count)
        self.last = now

    def done(self) -> None:
        self.metrics.e2e.observe(time.monotonic() - self.start)
