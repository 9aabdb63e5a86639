"""Milliseconds per engine step, in-process (no IPC), for attention settings side by side.

    python benchmarks/decode_step.py --model PATH --device cuda --dtype bfloat16

Each row runs B requests (one 336 px image each) through one prefill and then times
`--steps` decode steps of the EngineCore directly. Variants of the torch_native backend:
the default, without key-length bucketing, and with every SDPA backend allowed (cuDNN
included) and no bucketing, which is how it ran before bucketing existed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from offline import make_requests  # noqa: E402


def time_steps(core, processor, batch: int, steps: int, tag: str) -> float:
    from vlmctl import SamplingParams

    params = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True)
    for i, (prompt, image, _) in enumerate(make_requests(batch, False)):
        core.add(processor.process(f"{tag}-{batch}-{i}", prompt, [image], params))
    core.step()  # prefill
    for _ in range(3):
        core.step()
    start = time.perf_counter()
    for _ in range(steps):
        core.step()  # each step ends in .tolist() of the sampled ids: synchronised
    elapsed = (time.perf_counter() - start) / steps
    while core.has_work:
        core.step()
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()

    from vlmctl.daemon.frontend.processor import InputProcessor
    from vlmctl.daemon.worker.config import EngineConfig
    from vlmctl.daemon.worker.loading import load_engine_core

    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, max_total_tokens=65536,
                          log_level="warning")
    core, info = load_engine_core(config)
    processor = InputProcessor(info.model_path)
    attention = core.runner.attention
    default = (attention.kv_bucket, attention.sdpa_backends)
    variants = [
        ("default", default),
        ("no key-length bucketing", (1, default[1])),
        ("all SDPA backends, no bucketing", (1, None)),
    ]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{info.architecture} on {args.device} ({info.dtype}); ms per decode step")
    print(f"{'variant':34}" + "".join(f"{'batch ' + str(b):>12}" for b in sizes))
    for name, (bucket, backends) in variants:
        attention.kv_bucket, attention.sdpa_backends = bucket, backends
        row = [time_steps(core, processor, b, args.steps, name[:8]) for b in sizes]
        print(f"{name:34}" + "".join(f"{ms:>12.2f}" for ms in row), flush=True)


if __name__ == "__main__":
    main()
